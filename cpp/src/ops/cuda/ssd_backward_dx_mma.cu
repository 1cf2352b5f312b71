// SSD backward on CUDA, dx, ddt and the chunk shares of dA, dD and ddt_bias on
// mma.sync fragments: bf16, p 64, n 64 or 128, 16-byte aligned rows
// (dx_mma_supported). The math is ssd_backward_dx.cu's, which serves every other
// case. Warp w owns the 16 tokens of row tile w and keeps its products in registers:
//   colZ_s and dX_s = Σ_{t ≥ s} (M_ts·Δ_s)·dY_t, over the tiles t ≥ w of
//     Zᵀ = (X·dYᵀ) ⊙ Mᵀ: the scaled Mᵀ tile is the dX product's A operand (hi/lo parts);
//   rowZ_t = Σ_{s ≤ t} Z_ts·Δ_s, over the tiles s ≤ w of Z = (dY·Xᵀ) ⊙ M;
//   T1 = B·Ĥᵀ and U = C·H_inᵀ with the states in three bf16 parts (q and u feed f32
//     outputs), then q_s = ⟨x_s, T1_s⟩, u_t = ⟨dy_t, U_t⟩ and dx += f_s·Δ_s·T1 + D·dy.
// M = K ⊙ W reads K (launch_chunk_cb) from global memory at the fragments' places.
// dY and X load first (cp.async); B, C and the states load while the Z tiles are formed.
#include "ssd_backward.h"
#include "ssd_mma.cuh"

namespace mambatron::cuda::ssd {

namespace {

using namespace mma_bf16;

constexpr int kP = 64;

template <int kQ, int kN>
struct DxMmaLayout {
  static constexpr int kT = kQ / 16, kWarps = kT, kThreads = 32 * kWarps, kLdH = kN + 8;
  static constexpr size_t dy = 0, x = dy + size_t(kQ) * kP * 2, b = x + size_t(kQ) * kP * 2;
  static constexpr size_t c = b + size_t(kQ) * kN * 2, hout = c + size_t(kQ) * kN * 2;
  static constexpr size_t hin = hout + size_t(kP) * kLdH * 4, values = hin + size_t(kP) * kLdH * 4;
  static constexpr size_t bytes = values + token_values_bytes(kQ);
  static_assert(bytes <= kMaxSmem, "ssd dx tensor-core kernel: too much shared memory");
};

template <int kQ, int kN>
__global__ void __launch_bounds__(DxMmaLayout<kQ, kN>::kThreads)
    dx_mma_kernel(Dims d, BackwardArgs<bf16> a) {
  using Lay = DxMmaLayout<kQ, kN>;
  constexpr int kT = Lay::kT, kThreads = Lay::kThreads, kLdH = Lay::kLdH;
  extern __shared__ __align__(128) unsigned char smem[];
  __shared__ double red[32];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tq = lane & 3;
  bf16* dys = reinterpret_cast<bf16*>(smem + Lay::dy);
  bf16* xs = reinterpret_cast<bf16*>(smem + Lay::x);
  bf16* bs = reinterpret_cast<bf16*>(smem + Lay::b);
  bf16* cs = reinterpret_cast<bf16*>(smem + Lay::c);
  const float* hout = reinterpret_cast<const float*>(smem + Lay::hout);
  const float* hin = reinterpret_cast<const float*>(smem + Lay::hin);
  const TokenValues v = carve_token_values(smem + Lay::values, kQ);

  int64_t id = blockIdx.x;
  const int64_t c = id % d.nc;
  id /= d.nc;
  const int64_t j = id % d.h, bi = id / d.h, gi = d.group(j);
  const Chunk ch = make_chunk(d, a.S, a.seq, bi, j, c);
  const int L = ch.L;
  const int64_t t0 = ch.t0, len = t0 + L;

  load_tile<kQ, kP, kThreads>(dys, a.dy + d.xo(bi, 0, j), d.h * d.p, t0, len);
  load_tile<kQ, kP, kThreads>(xs, a.x + d.xo(bi, 0, j), d.h * d.p, t0, len);
  cp_commit();
  load_tile<kQ, kN, kThreads>(bs, a.B + d.bco(bi, 0, gi), d.g * d.n, t0, len);
  load_tile<kQ, kN, kThreads>(cs, a.C + d.bco(bi, 0, gi), d.g * d.n, t0, len);
  load_f32_async<kThreads>(reinterpret_cast<float*>(smem + Lay::hout), kLdH, a.dhout + d.co(bi, j, c), d.n, kP, kN);
  load_f32_async<kThreads>(reinterpret_cast<float*>(smem + Lay::hin), kLdH, a.hin + d.co(bi, j, c), d.n, kP, kN);
  cp_commit();
  fill_token_values(v, kQ, d, a, ch);
  cp_wait<1>();
  __syncthreads();

  const float* K = a.K + d.ko(bi, c, gi);
  // M_ts = K_ts·W_ts on the causal places of the chunk, else 0.
  auto m_at = [&](int t, int s) -> float {
    if (s > t || t >= L || v.docs[s] != v.docs[t]) return 0.f;
    return K[t * kQ + s] * decay<bf16>(v.S[t] - v.S[s]);
  };

  // colZ and dX of rows s in tile w, over the tiles t ≥ w.
  float dx[kP / 8][4];
  zero_frags(dx);
  {
    uint32_t ax[kP / 16][4];
#pragma unroll
    for (int ks = 0; ks < kP / 16; ++ks) ldsm_x4(ax[ks], a_addr<kP>(xs, 16 * warp, 2 * ks));
    double colz[2] = {0, 0};
    for (int tt = warp; tt < kT; ++tt) {
      float pm[2][4];  // Pmᵀ: rows s, columns t
      tile_abt(pm, ax, dys, 16 * tt);
      float md[2][4];  // M_ts·Δ_s at the same places
#pragma unroll
      for (int nh = 0; nh < 2; ++nh)
#pragma unroll
        for (int hr = 0; hr < 2; ++hr)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int s = 16 * warp + g + 8 * hr, t = 16 * tt + 8 * nh + 2 * tq + e;
            const float m = m_at(t, s);
            colz[hr] += double(m * pm[nh][2 * hr + e]);
            md[nh][2 * hr + e] = m * v.dl32[s];
          }
      uint32_t hi[4], lo[4];
      c_to_a_split(md, hi, lo);
      gemm_split_a<kP>(dx, hi, lo, dys, 16 * tt);
    }
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const double z = quad_sum(colz[hr]);
      if (tq == 0) v.colZ[16 * warp + g + 8 * hr] = z;
    }
  }
  // rowZ of rows t in tile w, over the tiles s ≤ w.
  {
    uint32_t ay[kP / 16][4];
#pragma unroll
    for (int ks = 0; ks < kP / 16; ++ks) ldsm_x4(ay[ks], a_addr<kP>(dys, 16 * warp, 2 * ks));
    double rowz[2] = {0, 0};
    for (int ss = 0; ss <= warp; ++ss) {
      float pm[2][4];  // Pm: rows t, columns s
      tile_abt(pm, ay, xs, 16 * ss);
#pragma unroll
      for (int nh = 0; nh < 2; ++nh)
#pragma unroll
        for (int hr = 0; hr < 2; ++hr)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int t = 16 * warp + g + 8 * hr, s = 16 * ss + 8 * nh + 2 * tq + e;
            rowz[hr] += double(m_at(t, s) * pm[nh][2 * hr + e]) * v.d64[s];
          }
    }
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const double z = quad_sum(rowz[hr]);
      if (tq == 0) v.rowZ[16 * warp + g + 8 * hr] = z;
    }
  }

  cp_wait<0>();
  __syncthreads();
  // ⟨Ĥ, H_in⟩, this thread's share.
  double hh = 0;
  for (int e = tid; e < kP * kN; e += kThreads) {
    const int r = e / kN, cc = e - r * kN;
    hh += double(hout[r * kLdH + cc]) * double(hin[r * kLdH + cc]);
  }
  const float Dj = a.D ? a.D[j] : 0.f;
  // T1 = B·Ĥᵀ of rows s in tile w: q_s, then dx += f_s·Δ_s·T1 + D·dy, stored.
  {
    float t1[kP / 8][4];
    zero_frags(t1);
    gemm_state_t<kN, 3>(t1, bs, 16 * warp, hout, kLdH);
    double q[2] = {0, 0};
#pragma unroll
    for (int nt = 0; nt < kP / 8; ++nt)
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        const int s = 16 * warp + g + 8 * hr, col = 8 * nt + 2 * tq;
        const float2 xv = tile_pair(xs, s, col), dyv = tile_pair(dys, s, col);
        q[hr] += double(xv.x) * double(t1[nt][2 * hr]) + double(xv.y) * double(t1[nt][2 * hr + 1]);
        dx[nt][2 * hr] += v.fd32[s] * t1[nt][2 * hr] + Dj * dyv.x;
        dx[nt][2 * hr + 1] += v.fd32[s] * t1[nt][2 * hr + 1] + Dj * dyv.y;
      }
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const double z = quad_sum(q[hr]);
      if (tq == 0) v.qacc[16 * warp + g + 8 * hr] = z;
    }
    // This warp's rows of B are used up: they stage its dx rows.
    __syncwarp();
    const float one[2] = {1.f, 1.f};
    store_rows<kP>(dx, one, bs + 16 * warp * kN, 0, a.dx + d.xo(bi, 0, j), d.h * d.p, t0 + 16 * warp, len);
  }
  // U = C·H_inᵀ of rows t in tile w: u_t and Σ dy·x.
  {
    float u[kP / 8][4];
    zero_frags(u);
    gemm_state_t<kN, 3>(u, cs, 16 * warp, hin, kLdH);
    double us[2] = {0, 0}, ds[2] = {0, 0};
#pragma unroll
    for (int nt = 0; nt < kP / 8; ++nt)
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        const int t = 16 * warp + g + 8 * hr, col = 8 * nt + 2 * tq;
        const float2 xv = tile_pair(xs, t, col), dyv = tile_pair(dys, t, col);
        us[hr] += double(dyv.x) * double(u[nt][2 * hr]) + double(dyv.y) * double(u[nt][2 * hr + 1]);
        ds[hr] += double(dyv.x) * double(xv.x) + double(dyv.y) * double(xv.y);
      }
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const double su = quad_sum(us[hr]), sd = quad_sum(ds[hr]);
      if (tq == 0) v.uacc[16 * warp + g + 8 * hr] = su, v.dacc[16 * warp + g + 8 * hr] = sd;
    }
  }

  hh = block_sum(hh, red);  // its barriers also publish the per-token sums
  if (warp == 0) finish_chunk<bf16, kQ>(v, hh, d, a, ch);
}

}  // namespace

bool dx_mma_supported(const Dims& d, const BackwardArgs<bf16>& a) {
  return d.p == kP && (d.n == 64 || d.n == 128) && aligned16(a.dy) && aligned16(a.x) && aligned16(a.B) &&
         aligned16(a.C) && aligned16(a.dx) && aligned16(a.hin) && aligned16(a.dhout);
}

void launch_dx_mma(const Dims& d, const BackwardArgs<bf16>& a, cudaStream_t s) {
  const int64_t blocks = d.b * d.h * d.nc;
  if (blocks == 0) return;
  with_chunk_tiles(d.Q, [&](auto kq) {
    constexpr int kQ = decltype(kq)::value;
    auto go = [&](auto kernel, int threads, size_t bytes) { launch_big(kernel, unsigned(blocks), threads, bytes, s, d, a); };
    if (d.n == 64) go(dx_mma_kernel<kQ, 64>, DxMmaLayout<kQ, 64>::kThreads, DxMmaLayout<kQ, 64>::bytes);
    else go(dx_mma_kernel<kQ, 128>, DxMmaLayout<kQ, 128>::kThreads, DxMmaLayout<kQ, 128>::bytes);
  });
}

}  // namespace mambatron::cuda::ssd
