// SSD backward on CUDA, per (row, head, chunk): dx, ddt and the chunk's shares of
// dA, dD and ddt_bias. With Ĥ the gradient of the state leaving the chunk and
// H_in the state entering it (both from the state passes), M = K ⊙ W, Pm = dY·Xᵀ,
// Z = M ⊙ Pm (cpu/ssd_chunked.cpp has the derivation):
//   dX = (M·diag(Δ))ᵀ·dY + diag(f ⊙ Δ)·B·Ĥᵀ + D·dY
//   q_s = ⟨x_s, (B·Ĥᵀ)_s⟩,  u_t = ⟨dy_t, (C·H_inᵀ)_t⟩
//   dS_t = Σ_s Z_ts·Δ_s − Δ_t·Σ_u Z_ut + e_t·u_t − Δ_t·f_t·q_t   (+ the chunk's last-token terms)
//   dΔ_t = Σ_u Z_ut + f_t·q_t + A·Σ_{u ≥ t} dS_u
// K comes from launch_chunk_cb (once per group); Pm is formed on the causal tiles;
// the sums over Z, q and u run in f64 (the terms of dS cancel), each in a fixed
// order. ⟨Ĥ, H_in⟩ is summed while the states are staged, and the reverse sum of dS
// runs on one warp.
#include "ssd_backward.h"

namespace mambatron::cuda::ssd {

namespace {

// Register blocks of Ĥ (b0) and H_in (b1), loaded at the same places, into their
// split operands, returning this thread's share of ⟨Ĥ, H_in⟩ over them in f64, so
// the last-token term needs no second read of the states.
template <int N, class T, class RB>
__device__ __forceinline__ double put_state_pair(const Smem<T>& m0, const RB& b0, const Smem<T>& m1, const RB& b1) {
  double acc = 0;
  int u = 0;
  b0.put([&](int r, int c, const Pack<float>& a) {
    const Pack<float>& b = b1.v[u++];
    put_split_vec<N>(m0, r * m0.ld + c, a.v);
    put_split_vec<N>(m1, r * m1.ld + c, b.v);
#pragma unroll
    for (int k = 0; k < Pack<float>::N; ++k) acc += double(a.v[k]) * double(b.v[k]);
  });
  return acc;
}

template <class T, int kQ>
struct DxLayout {
  static constexpr int kT = kQ / 16, kWarps = kT, kThreads = 32 * kWarps;
  static constexpr int kP = kTensorCores<T> ? 64 : 32, kPC = kP / 16;  // columns of dx per pass
  static constexpr int kNK = 32;                                        // n (or p) per operand chunk
  static constexpr int kTri = (kT * (kT + 1) / 2 + kWarps - 1) / kWarps;
  static constexpr int ldK = kQ + 4, ldA = pitch<T>(kNK), ldP = pitch<T>(kP);
  static constexpr size_t mat = align128(size_t(kQ) * ldK * sizeof(float));
  static constexpr size_t tile = align128(size_t(kQ) * ldP * sizeof(T));
  static constexpr size_t kf = 0, pf = mat;
  // Where Pm was, once it is used up: dy and x of the current p columns.
  static constexpr size_t dyp = pf, xp = dyp + tile;
  static constexpr size_t pf_end = pf + (mat > 2 * tile ? mat : 2 * tile);
  // Operand chunks: two [kQ × kNK] exact, two [kP × kNK] states in three parts (q
  // and u feed the f32 parameter gradients).
  static constexpr size_t a0 = pf_end, a1 = a0 + align128(size_t(kQ) * ldA * sizeof(T));
  static constexpr size_t h0 = a1 + align128(size_t(kQ) * ldA * sizeof(T)), h1 = h0 + operand_bytes<T, 3>(kP, ldA);
  static constexpr size_t stage = h1 + operand_bytes<T, 3>(kP, ldA);
  static constexpr size_t colpart = stage + align128(size_t(kWarps) * 256 * sizeof(float));
  static constexpr size_t parts = colpart + align128(size_t(kWarps) * kQ * sizeof(double));
  static constexpr size_t values = parts + align128(size_t(3) * kPC * kQ * sizeof(double));
  static constexpr size_t bytes = values + token_values_bytes(kQ);
  static_assert(bytes <= kMaxSmem, "ssd dx kernel: too much shared memory");
};

template <class T, int kQ>
__global__ void __launch_bounds__(DxLayout<T, kQ>::kThreads)
    dx_kernel(Dims d, BackwardArgs<T> a) {
  using Lay = DxLayout<T, kQ>;
  constexpr int kWarps = Lay::kWarps, kThreads = Lay::kThreads, kP = Lay::kP, kPC = Lay::kPC, kNK = Lay::kNK;
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ double red[32];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  float* kf = reinterpret_cast<float*>(smem + Lay::kf);
  float* pf = reinterpret_cast<float*>(smem + Lay::pf);
  const Smem<T> A0{reinterpret_cast<T*>(smem + Lay::a0), Lay::ldA, 0};
  const Smem<T> A1{reinterpret_cast<T*>(smem + Lay::a1), Lay::ldA, 0};
  const Smem<T> H0{reinterpret_cast<T*>(smem + Lay::h0), Lay::ldA, part_stride<T>(kP, Lay::ldA)};
  const Smem<T> H1{reinterpret_cast<T*>(smem + Lay::h1), Lay::ldA, part_stride<T>(kP, Lay::ldA)};
  const Smem<T> dyp{reinterpret_cast<T*>(smem + Lay::dyp), Lay::ldP, 0};
  const Smem<T> xp{reinterpret_cast<T*>(smem + Lay::xp), Lay::ldP, 0};
  float* stage = reinterpret_cast<float*>(smem + Lay::stage) + warp * 256;
  double* colpart = reinterpret_cast<double*>(smem + Lay::colpart);
  double* qpart = reinterpret_cast<double*>(smem + Lay::parts);
  double* upart = qpart + kPC * kQ;
  double* dpart = upart + kPC * kQ;
  const TokenValues v = carve_token_values(smem + Lay::values, kQ);
  double *Ss = v.S, *d64 = v.d64, *rowZ = v.rowZ, *colZ = v.colZ, *qacc = v.qacc, *uacc = v.uacc, *dacc = v.dacc;
  const float *dl32 = v.dl32, *fd32 = v.fd32;
  const int* docs = v.docs;

  int64_t id = blockIdx.x;
  const int64_t c = id % d.nc;
  id /= d.nc;
  const int64_t j = id % d.h, bi = id / d.h, gi = d.group(j);
  const Chunk ch = make_chunk(d, a.S, a.seq, bi, j, c);
  const int L = ch.L, Lt = ch.Lt, Lp = 16 * Lt, ntri = Lt * (Lt + 1) / 2;
  const int64_t t0 = ch.t0;
  fill_token_values(v, kQ, d, a, ch);
  for (int e = tid; e < kWarps * kQ; e += kThreads) colpart[e] = 0;

  // Causal tiles of an L×L product over chunks of its inner dimension, into `out`;
  // each chunk's operands are loaded into registers one chunk ahead.
  Acc<T> acc[Lay::kTri];
  auto causal_product = [&](const T* P, const T* R, int64_t inner, int64_t row_stride, float* out) {
    for (int q = 0; q < Lay::kTri; ++q) acc[q].zero();
    RegBlock<T, kQ, kNK, kThreads> pr, rr;
    auto load = [&](int64_t k0) {
      const int nk = int(inner - k0 < kNK ? inner - k0 : kNK);
      pr.load(P + t0 * row_stride + k0, row_stride, L, nk);
      rr.load(R + t0 * row_stride + k0, row_stride, L, nk);
    };
    load(0);
    for (int64_t k0 = 0; k0 < inner; k0 += kNK) {
      const int nk = int(inner - k0 < kNK ? inner - k0 : kNK), nks = (nk + 15) / 16;
      __syncthreads();
      pr.put_exact(A0);
      rr.put_exact(A1);
      if (k0 + kNK < inner) load(k0 + kNK);
      __syncthreads();
      for_warp_tri_tiles<Lay::kTri, kWarps>(warp, ntri, [&](int q, int tt, int ss) {
        for (int ks = 0; ks < nks; ++ks)
          mma_tile<Row, Col, 1, 1>(acc[q], A0, 16 * tt, 16 * ks, A1, 16 * ks, 16 * ss);
      });
    }
    for_warp_tri_tiles<Lay::kTri, kWarps>(warp, ntri, [&](int q, int tt, int ss) {
      acc[q].store(out + 16 * tt * Lay::ldK + 16 * ss, Lay::ldK);
    });
  };
  // K = C·Bᵀ (launch_chunk_cb) copies in while Pm = dY·Xᵀ forms (rows of x, dy are h·p apart).
  copy_causal_async<kQ>(kf, Lay::ldK, a.K + d.ko(bi, c, gi), Lp);
  causal_product(a.dy + d.xo(bi, 0, j), a.x + d.xo(bi, 0, j), d.p, d.h * d.p, pf);
  cp_commit();
  cp_wait_all();
  __syncthreads();

  // dy and x of the first p columns load while the rows below are formed.
  RegBlock<T, kQ, kP, kThreads> dyr, xr;
  auto load_p = [&](int64_t i0) {
    const int valid_p = int(d.p - i0 < kP ? d.p - i0 : kP);
    dyr.load(a.dy + d.xo(bi, t0, j) + i0, d.h * d.p, L, valid_p);
    xr.load(a.x + d.xo(bi, t0, j) + i0, d.h * d.p, L, valid_p);
  };
  load_p(0);

  // Z's sums, and M·diag(Δ) split in place of K, row by row.
  for (int t = warp; t < Lp; t += kWarps) {
    float m[kQ / 32];
    double racc = 0;
#pragma unroll
    for (int u = 0; u < kQ / 32; ++u) {
      const int s = lane + 32 * u;
      float mv = 0.f, z = 0.f;
      if (s <= t && t < L && docs[s] == docs[t]) {
        mv = kf[t * Lay::ldK + s] * decay<T>(Ss[t] - Ss[s]);
        z = mv * pf[t * Lay::ldK + s];
      }
      racc += double(z) * d64[s];
      colpart[warp * kQ + s] += double(z);
      m[u] = mv * dl32[s];
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) racc += __shfl_xor_sync(0xffffffffu, racc, o);
    if (lane == 0) rowZ[t] = racc;
    __syncwarp();
#pragma unroll
    for (int u = 0; u < kQ / 32; ++u) write_split_row<T>(kf, Lay::ldK, kQ, t, lane + 32 * u, m[u]);
  }
  __syncthreads();
  for (int s = tid; s < kQ; s += kThreads) {
    double v = 0;
    for (int w = 0; w < kWarps; ++w) v += colpart[w * kQ + s];
    colZ[s] = v;
  }

  const Smem<T> Mv = split_rows<T>(kf, Lay::ldK, kQ);
  const float Dj = a.D ? a.D[j] : 0.f;
  const float* Hin = a.hin + d.co(bi, j, c);
  const float* Hout = a.dhout + d.co(bi, j, c);
  double hh = 0;  // this thread's share of ⟨Ĥ, H_in⟩
  // T1 = B·Ĥᵀ and U = C·H_inᵀ over chunks of n: each chunk's operands are loaded into
  // registers one chunk ahead.
  RegBlock<T, kQ, kNK, kThreads> br, cr;
  RegBlock<float, kP, kNK, kThreads> hor, hir;
  auto load_n = [&](int64_t i0, int64_t n0) {
    const int valid_p = int(d.p - i0 < kP ? d.p - i0 : kP), nk = int(d.n - n0 < kNK ? d.n - n0 : kNK);
    const int64_t bc0 = d.bco(bi, t0, gi) + n0;
    br.load(a.B + bc0, d.g * d.n, L, nk);
    cr.load(a.C + bc0, d.g * d.n, L, nk);
    hor.load(Hout + i0 * d.n + n0, d.n, valid_p, nk);
    hir.load(Hin + i0 * d.n + n0, d.n, valid_p, nk);
  };
  for (int64_t i0 = 0; i0 < d.p; i0 += kP) {
    __syncthreads();  // Pm (first pass) or the previous columns are no longer read
    if (i0 > 0) load_p(i0);
    load_n(i0, 0);
    dyr.put_exact(dyp);
    xr.put_exact(xp);
    Acc<T> t1[kPC], uu[kPC];
#pragma unroll
    for (int q = 0; q < kPC; ++q) t1[q].zero(), uu[q].zero();
    for (int64_t n0 = 0; n0 < d.n; n0 += kNK) {
      const int nk = int(d.n - n0 < kNK ? d.n - n0 : kNK), nks = (nk + 15) / 16;
      __syncthreads();  // the previous chunk's products are done with A0, A1, H0, H1
      br.put_exact(A0);
      cr.put_exact(A1);
      hh += put_state_pair<3>(H0, hor, H1, hir);
      if (n0 + kNK < d.n) load_n(i0, n0 + kNK);
      __syncthreads();
#pragma unroll
      for (int q = 0; q < kPC; ++q) {
        const int zt = warp + q * kWarps, tt = zt / kPC, pc = zt % kPC;
        if (tt >= Lt) continue;
        for (int ks = 0; ks < nks; ++ks) {
          mma_tile<Row, Col, 1, 3>(t1[q], A0, 16 * tt, 16 * ks, H0, 16 * ks, 16 * pc);
          mma_tile<Row, Col, 1, 3>(uu[q], A1, 16 * tt, 16 * ks, H1, 16 * ks, 16 * pc);
        }
      }
    }
#pragma unroll
    for (int q = 0; q < kPC; ++q) {
      const int zt = warp + q * kWarps, tt = zt / kPC, pc = zt % kPC;
      if (tt >= Lt) continue;
      // q_t share of these 16 columns, then dx = f⊙Δ·T1 + D·dy + (M·diag(Δ))ᵀ·dY.
      t1[q].store(stage, 16);
      __syncwarp();
      if (lane < 16) {
        const int t = 16 * tt + lane;
        double sq = 0;
        for (int cc = 0; cc < 16; ++cc)
          sq += double(to_f32(xp.p[t * Lay::ldP + 16 * pc + cc])) * double(stage[lane * 16 + cc]);
        qpart[pc * kQ + t] = sq;
      }
      __syncwarp();
      for (int e = lane; e < 256; e += 32) {
        const int t = 16 * tt + (e >> 4), cc = 16 * pc + (e & 15);
        stage[e] = fd32[t] * stage[e] + Dj * to_f32(dyp.p[t * Lay::ldP + cc]);
      }
      __syncwarp();
      Acc<T> g;
      g.load(stage, 16);
      for (int ss = tt; ss < Lt; ++ss) mma_tile<Col, Row, 2, 1>(g, Mv, 16 * tt, 16 * ss, dyp, 16 * ss, 16 * pc);
      g.store(stage, 16);
      __syncwarp();
      for (int e = lane; e < 256; e += 32) {
        const int t = 16 * tt + (e >> 4);
        const int64_t i = i0 + 16 * pc + (e & 15);
        if (t < L && i < d.p) a.dx[d.xo(bi, t0 + t, j) + i] = from_f32<T>(stage[e]);
      }
      __syncwarp();
      // u_t and Σ dy·x shares of these columns.
      uu[q].store(stage, 16);
      __syncwarp();
      if (lane < 16) {
        const int t = 16 * tt + lane;
        double su = 0, sd = 0;
        for (int cc = 0; cc < 16; ++cc) {
          const double dyv = to_f32(dyp.p[t * Lay::ldP + 16 * pc + cc]);
          su += dyv * double(stage[lane * 16 + cc]);
          sd += dyv * double(to_f32(xp.p[t * Lay::ldP + 16 * pc + cc]));
        }
        upart[pc * kQ + t] = su;
        dpart[pc * kQ + t] = sd;
      }
      __syncwarp();
    }
    __syncthreads();
    for (int t = tid; t < Lp; t += kThreads)
      for (int pc = 0; pc < kPC; ++pc) {
        qacc[t] += qpart[pc * kQ + t];
        uacc[t] += upart[pc * kQ + t];
        dacc[t] += dpart[pc * kQ + t];
      }
  }

  hh = block_sum(hh, red);
  if (warp == 0) finish_chunk<T, kQ>(v, hh, d, a, ch);
}

}  // namespace

template <class T>
void launch_dx(const Dims& d, const BackwardArgs<T>& a, cudaStream_t s) {
  const int64_t blocks = d.b * d.h * d.nc;
  if (blocks == 0) return;
  with_chunk_tiles(d.Q, [&](auto kq) {
    constexpr int kQ = decltype(kq)::value;
    using Lay = DxLayout<T, kQ>;
    launch_big(dx_kernel<T, kQ>, unsigned(blocks), Lay::kThreads, Lay::bytes, s, d, a);
  });
}

template void launch_dx<float>(const Dims&, const BackwardArgs<float>&, cudaStream_t);
template void launch_dx<bf16>(const Dims&, const BackwardArgs<bf16>&, cudaStream_t);

}  // namespace mambatron::cuda::ssd
