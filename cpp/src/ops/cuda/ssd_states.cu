// SSD stages that forward and backward share: the per-token scalars (Δ and the
// chunk-local cumulative sums S), and the state passed from chunk to chunk. The
// state pass fuses the chunk-state products with their sequential recurrence: one
// block owns a 64×64 tile of one head's state, keeps it in accumulator tiles, and
// walks the chunks, writing the state at each chunk boundary.
#include "ssd_common.cuh"

namespace mambatron::cuda::ssd {

DeltaOpt delta_opt(const SsdOptions& opt) {
  return {opt.dt_softplus, bool(opt.dt_min), bool(opt.dt_max), opt.dt_min.value_or(0.0), opt.dt_max.value_or(0.0)};
}

namespace {

// ---------------------------------------------------------------- per-token scalars
// One warp per (row, chunk, head); lane k owns R consecutive tokens of the chunk. S
// is the lane's own running sum plus the sums of the lanes before it (a fixed
// shuffle tree), in f64.
constexpr int kScalarWarps = 4;

template <class T>
__global__ void __launch_bounds__(kScalarWarps * 32)
    chunk_scalars_kernel(Dims d, const T* __restrict__ dt, const float* __restrict__ dt_bias,
                         const float* __restrict__ A, DeltaOpt o, float* __restrict__ delta, double* __restrict__ S) {
  const int lane = threadIdx.x & 31;
  // Grid-stride over the warps' work: grid_for caps the grid. The bound is per warp,
  // so every lane of a warp takes the same trips (the shuffles need all 32).
  for (int64_t id = blockIdx.x * int64_t(kScalarWarps) + (threadIdx.x >> 5); id < d.b * d.nc * d.h;
       id += int64_t(gridDim.x) * kScalarWarps) {
    const int64_t j = id % d.h, c = (id / d.h) % d.nc, bi = id / (d.h * d.nc);
    const int64_t t0 = c * d.Q;
    const int L = int(t0 + d.Q < d.l ? d.Q : d.l - t0), R = (L + 31) / 32;
    const double a = A[j], bias = dt_bias ? double(dt_bias[j]) : 0.0;
    constexpr int kMaxR = (kSsdMaxChunk + 31) / 32;
    double dl[kMaxR], own = 0;
#pragma unroll
    for (int k = 0; k < kMaxR; ++k) {
      const int t = lane * R + k;
      dl[k] = 0;
      if (k < R && t < L) {
        dl[k] = delta_of(double(to_f32(dt[d.dto(bi, t0 + t, j)])) + bias, o).value;
        own += dl[k] * a;
      }
    }
    double before = own;  // becomes the sum over lanes ≤ this one
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const double v = __shfl_up_sync(0xffffffffu, before, off);
      if (lane >= off) before += v;
    }
    const double prev = __shfl_up_sync(0xffffffffu, before, 1);
    double sum = lane > 0 ? prev : 0.0;
#pragma unroll
    for (int k = 0; k < kMaxR; ++k) {
      const int t = lane * R + k;
      if (k < R && t < L) {
        sum += dl[k] * a;
        delta[d.so(bi, j, t0 + t)] = float(dl[k]);
        S[d.so(bi, j, t0 + t)] = sum;
      }
    }
  }
}

// ---------------------------------------------------------------- K = C·Bᵀ per group
template <class T, int kQ>
struct CbLayout {
  static constexpr int kWarps = kQ / 16, kThreads = 32 * kWarps, kNK = 64;
  static constexpr int kTri = (kWarps * (kWarps + 1) / 2 + kWarps - 1) / kWarps;  // tiles per warp
  static constexpr int ld = pitch<T>(kNK);
  static constexpr size_t c = 0, b = align128(size_t(kQ) * ld * sizeof(T));
  static constexpr size_t bytes = b + align128(size_t(kQ) * ld * sizeof(T));
};

// One block per (row, chunk, group); the causal tiles go straight from the
// accumulators to global memory.
template <class T, int kQ>
__global__ void __launch_bounds__(CbLayout<T, kQ>::kThreads)
    chunk_cb_kernel(Dims d, const T* __restrict__ Cm, const T* __restrict__ Bm, float* __restrict__ K) {
  using Lay = CbLayout<T, kQ>;
  constexpr int kWarps = Lay::kWarps, kNK = Lay::kNK;
  extern __shared__ __align__(128) unsigned char smem[];
  const Smem<T> cs{reinterpret_cast<T*>(smem + Lay::c), Lay::ld, 0};
  const Smem<T> bs{reinterpret_cast<T*>(smem + Lay::b), Lay::ld, 0};
  const int warp = threadIdx.x >> 5;
  int64_t id = blockIdx.x;
  const int64_t gi = id % d.g;
  id /= d.g;
  const int64_t c = id % d.nc, bi = id / d.nc, t0 = c * d.Q;
  const int L = int(d.l - t0 < d.Q ? d.l - t0 : d.Q), Lt = (L + 15) / 16, Lp = 16 * Lt, ntri = Lt * (Lt + 1) / 2;
  Acc<T> acc[Lay::kTri];
#pragma unroll
  for (int q = 0; q < Lay::kTri; ++q) acc[q].zero();
  for (int64_t n0 = 0; n0 < d.n; n0 += kNK) {
    const int nk = int(d.n - n0 < kNK ? d.n - n0 : kNK), nks = (nk + 15) / 16, nkp = 16 * nks;
    __syncthreads();  // the previous chunk of n is no longer read
    const int64_t bc0 = d.bco(bi, t0, gi) + n0;
    stage_exact(cs, Cm + bc0, d.g * d.n, Lp, nkp, L, nk);
    stage_exact(bs, Bm + bc0, d.g * d.n, Lp, nkp, L, nk);
    __syncthreads();
    for_warp_tri_tiles<Lay::kTri, kWarps>(warp, ntri, [&](int q, int tt, int ss) {
      for (int ks = 0; ks < nks; ++ks) mma_tile<Row, Col, 1, 1>(acc[q], cs, 16 * tt, 16 * ks, bs, 16 * ks, 16 * ss);
    });
  }
  float* Kc = K + d.ko(bi, c, gi);
  for_warp_tri_tiles<Lay::kTri, kWarps>(warp, ntri, [&](int q, int tt, int ss) {
    acc[q].store(Kc + 16 * tt * kQ + 16 * ss, kQ);
  });
}

// ---------------------------------------------------------------- state pass
constexpr int kStateWarps = 8;            // warp w: rows 16·(w mod 4), columns 32·⌊w / 4⌋ of the tile
constexpr int kStateP = 64;               // state rows per block
constexpr int kStateN = 64;               // state columns per block
constexpr int kStateCols = 2;             // 16-column tiles per warp

// X·diag(scale) is split in three parts: the states feed f32 outputs.
template <class T, int kQ>
struct StateLayout {
  static constexpr int ldX = pitch<T>(kStateP), ldB = pitch<T>(kStateN), ldS = kStateN + 4;
  static constexpr size_t x = 0, b = operand_bytes<T, 3>(kQ, ldX);
  static constexpr size_t stage = b + align128(size_t(kQ) * ldB * sizeof(T));
  static constexpr size_t scale = stage + align128(size_t(kStateP) * ldS * sizeof(float));
  static constexpr size_t bytes = scale + align128(kQ * sizeof(float));
  static_assert(bytes <= kMaxSmem, "state pass: too much shared memory");
};

template <class T, int kQ, bool kReverse>
__global__ void __launch_bounds__(kStateWarps * 32, 2)
    state_pass_kernel(Dims d, const T* __restrict__ X, const T* __restrict__ Bm, const double* __restrict__ S,
                      const float* __restrict__ delta, const int32_t* __restrict__ seq, const float* __restrict__ init,
                      float* __restrict__ states, float* __restrict__ last) {
  using Lay = StateLayout<T, kQ>;
  extern __shared__ __align__(128) unsigned char smem[];
  const Smem<T> xs{reinterpret_cast<T*>(smem + Lay::x), Lay::ldX, part_stride<T>(kQ, Lay::ldX)};
  const Smem<T> bs{reinterpret_cast<T*>(smem + Lay::b), Lay::ldB, 0};
  float* stage = reinterpret_cast<float*>(smem + Lay::stage);
  float* scale = reinterpret_cast<float*>(smem + Lay::scale);
  const int tid = threadIdx.x, warp = tid >> 5, rs = warp % 4, cs = 2 * (warp / 4);  // row strip, first column tile
  constexpr int kThreads = kStateWarps * 32;

  const int64_t ptiles = (d.p + kStateP - 1) / kStateP, ntiles = (d.n + kStateN - 1) / kStateN;
  int64_t id = blockIdx.x;
  const int64_t nt = id % ntiles;
  id /= ntiles;
  const int64_t pt = id % ptiles;
  id /= ptiles;
  const int64_t j = id % d.h, bi = id / d.h, gi = d.group(j);
  const int64_t i0 = pt * kStateP, k0 = nt * kStateN;
  const int valid_p = int(d.p - i0 < kStateP ? d.p - i0 : kStateP);
  const int valid_n = int(d.n - k0 < kStateN ? d.n - k0 : kStateN);
  // Whole tiles whose rows start 32-byte aligned go from the accumulators straight to
  // global memory; the others through `stage`.
  const bool direct = valid_p == kStateP && valid_n == kStateN && d.n % 8 == 0;

  // The state tile through `stage`, from or to [p, n] memory at `base` (rows of n).
  auto stage_in = [&](const float* base) {
    for (int e = tid; e < kStateP * kStateN; e += kThreads) {
      const int r = e / kStateN, cc = e % kStateN;
      const int64_t i = i0 + r, k = k0 + cc;
      stage[r * Lay::ldS + cc] = (base && i < d.p && k < d.n) ? base[i * d.n + k] : 0.f;
    }
  };
  auto stage_out = [&](float* base) {
    for (int e = tid; e < kStateP * kStateN; e += kThreads) {
      const int r = e / kStateN, cc = e % kStateN;
      const int64_t i = i0 + r, k = k0 + cc;
      if (i < d.p && k < d.n) base[i * d.n + k] = stage[r * Lay::ldS + cc];
    }
  };
  float* const my_stage = stage + 16 * rs * Lay::ldS + 16 * cs;

  // What one chunk step reads, loaded a step ahead: X and B, and this thread's
  // token (S, Δ, document id; one token a thread, kQ ≤ kThreads).
  static_assert(kQ <= kThreads, "state pass: one token a thread");
  RegBlock<T, kQ, kStateP, kThreads> xr;
  RegBlock<T, kQ, kStateN, kThreads> br;
  auto chunk_of = [&](int64_t step) { return kReverse ? d.nc - 1 - step : step; };
  struct Ahead {
    double S_last, St;
    float dl;
    int L, doc_in, doc_last, doc;
  } ah;
  auto load_step = [&](int64_t step) {
    const int64_t t0 = chunk_of(step) * d.Q, rest = d.l - t0;
    ah.L = int(rest < d.Q ? rest : d.Q);
    ah.doc_in = doc_at(seq, d, bi, t0 > 0 ? t0 - 1 : 0);
    ah.doc_last = doc_at(seq, d, bi, t0 + ah.L - 1);
    ah.S_last = S[d.so(bi, j, t0 + ah.L - 1)];
    const int64_t tok = t0 + (tid < ah.L ? tid : 0);
    ah.St = S[d.so(bi, j, tok)];
    ah.dl = delta[d.so(bi, j, tok)];
    ah.doc = doc_at(seq, d, bi, tok);
    xr.load(X + d.xo(bi, t0, j) + i0, d.h * d.p, ah.L, valid_p);
    br.load(Bm + d.bco(bi, t0, gi) + k0, d.g * d.n, ah.L, valid_n);
  };

  Acc<T> acc[kStateCols];
  if (d.nc > 0) load_step(0);
  stage_in(init ? init + d.sto(bi, j) : nullptr);
  __syncthreads();
#pragma unroll
  for (int ct = 0; ct < kStateCols; ++ct) acc[ct].load(my_stage + 16 * ct, Lay::ldS);

  // Two barriers a step: every warp reaches the first only after its products of the
  // previous step, so xs, bs and stage are free after it; scale and stage are read
  // before the second.
  for (int64_t step = 0; step < d.nc; ++step) {
    float* const out = states + d.co(bi, j, chunk_of(step));
    if (direct) {
#pragma unroll
      for (int ct = 0; ct < kStateCols; ++ct)
        acc[ct].store(out + (i0 + 16 * rs) * d.n + k0 + 16 * (cs + ct), int(d.n));
    } else {
#pragma unroll
      for (int ct = 0; ct < kStateCols; ++ct) acc[ct].store(my_stage + 16 * ct, Lay::ldS);
    }
    // Row scale of X: f⊙Δ forward, e backward.
    if (tid < kQ) {
      double v = 0.0;
      if (tid < ah.L) {
        if (kReverse) v = ah.doc == ah.doc_in ? exp(ah.St) : 0.0;
        else v = ah.doc == ah.doc_last ? exp(ah.S_last - ah.St) * double(ah.dl) : 0.0;
      }
      scale[tid] = float(v);
    }
    __syncthreads();
    if (!direct) stage_out(out);
    xr.put([&](int t, int r, const Pack<T>& v) {
      float f[Pack<T>::N];
#pragma unroll
      for (int k = 0; k < Pack<T>::N; ++k) f[k] = to_f32(v.v[k]) * scale[t];
      put_split_vec<3>(xs, t * Lay::ldX + r, f);
    });
    br.put_exact(bs);
    // This step's decay and length, then the next step's loads (they land while the
    // products below run).
    const float E = ah.doc_last == ah.doc_in ? float(exp(ah.S_last)) : 0.f;
    const int Lt = (ah.L + 15) / 16;
    if (step + 1 < d.nc) load_step(step + 1);
    __syncthreads();
#pragma unroll
    for (int ct = 0; ct < kStateCols; ++ct) acc[ct].scale(E);
    for (int ks = 0; ks < Lt; ++ks) mma_strip<Col, Row, 3>(acc, xs, 16 * rs, 16 * ks, bs, 16 * ks, 16 * cs);
  }
  if (!last) return;
  __syncthreads();
#pragma unroll
  for (int ct = 0; ct < kStateCols; ++ct) acc[ct].store(my_stage + 16 * ct, Lay::ldS);
  __syncthreads();
  stage_out(last + d.sto(bi, j));
}

}  // namespace

template <class T>
void launch_chunk_scalars(const Dims& d, const T* dt, const float* dt_bias, const float* A, const DeltaOpt& o,
                          float* delta, double* S, cudaStream_t s) {
  const int64_t warps = d.b * d.nc * d.h;
  if (warps == 0) return;
  chunk_scalars_kernel<T><<<grid_for(warps, kScalarWarps), kScalarWarps * 32, 0, s>>>(d, dt, dt_bias, A, o, delta, S);
  MT_CUDA_LAUNCH_CHECK();
}

template <class T>
void launch_chunk_cb(const Dims& d, const T* C, const T* B, float* K, cudaStream_t s) {
  const int64_t blocks = d.b * d.nc * d.g;
  if (blocks == 0) return;
  with_chunk_tiles(d.Q, [&](auto kq) {
    constexpr int kQ = decltype(kq)::value;
    using Lay = CbLayout<T, kQ>;
    launch_big(chunk_cb_kernel<T, kQ>, unsigned(blocks), Lay::kThreads, Lay::bytes, s, d, C, B, K);
  });
}

template <class T>
void launch_state_pass(const Dims& d, bool reverse, const T* X, const T* Bm, const float* delta, const double* S,
                       const int32_t* seq, const float* init, float* states, float* last, cudaStream_t s) {
  const int64_t blocks = d.b * d.h * ((d.p + kStateP - 1) / kStateP) * ((d.n + kStateN - 1) / kStateN);
  if (blocks == 0) return;
  with_chunk_tiles(d.Q, [&](auto kq) {
    constexpr int kQ = decltype(kq)::value;
    const size_t bytes = StateLayout<T, kQ>::bytes;
    auto kernel = reverse ? state_pass_kernel<T, kQ, true> : state_pass_kernel<T, kQ, false>;
    launch_big(kernel, unsigned(blocks), kStateWarps * 32, bytes, s, d, X, Bm, S, delta, seq, init, states, last);
  });
}

template void launch_chunk_scalars<float>(const Dims&, const float*, const float*, const float*, const DeltaOpt&,
                                          float*, double*, cudaStream_t);
template void launch_chunk_scalars<bf16>(const Dims&, const bf16*, const float*, const float*, const DeltaOpt&,
                                         float*, double*, cudaStream_t);
template void launch_chunk_cb<float>(const Dims&, const float*, const float*, float*, cudaStream_t);
template void launch_chunk_cb<bf16>(const Dims&, const bf16*, const bf16*, float*, cudaStream_t);
template void launch_state_pass<float>(const Dims&, bool, const float*, const float*, const float*, const double*,
                                       const int32_t*, const float*, float*, float*, cudaStream_t);
template void launch_state_pass<bf16>(const Dims&, bool, const bf16*, const bf16*, const float*, const double*,
                                      const int32_t*, const float*, float*, float*, cudaStream_t);

}  // namespace mambatron::cuda::ssd
