// SSD backward on CUDA, per (row, group, chunk, 64 columns of n): dB and dC, the
// sums over the heads of the group. With PW_j = (dY_j·X_jᵀ ⊙ W_j)·diag(Δ_j):
//   dC = (Σ_j PW_j)·B + Σ_j diag(e_j)·dY_j·H_in,j
//   dB = (Σ_j PW_j)ᵀ·C + Σ_j diag(f_j ⊙ Δ_j)·X_j·Ĥ_j
// The heads run in order inside the block: Σ_j PW_j collects in shared memory (each
// element owned by one warp), the second terms in accumulator tiles, so the sums
// need no atomics and no per-head scratch. The states enter the second terms as
// hi/lo bf16 parts, as Σ_j PW_j does: a one-part state would round each term once
// more than the CPU op does, which a short sum (n or p of 1) does not average out.
#include "ssd_backward.h"

namespace mambatron::cuda::ssd {

namespace {

template <class T, int kQ>
struct BcLayout {
  static constexpr int kT = kQ / 16, kWarps = kT, kThreads = 32 * kWarps;
  static constexpr int kN = 64, kNC = kN / 16;       // columns of dB, dC per block
  static constexpr int kPK = kTensorCores<T> ? 64 : 32;  // p per operand chunk
  static constexpr int kTri = (kT * (kT + 1) / 2 + kWarps - 1) / kWarps;
  static constexpr int kTiles = kT * kNC / kWarps;    // dB (and dC) tiles per warp
  static constexpr int ldK = kQ + 4, ldP = pitch<T>(kPK), ldN = pitch<T>(kN);
  static constexpr size_t pw = 0, region = align128(size_t(kQ) * ldK * sizeof(float));
  static constexpr size_t dys = region, xs = dys + align128(size_t(kQ) * ldP * sizeof(T));
  static constexpr size_t hs = xs + align128(size_t(kQ) * ldP * sizeof(T)), dhs = hs + operand_bytes<T, 2>(kPK, ldN);
  static constexpr size_t ops_end = dhs + operand_bytes<T, 2>(kPK, ldN);
  // After the heads: B and C columns of this block.
  static constexpr size_t fb = region, fc = fb + align128(size_t(kQ) * ldN * sizeof(T));
  static constexpr size_t fin_end = fc + align128(size_t(kQ) * ldN * sizeof(T));
  static constexpr size_t stage = ops_end > fin_end ? ops_end : fin_end;
  static constexpr size_t S = stage + align128(size_t(kWarps) * 256 * sizeof(float));
  static constexpr size_t f32s = S + align128(kQ * sizeof(double));  // Δ, e, f⊙Δ
  static constexpr size_t doc = f32s + align128(size_t(3) * kQ * sizeof(float));
  static constexpr size_t bytes = doc + align128(kQ * sizeof(int));
  static_assert(bytes <= kMaxSmem, "ssd dB/dC kernel: too much shared memory");
};

template <class T, int kQ>
__global__ void __launch_bounds__(BcLayout<T, kQ>::kThreads)
    bc_kernel(Dims d, BackwardArgs<T> a) {
  using Lay = BcLayout<T, kQ>;
  constexpr int kWarps = Lay::kWarps, kThreads = Lay::kThreads, kN = Lay::kN, kNC = Lay::kNC, kPK = Lay::kPK;
  extern __shared__ __align__(128) unsigned char smem[];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  float* pw = reinterpret_cast<float*>(smem + Lay::pw);
  const Smem<T> dys{reinterpret_cast<T*>(smem + Lay::dys), Lay::ldP, 0};
  const Smem<T> xs{reinterpret_cast<T*>(smem + Lay::xs), Lay::ldP, 0};
  const Smem<T> hs{reinterpret_cast<T*>(smem + Lay::hs), Lay::ldN, part_stride<T>(kPK, Lay::ldN)};
  const Smem<T> dhs{reinterpret_cast<T*>(smem + Lay::dhs), Lay::ldN, part_stride<T>(kPK, Lay::ldN)};
  const Smem<T> fb{reinterpret_cast<T*>(smem + Lay::fb), Lay::ldN, 0};
  const Smem<T> fc{reinterpret_cast<T*>(smem + Lay::fc), Lay::ldN, 0};
  float* stage = reinterpret_cast<float*>(smem + Lay::stage) + warp * 256;
  double* Ss = reinterpret_cast<double*>(smem + Lay::S);
  float* dls = reinterpret_cast<float*>(smem + Lay::f32s);
  float* es = dls + kQ;
  float* fds = es + kQ;
  int* docs = reinterpret_cast<int*>(smem + Lay::doc);

  const int64_t ntiles = (d.n + kN - 1) / kN;
  int64_t id = blockIdx.x;
  const int64_t nt = id % ntiles;
  id /= ntiles;
  const int64_t c = id % d.nc;
  id /= d.nc;
  const int64_t gi = id % d.g, bi = id / d.g, k0 = nt * kN, heads = d.h / d.g;
  const int valid_n = int(d.n - k0 < kN ? d.n - k0 : kN);
  const int64_t t0 = c * d.Q;
  const int L = int(d.l - t0 < d.Q ? d.l - t0 : d.Q), Lt = (L + 15) / 16, Lp = 16 * Lt, ntri = Lt * (Lt + 1) / 2;

  for (int e = tid; e < kQ * Lay::ldK; e += kThreads) pw[e] = 0.f;
  Acc<T> accC[Lay::kTiles], accB[Lay::kTiles];
#pragma unroll
  for (int q = 0; q < Lay::kTiles; ++q) accC[q].zero(), accB[q].zero();

  // acc += diag(scale)·tmp for tile row tt (through this warp's stage).
  auto add_scaled = [&](Acc<T>& acc, Acc<T>& tmp, const float* scale, int tt) {
    tmp.store(stage, 16);
    __syncwarp();
    for (int e = lane; e < 256; e += 32) stage[e] *= scale[16 * tt + (e >> 4)];
    __syncwarp();
    tmp.load(stage, 16);
    acc.add(tmp);
    __syncwarp();
  };

  // Document ids do not depend on the head. A head's token scalars (one token a
  // thread) are loaded one head ahead; its operand blocks in two batches, each with
  // all its loads in flight at once.
  static_assert(kQ <= kThreads, "ssd dB/dC kernel: one token a thread");
  for (int t = tid; t < kQ; t += kThreads) docs[t] = t < L ? doc_at(a.seq, d, bi, t0 + t) : 0;
  const int doc_in = doc_at(a.seq, d, bi, t0 > 0 ? t0 - 1 : 0), doc_last = doc_at(a.seq, d, bi, t0 + L - 1);
  const int64_t tok = t0 + (tid < L ? tid : 0);
  double St_next = 0, Slast_next = 0;
  float dl_next = 0.f;
  auto load_head = [&](int64_t j) {
    St_next = a.S[d.so(bi, j, tok)];
    dl_next = a.delta[d.so(bi, j, tok)];
    Slast_next = a.S[d.so(bi, j, t0 + L - 1)];
  };
  load_head(gi * heads);

  for (int64_t hh = 0; hh < heads; ++hh) {
    const int64_t j = gi * heads + hh;
    const double St = St_next, S_last = Slast_next;
    const float dl = dl_next;
    if (hh + 1 < heads) load_head(j + 1);
    __syncthreads();  // the previous head is done with the scalars
    if (tid < kQ) {
      const int t = tid;
      Ss[t] = 0, dls[t] = es[t] = fds[t] = 0.f;
      if (t < L) {
        Ss[t] = St;
        dls[t] = dl;
        es[t] = docs[t] == doc_in ? float(exp(St)) : 0.f;
        fds[t] = docs[t] == doc_last ? float(exp(S_last - St) * double(dl)) : 0.f;
      }
    }
    Acc<T> accP[Lay::kTri];
#pragma unroll
    for (int q = 0; q < Lay::kTri; ++q) accP[q].zero();
    for (int64_t p0 = 0; p0 < d.p; p0 += kPK) {
      const int pk = int(d.p - p0 < kPK ? d.p - p0 : kPK), pks = (pk + 15) / 16;
      __syncthreads();  // the previous chunk of p is no longer read; the scalars are written
      {
        RegBlock<T, kQ, kPK, kThreads> dyr, xr;
        dyr.load(a.dy + d.xo(bi, t0, j) + p0, d.h * d.p, L, pk);
        xr.load(a.x + d.xo(bi, t0, j) + p0, d.h * d.p, L, pk);
        dyr.put_exact(dys);
        xr.put_exact(xs);
      }
      {
        RegBlock<float, kPK, kN, kThreads> hr, dhr;
        hr.load(a.hin + d.co(bi, j, c) + p0 * d.n + k0, d.n, pk, valid_n);
        dhr.load(a.dhout + d.co(bi, j, c) + p0 * d.n + k0, d.n, pk, valid_n);
        hr.put([&](int r, int cc, const Pack<float>& v) { put_split_vec<2>(hs, r * hs.ld + cc, v.v); });
        dhr.put([&](int r, int cc, const Pack<float>& v) { put_split_vec<2>(dhs, r * dhs.ld + cc, v.v); });
      }
      __syncthreads();
      for_warp_tri_tiles<Lay::kTri, kWarps>(warp, ntri, [&](int q, int tt, int ss) {
        for (int ks = 0; ks < pks; ++ks)
          mma_tile<Row, Col, 1, 1>(accP[q], dys, 16 * tt, 16 * ks, xs, 16 * ks, 16 * ss);
      });
#pragma unroll
      for (int q = 0; q < Lay::kTiles; ++q) {
        const int zt = warp + q * kWarps, tt = zt / kNC, nc = zt % kNC;
        if (tt >= Lt) continue;
        Acc<T> tmp;
        tmp.zero();
        for (int ks = 0; ks < pks; ++ks) mma_tile<Row, Row, 1, 2>(tmp, dys, 16 * tt, 16 * ks, hs, 16 * ks, 16 * nc);
        add_scaled(accC[q], tmp, es, tt);
        tmp.zero();
        for (int ks = 0; ks < pks; ++ks) mma_tile<Row, Row, 1, 2>(tmp, xs, 16 * tt, 16 * ks, dhs, 16 * ks, 16 * nc);
        add_scaled(accB[q], tmp, fds, tt);
      }
    }
    // PW += (Pm ⊙ W)·diag(Δ) on this warp's causal tiles.
    for_warp_tri_tiles<Lay::kTri, kWarps>(warp, ntri, [&](int q, int tt, int ss) {
      accP[q].store(stage, 16);
      __syncwarp();
      for (int e = lane; e < 256; e += 32) {
        const int t = 16 * tt + (e >> 4), s = 16 * ss + (e & 15);
        if (s <= t && t < L && docs[s] == docs[t])
          pw[t * Lay::ldK + s] += stage[e] * decay<T>(Ss[t] - Ss[s]) * dls[s];
      }
      __syncwarp();
    });
  }
  __syncthreads();

  // Split Σ PW in place, row by row; stage this block's columns of B and C.
  for (int t = warp; t < Lp; t += kWarps) {
    float m[kQ / 32];
#pragma unroll
    for (int u = 0; u < kQ / 32; ++u) m[u] = pw[t * Lay::ldK + lane + 32 * u];
    __syncwarp();
#pragma unroll
    for (int u = 0; u < kQ / 32; ++u) write_split_row<T>(pw, Lay::ldK, kQ, t, lane + 32 * u, m[u]);
  }
  stage_exact(fb, a.B + d.bco(bi, t0, gi) + k0, d.g * d.n, Lp, kN, L, valid_n);
  stage_exact(fc, a.C + d.bco(bi, t0, gi) + k0, d.g * d.n, Lp, kN, L, valid_n);
  __syncthreads();
  const Smem<T> PW = split_rows<T>(pw, Lay::ldK, kQ);
  auto write = [&](const Acc<T>& acc, T* out, int tt, int nc) {
    acc.store(stage, 16);
    __syncwarp();
    for (int e = lane; e < 256; e += 32) {
      const int t = 16 * tt + (e >> 4);
      const int64_t k = k0 + 16 * nc + (e & 15);
      if (t < L && k < d.n) out[d.bco(bi, t0 + t, gi) + k] = from_f32<T>(stage[e]);
    }
    __syncwarp();
  };
#pragma unroll
  for (int q = 0; q < Lay::kTiles; ++q) {
    const int zt = warp + q * kWarps, tt = zt / kNC, nc = zt % kNC;
    if (tt >= Lt) continue;
    for (int ss = 0; ss <= tt; ++ss) mma_tile<Row, Row, 2, 1>(accC[q], PW, 16 * tt, 16 * ss, fb, 16 * ss, 16 * nc);
    write(accC[q], a.dC, tt, nc);
    for (int ss = tt; ss < Lt; ++ss) mma_tile<Col, Row, 2, 1>(accB[q], PW, 16 * tt, 16 * ss, fc, 16 * ss, 16 * nc);
    write(accB[q], a.dB, tt, nc);
  }
}

}  // namespace

template <class T>
void launch_bc(const Dims& d, const BackwardArgs<T>& a, cudaStream_t s) {
  with_chunk_tiles(d.Q, [&](auto kq) {
    constexpr int kQ = decltype(kq)::value;
    using Lay = BcLayout<T, kQ>;
    const int64_t blocks = d.b * d.g * d.nc * ((d.n + Lay::kN - 1) / Lay::kN);
    if (blocks == 0) return;
    launch_big(bc_kernel<T, kQ>, unsigned(blocks), Lay::kThreads, Lay::bytes, s, d, a);
  });
}

template void launch_bc<float>(const Dims&, const BackwardArgs<float>&, cudaStream_t);
template void launch_bc<bf16>(const Dims&, const BackwardArgs<bf16>&, cudaStream_t);

}  // namespace mambatron::cuda::ssd
