// SSD stages that forward and backward share: the per-token scalars (Δ and the
// chunk-local cumulative sums S), and the state passed from chunk to chunk. Where the
// mma.sync kernel applies (ssd_chunk_state_mma.cu) one launch makes each chunk's own
// state and hands the carry from chunk to chunk. Here, for the rest, the state pass
// runs in two kernels: each chunk's own state, parallel over (row, chunk, head, tile),
// then the recurrence over chunks, which is elementwise and bandwidth-bound, in place
// in the same scratch. (One sequential block per state tile walking the chunks left
// every step waiting on the one before it: latency-bound at ~0.2 TB/s.)
#include "ssd_mma.cuh"

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

// ---------------------------------------------------------------- chunk states
// The state one chunk contributes on its own, G_c = Xᵀ·diag(scale)·B over the chunk's
// tokens, one block per (row, chunk, head, 64×64 state tile): no chunk waits for
// another. scale is f⊙Δ forward (the tokens of the chunk's last document, decayed to
// its end) and e backward (those of its first document, decayed from its start).
constexpr int kStateWarps = 8;  // warp w: rows 16·(w mod 4), columns 32·⌊w / 4⌋ of the tile
constexpr int kStateP = 64;     // state rows per block
constexpr int kStateN = 64;     // state columns per block
constexpr int kStateCols = 2;   // 16-column tiles per warp
constexpr int kStateThreads = kStateWarps * 32;

// X·diag(scale) is split in three parts: the states feed f32 outputs. Tiles that
// cannot go straight to global memory pass through `stage`, which reuses X's space
// once the products are done.
template <class T, int kQ>
struct ChunkStateLayout {
  static constexpr int ldX = pitch<T>(kStateP), ldB = pitch<T>(kStateN), ldS = kStateN + 4;
  static constexpr size_t x = 0, stage = 0, b = operand_bytes<T, 3>(kQ, ldX);
  static constexpr size_t scale = b + align128(size_t(kQ) * ldB * sizeof(T));
  static constexpr size_t bytes = scale + align128(kQ * sizeof(float));
  // Three blocks per SM at bf16 (≤ 75 KB each): one block's loads overlap the others'
  // products. The f32 form keeps its registers.
  static constexpr int kMinBlocks = kTensorCores<T> && bytes <= 75 * 1024 ? 3 : 2;
  static_assert(size_t(kStateP) * ldS * sizeof(float) <= b, "chunk states: stage does not fit in X's space");
  static_assert(bytes <= kMaxSmem, "chunk states: too much shared memory");
};

template <class T, int kQ, bool kReverse>
__global__ void __launch_bounds__(kStateThreads, ChunkStateLayout<T, kQ>::kMinBlocks)
    chunk_state_kernel(Dims d, const T* __restrict__ X, const T* __restrict__ Bm, const double* __restrict__ S,
                       const float* __restrict__ delta, const int32_t* __restrict__ seq, float* __restrict__ states) {
  using Lay = ChunkStateLayout<T, kQ>;
  extern __shared__ __align__(128) unsigned char smem[];
  const Smem<T> xs{reinterpret_cast<T*>(smem + Lay::x), Lay::ldX, part_stride<T>(kQ, Lay::ldX)};
  const Smem<T> bs{reinterpret_cast<T*>(smem + Lay::b), Lay::ldB, 0};
  float* stage = reinterpret_cast<float*>(smem + Lay::stage);
  float* scale = reinterpret_cast<float*>(smem + Lay::scale);
  const int tid = threadIdx.x, warp = tid >> 5, rs = warp % 4, cs = 2 * (warp / 4);  // row strip, first column tile

  // Heads of a group and the n-tiles of a head are adjacent in the grid, so B and X
  // are read from DRAM about once.
  const int64_t ptiles = (d.p + kStateP - 1) / kStateP, ntiles = (d.n + kStateN - 1) / kStateN;
  int64_t id = blockIdx.x;
  const int64_t nt = id % ntiles;
  id /= ntiles;
  const int64_t pt = id % ptiles;
  id /= ptiles;
  const int64_t j = id % d.h;
  id /= d.h;
  const int64_t c = id % d.nc, bi = id / d.nc, gi = d.group(j);
  const int64_t i0 = pt * kStateP, k0 = nt * kStateN;
  const int valid_p = int(d.p - i0 < kStateP ? d.p - i0 : kStateP);
  const int valid_n = int(d.n - k0 < kStateN ? d.n - k0 : kStateN);
  const Chunk ch = make_chunk(d, S, seq, bi, j, c);

  // All global loads first (B straight into shared memory, X into registers, this
  // thread's token), so that they wait together.
  static_assert(kQ <= kStateThreads, "chunk states: one token a thread");
  constexpr int V = Pack<T>::N, kGroups = kStateN / V;
  const T* const bsrc = Bm + d.bco(bi, ch.t0, gi) + k0;
  const int64_t bstride = d.g * d.n;
  const bool b_async =
      valid_n % V == 0 && reinterpret_cast<uintptr_t>(bsrc) % 16 == 0 && (bstride * sizeof(T)) % 16 == 0;
  if (b_async) {
    for (int e = tid; e < kQ * kGroups; e += kStateThreads) {
      const int t = e / kGroups, cc = (e - t * kGroups) * V;
      const bool ok = t < ch.L && cc < valid_n;  // else zeros, and the address stays inside B
      cp_async<16>(bs.p + t * Lay::ldB + cc, bsrc + (ok ? t * bstride + cc : 0), ok);
    }
    cp_commit();
  }
  RegBlock<T, kQ, kStateP, kStateThreads> xr;
  xr.load(X + d.xo(bi, ch.t0, j) + i0, d.h * d.p, ch.L, valid_p);
  if (tid < kQ) scale[tid] = state_scale<kReverse>(d, S, delta, seq, ch, tid);
  __syncthreads();
  xr.put([&](int t, int r, const Pack<T>& v) {
    float f[Pack<T>::N];
#pragma unroll
    for (int k = 0; k < Pack<T>::N; ++k) f[k] = to_f32(v.v[k]) * scale[t];
    put_split_vec<3>(xs, t * Lay::ldX + r, f);
  });
  if (b_async) cp_wait_all();
  else stage_exact(bs, bsrc, bstride, 16 * ch.Lt, kStateN, ch.L, valid_n);
  __syncthreads();

  Acc<T> acc[kStateCols];
#pragma unroll
  for (int ct = 0; ct < kStateCols; ++ct) acc[ct].zero();
  for (int ks = 0; ks < ch.Lt; ++ks) mma_strip<Col, Row, 3>(acc, xs, 16 * rs, 16 * ks, bs, 16 * ks, 16 * cs);

  // Whole tiles whose rows start 32-byte aligned go from the accumulators straight to
  // global memory; the others through `stage`.
  float* const out = states + d.co(bi, j, c);
  if (valid_p == kStateP && valid_n == kStateN && d.n % 8 == 0) {
#pragma unroll
    for (int ct = 0; ct < kStateCols; ++ct)
      acc[ct].store(out + (i0 + 16 * rs) * d.n + k0 + 16 * (cs + ct), int(d.n));
    return;
  }
  __syncthreads();  // X's space becomes the stage
#pragma unroll
  for (int ct = 0; ct < kStateCols; ++ct) acc[ct].store(stage + 16 * rs * Lay::ldS + 16 * (cs + ct), Lay::ldS);
  __syncthreads();
  for (int e = tid; e < valid_p * kStateN; e += kStateThreads) {
    const int r = e / kStateN, cc = e % kStateN;
    if (cc < valid_n) out[(i0 + r) * d.n + k0 + cc] = stage[r * Lay::ldS + cc];
  }
}

// ---------------------------------------------------------------- state carry
// The recurrence over chunks, elementwise and in place: slot c holds G_c on entry and
// leaves with the state passed into chunk c (forward: entering it; reverse: leaving
// it), carry ← E_c·carry + G_c, from `init` (or 0); `last` gets the carry at the end.
// E_c = exp(S_last)·[doc_last = doc_in] cuts the carry where a document starts inside
// or at the start of chunk c. One thread owns V consecutive elements of one (row, head)
// state and walks the chunks with its next two chunk states already loading; a block
// computes the decays of kCarryThreads chunks at a time into shared memory.
constexpr int kCarryThreads = 256;

template <int V, bool kReverse>
__global__ void __launch_bounds__(kCarryThreads)
    state_carry_kernel(Dims d, const double* __restrict__ S, const int32_t* __restrict__ seq,
                       const float* __restrict__ init, float* __restrict__ states, float* __restrict__ last) {
  struct alignas(4 * V) Vec {
    float v[V];
  };
  __shared__ float Es[kCarryThreads];
  const int tid = threadIdx.x;
  const int64_t pn = d.p * d.n, per_head = (pn + kCarryThreads * V - 1) / (kCarryThreads * V);
  const int64_t head = blockIdx.x / per_head, bi = head / d.h, j = head % d.h;
  const int64_t e0 = (blockIdx.x % per_head * kCarryThreads + tid) * V;
  const bool active = e0 < pn;  // pn is a multiple of V
  auto chunk_of = [&](int64_t step) { return kReverse ? d.nc - 1 - step : step; };
  auto slot = [&](int64_t step) { return reinterpret_cast<Vec*>(states + d.co(bi, j, chunk_of(step)) + e0); };

  Vec carry{}, cur{}, nxt{};
  if (active) {
    if (init) carry = *reinterpret_cast<const Vec*>(init + d.sto(bi, j) + e0);
    if (d.nc > 0) cur = *slot(0);
    if (d.nc > 1) nxt = *slot(1);
  }
  for (int64_t b0 = 0; b0 < d.nc; b0 += kCarryThreads) {
    const int nb = int(d.nc - b0 < kCarryThreads ? d.nc - b0 : kCarryThreads);
    __syncthreads();  // the previous batch's decays are read
    if (tid < nb) {
      const int64_t t0 = chunk_of(b0 + tid) * d.Q, tl = (t0 + d.Q < d.l ? t0 + d.Q : d.l) - 1;
      const int doc_in = doc_at(seq, d, bi, t0 > 0 ? t0 - 1 : 0), doc_last = doc_at(seq, d, bi, tl);
      Es[tid] = doc_last == doc_in ? float(exp(S[d.so(bi, j, tl)])) : 0.f;
    }
    __syncthreads();
    if (!active) continue;
    for (int k = 0; k < nb; ++k) {
      const int64_t step = b0 + k;
      Vec after{};
      if (step + 2 < d.nc) after = *slot(step + 2);
      *slot(step) = carry;
      const float E = Es[k];
#pragma unroll
      for (int u = 0; u < V; ++u) carry.v[u] = fmaf(E, carry.v[u], cur.v[u]);
      cur = nxt;
      nxt = after;
    }
  }
  if (active && last) *reinterpret_cast<Vec*>(last + d.sto(bi, j) + e0) = carry;
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
                       const int32_t* seq, const float* init, float* states, float* last, int32_t* sync,
                       cudaStream_t s) {
  if constexpr (kTensorCores<T>) {
    if (chunk_state_mma_supported(d, X, Bm, init, states, last)) {
      launch_chunk_state_mma(d, reverse, X, Bm, delta, S, seq, init, states, last, sync, s);
      return;
    }
  }
  const int64_t ptiles = (d.p + kStateP - 1) / kStateP, ntiles = (d.n + kStateN - 1) / kStateN;
  const int64_t chunk_blocks = d.b * d.nc * d.h * ptiles * ntiles;
  if (chunk_blocks > 0) {
    with_chunk_tiles(d.Q, [&](auto kq) {
      constexpr int kQ = decltype(kq)::value;
      auto kernel = reverse ? chunk_state_kernel<T, kQ, true> : chunk_state_kernel<T, kQ, false>;
      launch_big(kernel, unsigned(chunk_blocks), kStateThreads, ChunkStateLayout<T, kQ>::bytes, s, d, X, Bm, S, delta,
                 seq, states);
    });
  }
  // The carry runs even without chunks: `last` is then `init` (or 0).
  const int64_t pn = d.p * d.n;
  auto aligned = [](const float* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  const bool vec = pn % 4 == 0 && aligned(states) && (!init || aligned(init)) && (!last || aligned(last));
  auto carry = [&](auto v) {
    constexpr int V = decltype(v)::value;
    const int64_t blocks = d.b * d.h * ((pn + kCarryThreads * V - 1) / (kCarryThreads * V));
    if (blocks == 0) return;
    auto kernel = reverse ? state_carry_kernel<V, true> : state_carry_kernel<V, false>;
    kernel<<<unsigned(blocks), kCarryThreads, 0, s>>>(d, S, seq, init, states, last);
    MT_CUDA_LAUNCH_CHECK();
  };
  if (vec) carry(std::integral_constant<int, 4>{});
  else carry(std::integral_constant<int, 1>{});
}

template void launch_chunk_scalars<float>(const Dims&, const float*, const float*, const float*, const DeltaOpt&,
                                          float*, double*, cudaStream_t);
template void launch_chunk_scalars<bf16>(const Dims&, const bf16*, const float*, const float*, const DeltaOpt&,
                                         float*, double*, cudaStream_t);
template void launch_chunk_cb<float>(const Dims&, const float*, const float*, float*, cudaStream_t);
template void launch_chunk_cb<bf16>(const Dims&, const bf16*, const bf16*, float*, cudaStream_t);
template void launch_state_pass<float>(const Dims&, bool, const float*, const float*, const float*, const double*,
                                       const int32_t*, const float*, float*, float*, int32_t*, cudaStream_t);
template void launch_state_pass<bf16>(const Dims&, bool, const bf16*, const bf16*, const float*, const double*,
                                      const int32_t*, const float*, float*, float*, int32_t*, cudaStream_t);

}  // namespace mambatron::cuda::ssd
