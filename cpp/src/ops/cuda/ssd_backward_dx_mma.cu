// SSD backward on CUDA, dx, ddt and the chunk shares of dA, dD and ddt_bias on
// mma.sync fragments: bf16, p 64, n 64 or 128, 16-byte aligned rows
// (dx_mma_supported). The math is ssd_backward_dx.cu's, which serves every other
// case. A block has two warps per 16-token tile, working at the same time:
// Z warp w (w < kT) owns the tokens of row tile w and keeps its products in registers:
//   colZ_s and dX_s = Σ_{t ≥ s} (M_ts·Δ_s)·dY_t, over the tiles t ≥ w of
//     Zᵀ = (X·dYᵀ) ⊙ Mᵀ: the scaled Mᵀ tile is the dX product's A operand (hi/lo parts);
//   rowZ_t = Σ_{s ≤ t} Z_ts·Δ_s, over the tiles s ≤ w of Z = (dY·Xᵀ) ⊙ M.
// State warp kT + w takes the same tokens' state terms: T1 = B·Ĥᵀ gives q_s = ⟨x_s, T1_s⟩
// and f_s·Δ_s·T1 + D·dy, which it hands to Z warp w (f32: in the tile's rows of B, which
// only this warp reads, at n 128; else in a region of its own) to be added to dX and
// stored, and Σ dy·x; U = C·H_inᵀ gives u_t = ⟨dy_t, U_t⟩, the state warp making U's
// columns p 32..63, the Z warp, once its own products are made, columns 0..31 (the state warps
// have about three times the Z warps' mma work otherwise). u's two halves add in that order.
// The states are split once, as they are staged, into three bf16 planes (q and u feed f32
// outputs), so that both products read them with ldmatrix; the state warps also sum
// ⟨Ĥ, H_in⟩ from the f32 values.
// M = K ⊙ W reads K (launch_chunk_cb) from global memory, a tile ahead of its use.
#include "ssd_backward.h"
#include "ssd_mma.cuh"

namespace mambatron::cuda::ssd {

namespace {

using namespace mma_bf16;

constexpr int kP = 64;

template <int kQ, int kN>
struct DxMmaLayout {
  static constexpr int kT = kQ / 16, kWarps = 2 * kT, kThreads = 32 * kWarps, kHalf = kThreads / 2;
  static constexpr int kParts = 3;
  static constexpr size_t plane = size_t(kP) * kN * 2;  // one bf16 part of a state
  static constexpr size_t dy = 0, x = dy + size_t(kQ) * kP * 2, b = x + size_t(kQ) * kP * 2;
  static constexpr size_t c = b + size_t(kQ) * kN * 2, hout = c + size_t(kQ) * kN * 2;
  static constexpr size_t hin = hout + kParts * plane, values = hin + kParts * plane;
  static constexpr bool kHandInB = kN >= 128;  // a tile's 16 rows of B hold its 16 × 64 f32
  static constexpr size_t handoff = values + token_values_bytes(kQ);
  static constexpr size_t bytes = handoff + (kHandInB ? 0 : size_t(kQ) * kP * 4);
  // With the static red and u_lo.
  static_assert(bytes + 8 * (32 + kQ) <= kMaxSmem, "ssd dx tensor-core kernel: too much shared memory");
};

// The four lanes' M values of a fragment place pair: K at (t, s) for the Z tiles, read
// ahead of the tile that uses them.
struct KTile {
  float v[2][2][2];  // [nh][hr][e]
};

template <int kQ, int kN>
__global__ void __launch_bounds__(DxMmaLayout<kQ, kN>::kThreads, 1)
    dx_mma_kernel(Dims d, BackwardArgs<bf16> a) {
  using Lay = DxMmaLayout<kQ, kN>;
  constexpr int kT = Lay::kT, kHalf = Lay::kHalf, kParts = Lay::kParts;
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ double red[32];
  __shared__ double u_lo[kQ];  // u_t's part from U's columns 0..31 (the Z warps')
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tq = lane & 3;
  const bool z_warp = warp < kT;
  const int w = z_warp ? warp : warp - kT;  // the row tile this warp works on
  bf16* dys = reinterpret_cast<bf16*>(smem + Lay::dy);
  bf16* xs = reinterpret_cast<bf16*>(smem + Lay::x);
  bf16* bs = reinterpret_cast<bf16*>(smem + Lay::b);
  bf16* cs = reinterpret_cast<bf16*>(smem + Lay::c);
  bf16* hout = reinterpret_cast<bf16*>(smem + Lay::hout);  // kParts planes each
  bf16* hin = reinterpret_cast<bf16*>(smem + Lay::hin);
  // The handoff of a lane's fragment value i (of 32), 4 KB a tile.
  float* hand = Lay::kHandInB ? reinterpret_cast<float*>(bs + 16 * w * kN)
                              : reinterpret_cast<float*>(smem + Lay::handoff) + w * 16 * kP;
  auto handoff = [&](int i) -> float& { return hand[i * 32 + lane]; };
  // A warp's half of U's columns (p 32·half ..) for the rows of tile w: u's part. The
  // planes are swizzled by row, so 32 rows down is a tile too.
  auto u_half = [&](int half, double* u_out) {
    float u[kP / 16][4];
    zero_frags(u);
#pragma unroll
    for (int q = 0; q < kParts; ++q) gemm_abt<kN, 4>(u, cs, 16 * w, hin + q * kP * kN + 32 * half * kN);
    double us[2] = {0, 0};
#pragma unroll
    for (int nt = 0; nt < kP / 16; ++nt)
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        const int t = 16 * w + g + 8 * hr, col = 32 * half + 8 * nt + 2 * tq;
        const float2 dyv = tile_pair(dys, t, col);
        us[hr] += double(dyv.x) * double(u[nt][2 * hr]) + double(dyv.y) * double(u[nt][2 * hr + 1]);
      }
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const double su = quad_sum(us[hr]);
      if (tq == 0) u_out[16 * w + g + 8 * hr] = su;
    }
  };
  const TokenValues v = carve_token_values(smem + Lay::values, kQ);

  int64_t id = blockIdx.x;
  const int64_t c = id % d.nc;
  id /= d.nc;
  const int64_t j = id % d.h, bi = id / d.h, gi = d.group(j);
  const Chunk ch = make_chunk(d, a.S, a.seq, bi, j, c);
  const int L = ch.L;
  const int64_t t0 = ch.t0, len = t0 + L;

  if (z_warp) {
    load_tile<kQ, kP, kHalf>(dys, a.dy + d.xo(bi, 0, j), d.h * d.p, t0, len, tid);
    load_tile<kQ, kP, kHalf>(xs, a.x + d.xo(bi, 0, j), d.h * d.p, t0, len, tid);
  } else {
    load_tile<kQ, kN, kHalf>(bs, a.B + d.bco(bi, 0, gi), d.g * d.n, t0, len, tid - kHalf);
    load_tile<kQ, kN, kHalf>(cs, a.C + d.bco(bi, 0, gi), d.g * d.n, t0, len, tid - kHalf);
  }
  cp_commit();
  fill_token_values(v, kQ, d, a, ch);  // threads below kQ: Z warps only
  if (z_warp) cp_wait<0>();
  __syncthreads();  // dY, X and the token values, for both kinds of warp

  double hh = 0;
  float dx[kP / 8][4];  // Z warps: dX of rows s in tile w
  zero_frags(dx);
  if (z_warp) {
    const float* K = a.K + d.ko(bi, c, gi);
    // A token's values that M needs; a thread's own rows keep theirs in registers.
    struct Tok {
      double S;
      int doc;
    };
    auto tok = [&](int t) { return Tok{v.S[t], v.docs[t]}; };
    // M_ts = K_ts·W_ts on the causal places of the chunk, else 0 (k = K_ts, read ahead, and
    // 0 on rows past L; selected, not branched on).
    auto m_at = [&](float k, int t, Tok tt, int s, Tok ts) -> float {
      const float m = k * decay<bf16>(tt.S - ts.S);
      return s <= t && t < L && tt.doc == ts.doc ? m : 0.f;
    };
    // colZ and dX of rows s in tile w, over the tiles t ≥ w.
    {
      auto read_k = [&](KTile& k, int tt) {
#pragma unroll
        for (int nh = 0; nh < 2; ++nh)
#pragma unroll
          for (int hr = 0; hr < 2; ++hr)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int t = 16 * tt + 8 * nh + 2 * tq + e;
              k.v[nh][hr][e] = t < L ? K[t * kQ + 16 * w + g + 8 * hr] : 0.f;
            }
      };
      uint32_t ax[kP / 16][4];
#pragma unroll
      for (int ks = 0; ks < kP / 16; ++ks) ldsm_x4(ax[ks], a_addr<kP>(xs, 16 * w, 2 * ks));
      double colz[2] = {0, 0};
      const Tok rows[2] = {tok(16 * w + g), tok(16 * w + g + 8)};
      KTile next;
      read_k(next, w);
      for (int tt = w; tt < kT; ++tt) {
        const KTile k = next;
        if (tt + 1 < kT) read_k(next, tt + 1);
        float pm[2][4];  // Pmᵀ: rows s, columns t
        tile_abt(pm, ax, dys, 16 * tt);
        float md[2][4];  // M_ts·Δ_s at the same places
        float cz[2] = {0.f, 0.f};
#pragma unroll
        for (int nh = 0; nh < 2; ++nh)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int t = 16 * tt + 8 * nh + 2 * tq + e;
            const Tok col = tok(t);
#pragma unroll
            for (int hr = 0; hr < 2; ++hr) {
              const int s = 16 * w + g + 8 * hr;
              const float m = m_at(k.v[nh][hr][e], t, col, s, rows[hr]);
              cz[hr] += m * pm[nh][2 * hr + e];
              md[nh][2 * hr + e] = m * v.dl32[s];
            }
          }
        colz[0] += double(cz[0]), colz[1] += double(cz[1]);
        uint32_t hi[4], lo[4];
        c_to_a_split(md, hi, lo);
        gemm_split_a<kP>(dx, hi, lo, dys, 16 * tt);
      }
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        const double z = quad_sum(colz[hr]);
        if (tq == 0) v.colZ[16 * w + g + 8 * hr] = z;
      }
    }
    // rowZ of rows t in tile w, over the tiles s ≤ w.
    {
      auto read_k = [&](KTile& k, int ss) {
#pragma unroll
        for (int nh = 0; nh < 2; ++nh)
#pragma unroll
          for (int hr = 0; hr < 2; ++hr) {
            const int t = 16 * w + g + 8 * hr;
            const float2 kv =
                t < L ? *reinterpret_cast<const float2*>(K + t * kQ + 16 * ss + 8 * nh + 2 * tq) : make_float2(0.f, 0.f);
            k.v[nh][hr][0] = kv.x, k.v[nh][hr][1] = kv.y;
          }
      };
      uint32_t ay[kP / 16][4];
#pragma unroll
      for (int ks = 0; ks < kP / 16; ++ks) ldsm_x4(ay[ks], a_addr<kP>(dys, 16 * w, 2 * ks));
      double rowz[2] = {0, 0};
      const Tok rows[2] = {tok(16 * w + g), tok(16 * w + g + 8)};
      KTile next;
      read_k(next, 0);
      for (int ss = 0; ss <= w; ++ss) {
        const KTile k = next;
        if (ss + 1 <= w) read_k(next, ss + 1);
        float pm[2][4];  // Pm: rows t, columns s
        tile_abt(pm, ay, xs, 16 * ss);
        float rz[2] = {0.f, 0.f};
#pragma unroll
        for (int nh = 0; nh < 2; ++nh)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int s = 16 * ss + 8 * nh + 2 * tq + e;
            const Tok col = tok(s);
            const float dl = v.dl32[s];
#pragma unroll
            for (int hr = 0; hr < 2; ++hr) {
              const int t = 16 * w + g + 8 * hr;
              rz[hr] += m_at(k.v[nh][hr][e], t, rows[hr], s, col) * pm[nh][2 * hr + e] * dl;
            }
          }
        rowz[0] += double(rz[0]), rowz[1] += double(rz[1]);
      }
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        const double z = quad_sum(rowz[hr]);
        if (tq == 0) v.rowZ[16 * w + g + 8 * hr] = z;
      }
    }
    named_barrier(2, Lay::kThreads);  // C and H_in's planes, from the state warps
    u_half(0, u_lo);
  } else {
    // Both states into their planes, and this thread's share of ⟨Ĥ, H_in⟩.
    {
      StatePlanes<kP, kN, kHalf, kParts> ho, hn;
      ho.load(a.dhout + d.co(bi, j, c), d.n, tid - kHalf);
      hn.load(a.hin + d.co(bi, j, c), d.n, tid - kHalf);
      hh = ho.dot(hn);
      ho.put(hout, tid - kHalf);
      hn.put(hin, tid - kHalf);
    }
    cp_wait<0>();
    named_barrier(1, kHalf);                 // B, C and the state planes, among the state warps
    named_barrier_arrive(2, Lay::kThreads);  // and for the Z warps' half of U
    u_half(1, v.uacc);
    // T1 = B·Ĥᵀ of rows s in tile w: q_s, Σ dy·x, and f_s·Δ_s·T1 + D·dy handed to Z warp w.
    {
      const float Dj = a.D ? a.D[j] : 0.f;
      float t1[kP / 8][4];
      zero_frags(t1);
#pragma unroll
      for (int q = 0; q < kParts; ++q) gemm_abt<kN, 8>(t1, bs, 16 * w, hout + q * kP * kN);
      double q[2] = {0, 0}, ds[2] = {0, 0};
      __syncwarp();  // the tile's rows of B are read: at n 128 they take the handoff
#pragma unroll
      for (int nt = 0; nt < kP / 8; ++nt)
#pragma unroll
        for (int hr = 0; hr < 2; ++hr) {
          const int s = 16 * w + g + 8 * hr, col = 8 * nt + 2 * tq;
          const float2 xv = tile_pair(xs, s, col), dyv = tile_pair(dys, s, col);
          q[hr] += double(xv.x) * double(t1[nt][2 * hr]) + double(xv.y) * double(t1[nt][2 * hr + 1]);
          ds[hr] += double(dyv.x) * double(xv.x) + double(dyv.y) * double(xv.y);
          handoff(4 * nt + 2 * hr) = v.fd32[s] * t1[nt][2 * hr] + Dj * dyv.x;
          handoff(4 * nt + 2 * hr + 1) = v.fd32[s] * t1[nt][2 * hr + 1] + Dj * dyv.y;
        }
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        const double z = quad_sum(q[hr]), sd = quad_sum(ds[hr]);
        if (tq == 0) v.qacc[16 * w + g + 8 * hr] = z, v.dacc[16 * w + g + 8 * hr] = sd;
      }
    }
  }
  __syncthreads();  // the handoff
  if (z_warp) {
    // dX += f_s·Δ_s·T1 + D·dy from state warp kT + w (same fragment places, same lane).
#pragma unroll
    for (int nt = 0; nt < kP / 8; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) dx[nt][i] += handoff(4 * nt + i);
    __syncwarp();  // the tile's rows of B now stage this warp's bf16 output rows
    const float one[2] = {1.f, 1.f};
    store_rows<kP>(dx, one, bs + 16 * w * kN, 0, a.dx + d.xo(bi, 0, j), d.h * d.p, t0 + 16 * w, len);
  }

  hh = block_sum(hh, red);  // its barriers also publish the per-token sums
  if (warp == 0) {
    for (int t = lane; t < kQ; t += 32) v.uacc[t] = u_lo[t] + v.uacc[t];
    __syncwarp();
    finish_chunk<bf16, kQ>(v, hh, d, a, ch);
  }
}

}  // namespace

bool dx_mma_supported(const Dims& d, const BackwardArgs<bf16>& a) {
  return d.p == kP && (d.n == 64 || d.n == 128) && aligned16(a.dy) && aligned16(a.x) && aligned16(a.B) &&
         aligned16(a.C) && aligned16(a.dx) && aligned16(a.hin) && aligned16(a.dhout);
}

void launch_dx_mma(const Dims& d, const BackwardArgs<bf16>& a, cudaStream_t s) {
  const int64_t blocks = d.b * d.h * d.nc;
  if (blocks == 0) return;
  with_mma_sizes(d, [&](auto kq, auto kn) {
    using Lay = DxMmaLayout<decltype(kq)::value, decltype(kn)::value>;
    launch_big(dx_mma_kernel<decltype(kq)::value, decltype(kn)::value>, unsigned(blocks), Lay::kThreads, Lay::bytes, s,
               d, a);
  });
}

}  // namespace mambatron::cuda::ssd
