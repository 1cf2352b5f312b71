// SSD backward on CUDA, dB and dC on mma.sync fragments: bf16 activations, p and n
// multiples of 64, 16-byte aligned rows (bc_mma_supported). With PW_j = (dY_j·X_jᵀ ⊙ W_j)·diag(Δ_j):
//   dC = (Σ_j PW_j)·B + Σ_j diag(e_j)·dY_j·H_in,j
//   dB = (Σ_j PW_j)ᵀ·C + Σ_j diag(f_j ⊙ Δ_j)·X_j·Ĥ_j
// One kernel, a block per (row, group, chunk, 64 columns of n). It walks the (head, 64
// columns of p) steps with the next step's operands loading while the current one is
// multiplied, and sums in order over the heads both the state terms and Σ PW (its causal
// 16×16 tiles shared among the warps, in registers); then it adds the PW products. The
// states enter their products as hi/lo bf16 parts, as in the generic kernel
// (ssd_backward_bc.cu), which serves every other case: split once a step for the block,
// into planes that ldmatrix reads.
#include "ssd_backward.h"
#include "ssd_mma.cuh"

namespace mambatron::cuda::ssd {

namespace {

using namespace mma_bf16;

constexpr int kPC = 64;  // p per step
constexpr int kNT = 64;  // columns of dB, dC per bc block

// What one step stages: dY and X of one head's 64 columns of p, the head's S and Δ.
template <int kQ>
struct StepLayout {
  static constexpr size_t dy = 0, x = dy + size_t(kQ) * kPC * 2;
  static constexpr size_t S = x + size_t(kQ) * kPC * 2, dl = S + kQ * sizeof(double);
  static constexpr size_t end = align128(dl + kQ * sizeof(float));
};

// A staged step's operands.
struct Step {
  const bf16 *dy, *x;
  const double* S;
  const float* dl;
};
template <int kQ>
__device__ __forceinline__ Step step_at(const unsigned char* st) {
  using S = StepLayout<kQ>;
  return {reinterpret_cast<const bf16*>(st + S::dy), reinterpret_cast<const bf16*>(st + S::x),
          reinterpret_cast<const double*>(st + S::S), reinterpret_cast<const float*>(st + S::dl)};
}

template <int kQ, int kThreads>
__device__ __forceinline__ void load_step(unsigned char* st, const Dims& d, const BackwardArgs<bf16>& a, int64_t bi,
                                          int64_t j, int64_t p0, int64_t t0, int L) {
  using S = StepLayout<kQ>;
  load_tile<kQ, kPC, kThreads>(reinterpret_cast<bf16*>(st + S::dy), a.dy + d.xo(bi, 0, j) + p0, d.h * d.p, t0, t0 + L);
  load_tile<kQ, kPC, kThreads>(reinterpret_cast<bf16*>(st + S::x), a.x + d.xo(bi, 0, j) + p0, d.h * d.p, t0, t0 + L);
  for (int t = threadIdx.x; t < kQ; t += kThreads) {
    const bool ok = t < L;
    const int64_t o = d.so(bi, j, t0 + (ok ? t : 0));
    cp_async<8>(st + S::S + t * sizeof(double), a.S + o, ok);
    cp_async<4>(st + S::dl + t * sizeof(float), a.delta + o, ok);
  }
}

// body(s) for steps 0 .. steps − 1, each with its operands in shared memory: issue(s)
// starts step s's copies (cp.async, one commit group, and loads into registers) into one
// of two stages, and step s + 1's are in flight while body(s) runs; land(s + 1) then puts
// what came into registers in its stage. Every thread of the block takes part.
template <class Issue, class Body, class Land>
__device__ __forceinline__ void for_steps(int64_t steps, Issue&& issue, Body&& body, Land&& land) {
  issue(0);
  land(0);
  for (int64_t s = 0; s < steps; ++s) {
    if (s + 1 < steps) {
      issue(s + 1);
      cp_wait<1>();
    } else {
      cp_wait<0>();
    }
    __syncthreads();
    body(s);
    if (s + 1 < steps) land(s + 1);  // its stage was last read by body(s − 1)
    __syncthreads();  // the stage is free for step s + 2
  }
}

// ---------------------------------------------------------------- dB, dC
// kT warps; warp w owns row tile w of dB and dC (64 columns of n). A step stages,
// besides dY and X, the head's H_in and Ĥ over the step's p and the block's n, each as
// hi and lo bf16 planes ([kPC][kNT] swizzled tiles).
template <int kQ>
struct BcMmaLayout {
  static constexpr int kT = kQ / 16, kWarps = kT, kThreads = 32 * kWarps;
  static constexpr size_t plane = size_t(kPC) * kNT * 2;
  static constexpr size_t hin = StepLayout<kQ>::end, hout = hin + 2 * plane;
  static constexpr size_t step = align128(hout + 2 * plane);
  static constexpr size_t doc = 2 * step;
  static constexpr size_t bytes = doc + align128(kQ * sizeof(int));
  // After the steps, in the stages' place: PW (hi, lo), B and C columns, the output staging.
  static constexpr size_t pwh = 0, pwl = pwh + size_t(kQ) * kQ * 2, bs = pwl + size_t(kQ) * kQ * 2;
  static constexpr size_t cs = bs + size_t(kQ) * kNT * 2, out = cs + size_t(kQ) * kNT * 2;
  static_assert(out + size_t(kQ) * kNT * 2 <= doc, "ssd dB/dC tensor-core kernel: the final operands must fit");
  static_assert(bytes <= kMaxSmem, "ssd dB/dC tensor-core kernel: too much shared memory");
};

// acc[nt] += diag(scale)·A·H for a warp's 16 rows (scale[0] for rows g, scale[1] for
// rows g + 8): A's fragments a[ks] (16 × kPC), H = hi + lo, two [kPC][kNT] bf16 planes
// (swizzled) at H and H + kPC·kNT. A column pair of tiles at a time, so that few
// registers are live.
__device__ __forceinline__ void gemm_state(float (&acc)[kNT / 8][4], const uint32_t (&a)[kPC / 16][4],
                                           const bf16* H, const float (&scale)[2]) {
#pragma unroll
  for (int np = 0; np < kNT / 16; ++np) {
    float t[2][4];
    zero_frags(t);
#pragma unroll
    for (int part = 0; part < 2; ++part)
#pragma unroll
      for (int ks = 0; ks < kPC / 16; ++ks) {
        uint32_t b[4];
        ldsm_x4_t(b, a_addr<kNT>(H + part * kPC * kNT, 16 * ks, 2 * np));
        mma(t[0], a[ks], b[0], b[1]);
        mma(t[1], a[ks], b[2], b[3]);
      }
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      float* o = acc[2 * np + k];
      o[0] += scale[0] * t[k][0], o[1] += scale[0] * t[k][1];
      o[2] += scale[1] * t[k][2], o[3] += scale[1] * t[k][3];
    }
  }
}

template <int kQ>
__global__ void __launch_bounds__(BcMmaLayout<kQ>::kThreads)
    bc_mma_kernel(Dims d, BackwardArgs<bf16> a) {
  using Lay = BcMmaLayout<kQ>;
  constexpr int kT = Lay::kT, kThreads = Lay::kThreads;
  extern __shared__ __align__(128) unsigned char smem[];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tq = lane & 3;
  int* docs = reinterpret_cast<int*>(smem + Lay::doc);

  const int64_t ntiles = d.n / kNT;
  int64_t id = blockIdx.x;
  const int64_t nt = id % ntiles;
  id /= ntiles;
  const int64_t c = id % d.nc;
  id /= d.nc;
  const int64_t gi = id % d.g, bi = id / d.g, heads = d.h / d.g, n0 = nt * kNT;
  const int64_t t0 = c * d.Q;
  const int L = int(d.l - t0 < d.Q ? d.l - t0 : d.Q);
  const int64_t pchunks = d.p / kPC, steps = heads * pchunks;
  for (int t = tid; t < kQ; t += kThreads) docs[t] = t < L ? doc_at(a.seq, d, bi, t0 + t) : 0;
  const int doc_in = doc_at(a.seq, d, bi, t0 > 0 ? t0 - 1 : 0), doc_last = doc_at(a.seq, d, bi, t0 + L - 1);

  float accC[kNT / 8][4], accB[kNT / 8][4];
  zero_frags(accC);
  zero_frags(accB);
  // Σ PW: the kT·(kT + 1)/2 causal tiles (row tile rt, column tile ct ≤ rt), numbered row
  // by row; warp w sums tiles w, w + kT, w + 2·kT, ...
  constexpr int kTiles = kT * (kT + 1) / 2, kMine = (kTiles + kT - 1) / kT;
  int rt[kMine], ct[kMine];
#pragma unroll
  for (int i = 0; i < kMine; ++i) {
    int f = warp + i * kT, r = 0;
    while (r < kT && f > r) f -= ++r;  // tile f is (r, f) once f ≤ r
    rt[i] = r, ct[i] = f;
  }
  float pw[kMine][2][4];
#pragma unroll
  for (int i = 0; i < kMine; ++i) zero_frags(pw[i]);

  auto stage_of = [&](int64_t s) { return smem + (s & 1) * Lay::step; };
  auto planes = [&](int64_t s, size_t at) { return reinterpret_cast<bf16*>(stage_of(s) + at); };
  StatePlanes<kPC, kNT, kThreads, 2> hin, hout;  // the next step's, on their way
  auto issue = [&](int64_t s) {
    const int64_t j = gi * heads + s / pchunks, p0 = (s % pchunks) * kPC;
    load_step<kQ, kThreads>(stage_of(s), d, a, bi, j, p0, t0, L);
    cp_commit();
    const int64_t so = d.co(bi, j, c) + p0 * d.n + n0;
    hin.load(a.hin + so, d.n, tid);
    hout.load(a.dhout + so, d.n, tid);
  };
  auto land = [&](int64_t s) {
    hin.put(planes(s, Lay::hin), tid);
    hout.put(planes(s, Lay::hout), tid);
  };
  for_steps(steps, issue, [&](int64_t s) {
    unsigned char* st = stage_of(s);
    const auto [dys, xs, Ss, dls] = step_at<kQ>(st);
    // This thread's rows' e and f⊙Δ (as the generic kernel forms them).
    float e[2], fd[2];
    const double S_last = Ss[L - 1];
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int t = 16 * warp + g + 8 * hr;
      const bool ok = t < L;
      e[hr] = ok && docs[t] == doc_in ? float(exp(Ss[t])) : 0.f;
      fd[hr] = ok && docs[t] == doc_last ? float(exp(S_last - Ss[t]) * double(dls[t])) : 0.f;
    }
    uint32_t af[kPC / 16][4];
#pragma unroll
    for (int ks = 0; ks < kPC / 16; ++ks) ldsm_x4(af[ks], a_addr<kPC>(dys, 16 * warp, 2 * ks));
    gemm_state(accC, af, planes(s, Lay::hin), e);
#pragma unroll
    for (int ks = 0; ks < kPC / 16; ++ks) ldsm_x4(af[ks], a_addr<kPC>(xs, 16 * warp, 2 * ks));
    gemm_state(accB, af, planes(s, Lay::hout), fd);
    // PW += (dY·Xᵀ ⊙ W)·diag(Δ) on this warp's tiles.
#pragma unroll
    for (int i = 0; i < kMine; ++i) {
      if (warp + i * kT >= kTiles) break;
#pragma unroll
      for (int ks = 0; ks < kPC / 16; ++ks) ldsm_x4(af[ks], a_addr<kPC>(dys, 16 * rt[i], 2 * ks));
      float pm[2][4];
      tile_abt(pm, af, xs, 16 * ct[i]);
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        const int t = 16 * rt[i] + g + 8 * hr;
        const double St = Ss[t];
#pragma unroll
        for (int nh = 0; nh < 2; ++nh)
#pragma unroll
          for (int ee = 0; ee < 2; ++ee) {
            const int sc = 16 * ct[i] + 8 * nh + 2 * tq + ee;
            if (sc <= t && t < L && docs[sc] == docs[t])
              pw[i][nh][2 * hr + ee] += pm[nh][2 * hr + ee] * (decay<bf16>(St - Ss[sc]) * dls[sc]);
          }
      }
    }
  }, land);

  // Σ PW as hi/lo bf16 parts (its causal tiles), and this block's columns of B and C.
  bf16* pwh = reinterpret_cast<bf16*>(smem + Lay::pwh);
  bf16* pwl = reinterpret_cast<bf16*>(smem + Lay::pwl);
  bf16* bs = reinterpret_cast<bf16*>(smem + Lay::bs);
  bf16* cs = reinterpret_cast<bf16*>(smem + Lay::cs);
#pragma unroll
  for (int i = 0; i < kMine; ++i) {
    if (warp + i * kT >= kTiles) break;
#pragma unroll
    for (int nh = 0; nh < 2; ++nh)
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        const int t = 16 * rt[i] + g + 8 * hr, sc = 16 * ct[i] + 8 * nh + 2 * tq, at = swz<kQ>(t, sc >> 3) + (sc & 7);
        uint32_t hi, lo;
        split_bf16(pw[i][nh][2 * hr], pw[i][nh][2 * hr + 1], hi, lo);
        *reinterpret_cast<uint32_t*>(pwh + at) = hi;
        *reinterpret_cast<uint32_t*>(pwl + at) = lo;
      }
  }
  load_tile<kQ, kNT, kThreads>(bs, a.B + d.bco(bi, 0, gi) + n0, d.g * d.n, t0, t0 + L);
  load_tile<kQ, kNT, kThreads>(cs, a.C + d.bco(bi, 0, gi) + n0, d.g * d.n, t0, t0 + L);
  cp_commit();
  cp_wait<0>();
  __syncthreads();

  // dC rows of tile w: Σ_{s ≤ w} PW[w, s]·B[s]; dB rows of tile w: Σ_{t ≥ w} PW[t, w]ᵀ·C[t].
  for (int ss = 0; ss <= warp; ++ss) {
    uint32_t hi[4], lo[4];
    ldsm_x4(hi, a_addr<kQ>(pwh, 16 * warp, 2 * ss));
    ldsm_x4(lo, a_addr<kQ>(pwl, 16 * warp, 2 * ss));
    gemm_split_a<kNT>(accC, hi, lo, bs, 16 * ss);
  }
  for (int tt = warp; tt < kT; ++tt) {
    uint32_t hi[4], lo[4];
    ldsm_x4_t(hi, b_addr<kQ>(pwh, 16 * tt, 2 * warp));
    ldsm_x4_t(lo, b_addr<kQ>(pwl, 16 * tt, 2 * warp));
    gemm_split_a<kNT>(accB, hi, lo, cs, 16 * tt);
  }

  bf16* out = reinterpret_cast<bf16*>(smem + Lay::out);
  const float one[2] = {1.f, 1.f};
  const int64_t stride = d.g * d.n;
  store_rows<kNT>(accC, one, out, 16 * warp, a.dC + d.bco(bi, 0, gi) + n0, stride, t0 + 16 * warp, t0 + L);
  __syncwarp();
  store_rows<kNT>(accB, one, out, 16 * warp, a.dB + d.bco(bi, 0, gi) + n0, stride, t0 + 16 * warp, t0 + L);
}

}  // namespace

bool bc_mma_supported(const Dims& d, const BackwardArgs<bf16>& a) {
  return d.h > 0 && d.p > 0 && d.n > 0 && d.p % kPC == 0 && d.n % kNT == 0 && d.h % d.g == 0 &&
         aligned16(a.dy) && aligned16(a.x) && aligned16(a.B) && aligned16(a.C) && aligned16(a.dB) &&
         aligned16(a.dC) && aligned16(a.hin) && aligned16(a.dhout);
}

void launch_bc_mma(const Dims& d, const BackwardArgs<bf16>& a, cudaStream_t s) {
  const int64_t blocks = d.b * d.g * d.nc * (d.n / kNT);
  if (blocks == 0) return;
  with_chunk_tiles(d.Q, [&](auto kq) {
    constexpr int kQ = decltype(kq)::value;
    launch_big(bc_mma_kernel<kQ>, unsigned(blocks), BcMmaLayout<kQ>::kThreads, BcMmaLayout<kQ>::bytes, s, d, a);
  });
}

}  // namespace mambatron::cuda::ssd
