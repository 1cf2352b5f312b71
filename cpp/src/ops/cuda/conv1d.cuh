// Kernels of the CUDA causal depthwise conv1d (launched by conv1d.cu).
//
// Forward tiles: a block is kLanes threads across channels (V adjacent channels each,
// one vector access) times kFwdGroups threads across tokens; each thread walks
// kTokensPerThread consecutive tokens of one batch row, keeping the last w − 1 inputs
// in registers. With vector accesses (V > 1) the block first requests its whole tile
// of rows (with the halo of w − 1 tokens) into shared memory with cp.async, so that
// tens of kilobytes per SM are in flight at once, then the threads walk their tokens
// from there. The backward streams instead (see its section). Either way a tap at
// position s counts for token t when both have the same document id (s < 0: the
// initial state, which belongs to the row's first document), exactly as on the CPU.
// Backward writes partial sums of dweight/dbias per unit of tokens (f32, in a fixed
// order) that a second kernel adds in f64, unit by unit in order: no atomics, the same
// bits on every run.
#pragma once
#include <cstdint>

#include "async_copy.cuh"
#include "dense.cuh"

namespace mambatron::cuda::conv {

constexpr int kLanes = 32;
constexpr int kFwdGroups = 8;
constexpr int kTokensPerThread = 32;
constexpr unsigned kMaxUnits = 65535;  // grid.y; larger counts loop

__host__ __device__ constexpr int tile_tokens(int groups) { return groups * kTokensPerThread; }
__host__ __device__ inline int64_t tiles_per_row(int64_t l, int groups) {
  return l > 0 ? (l + tile_tokens(groups) - 1) / tile_tokens(groups) : 1;
}
// Ids kept per forward tile: tokens [t0 − (w−1), t0 + tile), then the row's first id.
__host__ __device__ constexpr int window_size(int w, int groups) { return tile_tokens(groups) + w - 1; }
// Bytes of the ids, rounded up so that what follows them is 16-byte aligned.
__host__ __device__ constexpr size_t ids_bytes(int w, int groups) {
  return (size_t(window_size(w, groups) + 1) * sizeof(int32_t) + 15) / 16 * 16;
}

template <class T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

// The V elements of r as f32, read as one access of the whole vector (bf16 pairs
// unpacked by shifts).
template <class T, int V>
__device__ __forceinline__ void unpack(const Vec<T, V>& r, float (&o)[V]) {
  constexpr int kWords = int(sizeof(Vec<T, V>) / 4);
  if constexpr (kWords == 0) {
    o[0] = to_f32(r.v[0]);
  } else {
    uint32_t w[kWords];
    if constexpr (kWords == 4) {
      const uint4 u = *reinterpret_cast<const uint4*>(&r);
      w[0] = u.x, w[1] = u.y, w[2] = u.z, w[3] = u.w;
    } else if constexpr (kWords == 2) {
      const uint2 u = *reinterpret_cast<const uint2*>(&r);
      w[0] = u.x, w[1] = u.y;
    } else {
      w[0] = *reinterpret_cast<const uint32_t*>(&r);
    }
#pragma unroll
    for (int j = 0; j < kWords; ++j) {
      if constexpr (sizeof(T) == 4) {
        o[j] = __uint_as_float(w[j]);
      } else {
        o[2 * j] = __uint_as_float(w[j] << 16);
        o[2 * j + 1] = __uint_as_float(w[j] & 0xffff0000u);
      }
    }
  }
}

template <class T, int V>
__device__ __forceinline__ void load_vec(const T* p, float (&o)[V]) {
  unpack<T, V>(*reinterpret_cast<const Vec<T, V>*>(p), o);
}

template <class T, int V>
__device__ __forceinline__ void store_vec(T* p, const float (&o)[V]) {
  Vec<T, V> r;
#pragma unroll
  for (int v = 0; v < V; ++v) r.v[v] = from_f32<T>(o[v]);
  *reinterpret_cast<Vec<T, V>*>(p) = r;
}

// 1 / (1 + 2^(−x·log2 e)) with the special-function unit's approximate ex2 and rcp
// (an ulp or two each) and no branch: e^(−x) overflows to inf for x < −88, giving 0.
__device__ __forceinline__ float sigmoid(float x) {
  float e, r;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(x * -1.4426950408889634f));
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(1.f + e));
  return r;
}

template <class T, class P>
struct ConvArgs {
  const T* x;
  const P* weight;
  const P* bias;       // may be null
  const T* init;       // [b, c, w−1], may be null
  const int32_t* seq;  // [b, l], may be null
  int64_t b, l, c;
  bool silu;
  T* out;                  // forward
  const T* dout;           // backward
  const T* dfinal;         // backward, may be null
  T* dx;                   // backward
  T* dinit;                // backward, may be null
  float* partial;          // backward: [units, w + 1, c]
  int seg;                 // backward: tokens per warp (bwd_segment)
  int64_t per_row, units;  // backward: units per row (bwd_units_per_row), units in all
};

// The ids of the block's tile of row i into sid (positions outside [0, l) read 0),
// then the row's first id (0 without seq_idx or tokens).
__device__ __forceinline__ void load_ids(const int32_t* seq, int64_t i, int64_t l, int64_t t0, int w, int32_t* sid) {
  const int n = window_size(w, blockDim.y), nthreads = blockDim.x * blockDim.y;
  for (int k = threadIdx.y * blockDim.x + threadIdx.x; k <= n; k += nthreads) {
    int32_t v = 0;
    if (seq && l > 0) {
      if (k < n) {
        const int64_t p = t0 - (w - 1) + k;
        if (p >= 0 && p < l) v = seq[i * l + p];
      } else {
        v = seq[i * l];
      }
    }
    sid[k] = v;
  }
}

// V adjacent elements at p (one vector access when V > 1), as f32.
template <class T, int V>
__device__ __forceinline__ void load_row(const T* p, float (&o)[V]) {
  if constexpr (V == 1) o[0] = to_f32(p[0]);
  else load_vec<T, V>(p, o);
}

// The input at position s of row i, channels ch0 ..: x for 0 <= s < l, the initial
// state for −(w−1) <= s < 0, zero elsewhere or without an initial state.
template <class T, class P, int W, int V>
__device__ __forceinline__ void load_input(const ConvArgs<T, P>& a, int64_t i, int64_t s, int64_t ch0, float (&o)[V]) {
  if (s >= 0 && s < a.l) {
    load_row<T, V>(a.x + (i * a.l + s) * a.c + ch0, o);
  } else {
#pragma unroll
    for (int v = 0; v < V; ++v)
      o[v] = (s < 0 && s >= -(W - 1) && a.init) ? to_f32(a.init[(i * a.c + ch0 + v) * (W - 1) + s + W - 1]) : 0.f;
  }
}

template <class T, int V>
__device__ __forceinline__ void store_row(T* p, const float (&o)[V]) {
  if constexpr (V == 1) p[0] = from_f32<T>(o[0]);
  else store_vec<T, V>(p, o);
}

template <class P, int W, int V>
__device__ __forceinline__ void load_params(const P* weight, const P* bias, int64_t ch0, bool active, float (&wr)[V][W],
                                            float (&br)[V]) {
#pragma unroll
  for (int v = 0; v < V; ++v) {
#pragma unroll
    for (int k = 0; k < W; ++k) wr[v][k] = active ? to_f32(weight[(ch0 + v) * W + k]) : 0.f;
    br[v] = active && bias ? to_f32(bias[ch0 + v]) : 0.f;
  }
}

// ---------------------------------------------------------------- forward
// Shared memory: the ids, then (V > 1) the staged inputs [tile + w − 1][kLanes], row r
// being position t0 − (w−1) + r.
template <class T, int W, int V>
__host__ __device__ constexpr size_t fwd_smem_bytes() {
  return ids_bytes(W, kFwdGroups) + (V > 1 ? size_t(tile_tokens(kFwdGroups) + W - 1) * kLanes * sizeof(Vec<T, V>) : 0);
}

template <class T, class P, int W, int V>
__global__ void __launch_bounds__(kLanes* kFwdGroups) conv_fwd_kernel(ConvArgs<T, P> a) {
  constexpr int kTile = tile_tokens(kFwdGroups);
  extern __shared__ float4 conv_smem[];
  int32_t* sid = reinterpret_cast<int32_t*>(conv_smem);
  Vec<T, V>* xs = reinterpret_cast<Vec<T, V>*>(reinterpret_cast<char*>(conv_smem) + ids_bytes(W, kFwdGroups));
  const int nwin = window_size(W, kFwdGroups);
  const int64_t ch0 = (int64_t(blockIdx.x) * kLanes + threadIdx.x) * V;
  const bool active = ch0 < a.c;
  float wr[V][W], br[V];
  load_params<P, W, V>(a.weight, a.bias, ch0, active, wr, br);
  const int64_t ntiles = tiles_per_row(a.l, kFwdGroups);
  for (int64_t unit = blockIdx.y; unit < a.b * ntiles; unit += gridDim.y) {
    const int64_t i = unit / ntiles, t0 = (unit % ntiles) * kTile;
    const int64_t base = t0 - (W - 1);  // position of sid[0] and of staged row 0
    __syncthreads();  // the previous tile's ids and inputs are no longer read
    load_ids(a.seq, i, a.l, t0, W, sid);
    if constexpr (V > 1) {
      if (active)
        for (int r = threadIdx.y; r < kTile + W - 1; r += kFwdGroups) {
          const int64_t s = base + r;
          const bool ok = s >= 0 && s < a.l;
          cp_async<int(sizeof(Vec<T, V>))>(xs + r * kLanes + threadIdx.x, a.x + (i * a.l + (ok ? s : 0)) * a.c + ch0,
                                           ok);
        }
      cp_commit();
      cp_wait_all();
    }
    __syncthreads();
    const int64_t tb = t0 + int64_t(threadIdx.y) * kTokensPerThread;
    const int64_t te = tb + kTokensPerThread < a.l ? tb + kTokensPerThread : a.l;
    if (!active || tb >= te) continue;
    // The input at position s (tb − (w−1) <= s < te).
    auto input = [&](int64_t s, float(&o)[V]) {
      if constexpr (V > 1)
        if (s >= 0) return unpack<T, V>(xs[(s - base) * kLanes + threadIdx.x], o);
      load_input<T, P, W, V>(a, i, s, ch0, o);
    };
    const int32_t first = sid[nwin];
    float win[W - 1][V];  // inputs at t − (w−1) .. t − 1
#pragma unroll
    for (int k = 0; k < W - 1; ++k) input(tb - (W - 1) + k, win[k]);
    for (int64_t t = tb; t < te; ++t) {
      float cur[V];
      input(t, cur);
      const int32_t id = sid[t - base];
      float acc[V];
#pragma unroll
      for (int v = 0; v < V; ++v) acc[v] = br[v];
#pragma unroll
      for (int k = 0; k < W - 1; ++k) {
        const int64_t s = t - (W - 1) + k;
        const bool same = (s >= 0 ? sid[s - base] : first) == id;
#pragma unroll
        for (int v = 0; v < V; ++v) acc[v] += same ? wr[v][k] * win[k][v] : 0.f;
      }
#pragma unroll
      for (int v = 0; v < V; ++v) {
        acc[v] += wr[v][W - 1] * cur[v];
        if (a.silu) acc[v] *= sigmoid(acc[v]);
      }
      store_row<T, V>(a.out + (i * a.l + t) * a.c + ch0, acc);
#pragma unroll
      for (int k = 0; k + 1 < W - 1; ++k)
#pragma unroll
        for (int v = 0; v < V; ++v) win[k][v] = win[k + 1][v];
#pragma unroll
      for (int v = 0; v < V; ++v) win[W - 2][v] = cur[v];
    }
  }
}

// final_state [b, c, w−1]: the inputs at l − (w−1) .. l − 1 that belong to the last
// document (the initial state's slots where the row is one document shorter than w−1).
template <class T>
__global__ void conv_final_state_kernel(const T* __restrict__ x, const T* __restrict__ init,
                                        const int32_t* __restrict__ seq, T* __restrict__ fin, int64_t b, int64_t l,
                                        int64_t c, int w) {
  const int64_t n = b * c * (w - 1);
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t ch = e % c, j = (e / c) % (w - 1), i = e / (c * (w - 1));
    const int64_t s = l - (w - 1) + j;
    const int32_t last = seq && l > 0 ? seq[i * l + l - 1] : 0;
    T v = cast_value<T>(0.f);
    if (s >= 0) {
      if (!seq || seq[i * l + s] == last) v = x[(i * l + s) * c + ch];
    } else if (init && (!seq || l == 0 || seq[i * l] == last)) {
      v = init[(i * c + ch) * (w - 1) + s + w - 1];
    }
    fin[(i * c + ch) * (w - 1) + j] = v;
  }
}

// ---------------------------------------------------------------- backward
// A block is kLanes threads across channels (V each) times kBwdWarps warps. A unit is
// kBwdWarps consecutive segments of `seg` tokens of one row; warp w walks segment w,
// tokens [tb, te). The walk steps t = tb .. te + w − 2: it recomputes the conv gradient
// dp at t (through the SiLU input, recomputed, when SiLU is on), adds t's dweight and
// dbias terms when t < te, and writes dx at s = t − (w−1) when s >= tb (at the row's
// start, d_initial_state for s < 0), keeping the last w − 1 inputs, dp values and
// document ids in registers. The w − 1 steps past te recompute dp that the next
// segment computes too.
// Loads: each warp streams its segment through a ring of kStages chunks of kChunk tokens
// of its own in shared memory (x and dout by cp.async, every lane its own V channels;
// the chunk's document ids), kStages − 1 chunks in flight while one is computed; no
// block barrier until the walk ends. V = 1 (rows not aligned for vectors) reads x and
// dout straight from global memory and stages only the ids.
// A chunk of the warp's own tokens, past its first w − 1 steps, that lies in one
// document with the w − 1 tokens before it runs without masks or bounds checks; the
// other chunks take the masked path, which gives the same bits where both apply.
// dweight/dbias: f32 per lane over its tokens in order, then the block's warps in order
// into partial[unit] (through the ring, no longer needed), then conv_param_finish_kernel.
constexpr int kBwdWarps = 4;
constexpr int kChunk = 4;  // tokens per cp.async group
constexpr int kMinSegment = 16, kMaxSegment = 256;

// Tokens per warp: kMaxSegment, halved (down to kMinSegment) while fewer than 2048
// warps of 128 channels would cover the tensor. From the shape alone, so that the
// order of the dweight sums, hence their bits, is the same on every GPU and for both
// vector widths.
inline int bwd_segment(int64_t b, int64_t l, int64_t c) {
  const int64_t channel_warps = (c + 127) / 128;
  int seg = kMaxSegment;
  while (seg > kMinSegment && b * ((l + seg - 1) / seg) * channel_warps < 2048) seg /= 2;
  return seg;
}
// Units of a row (one for an empty row, which still has d_initial_state to write).
inline int64_t bwd_units_per_row(int64_t l, int seg) {
  const int64_t span = int64_t(kBwdWarps) * seg;
  return l > 0 ? (l + span - 1) / span : 1;
}

// One warp's ring of kStages chunks (four of bf16, three of f32: four blocks per SM
// either way): per stage x and dout [kChunk][kLanes] vectors (V > 1) then kChunk ids;
// at least the warp's dweight/dbias sums [w + 1][kLanes·V] floats.
template <class T, int W, int V>
struct BwdRing {
  static constexpr int kStages = sizeof(T) == 2 ? 4 : 3;
  static constexpr size_t kVecs = V > 1 ? size_t(kChunk) * kLanes * sizeof(Vec<T, V>) : 0;  // x or dout
  static constexpr size_t kStage = 2 * kVecs + kChunk * sizeof(int32_t);
  static constexpr size_t kSums = size_t(W + 1) * kLanes * V * sizeof(float);
  static constexpr size_t kBytes = ((kStages * kStage > kSums ? kStages * kStage : kSums) + 15) / 16 * 16;
};
template <class T, int W, int V>
__host__ __device__ constexpr size_t bwd_smem_bytes() {
  return kBwdWarps * BwdRing<T, W, V>::kBytes;
}

template <class VT>
__device__ __forceinline__ void zero_vec(VT* p) {
  static_assert(sizeof(VT) == 8 || sizeof(VT) == 16, "staged vectors are 8 or 16 bytes");
  if constexpr (sizeof(VT) == 16) *reinterpret_cast<uint4*>(p) = make_uint4(0, 0, 0, 0);
  else *reinterpret_cast<uint2*>(p) = make_uint2(0, 0);
}

// Warp walk of row i, tokens [tb, te) (see above); adds this lane's dweight/dbias terms
// to dw and returns with no copy pending.
template <class T, class P, int W, int V, bool kSilu>
__device__ __forceinline__ void bwd_walk(const ConvArgs<T, P>& a, int64_t i, int64_t tb, int64_t te, int64_t ch0,
                                         const float (&wr)[V][W], const float (&br)[V], char* ring,
                                         float (&dw)[V][W + 1]) {
  using VT = Vec<T, V>;
  using R = BwdRing<T, W, V>;
  const int lane = threadIdx.x;
  const int64_t c = a.c;
  // Step q is token tb + q: the warp's own for q < n_own, inside the row for q < n_row.
  const int n_own = int(te - tb), n_step = n_own + W - 1;
  const int n_row = int(a.l - tb < n_step ? a.l - tb : n_step);
  const int32_t* seq = a.seq ? a.seq + i * a.l + tb : nullptr;  // ids from token tb
  const int32_t first = a.seq && a.l > 0 ? a.seq[i * a.l] : 0;
  const int64_t at = (i * a.l + tb) * c + ch0;          // element (tb, ch0) of row i
  const int64_t state = (i * c + ch0) * (W - 1);        // element (i, ch0, 0) of the states
  const T* xg = a.x + at;
  const T* gg = a.dout + at;
  T* dxg = a.dx + at;  // the next dx row to write

  float xw[W - 1][V], dpw[W - 1][V];  // inputs and dp at t − (w−1) .. t − 1
  int32_t idw[W - 1];                 // their ids (the first document's before the row)
#pragma unroll
  for (int j = 0; j < W - 1; ++j) {
    const int64_t s = tb - (W - 1) + j;
    load_input<T, P, W, V>(a, i, s, ch0, xw[j]);
#pragma unroll
    for (int v = 0; v < V; ++v) dpw[j][v] = 0.f;
    idw[j] = s < 0 ? first : seq ? seq[j - (W - 1)] : 0;
  }

  // Chunk n (steps n·kChunk ..) into its stage; zeros past the row.
  auto stage = [&](int n) {
    char* st = ring + (n % R::kStages) * R::kStage;
    const int q0 = n * kChunk, nv = n_row - q0;  // rows of the chunk inside the row
    if constexpr (V > 1) {
      constexpr int kB = int(sizeof(VT));
      VT* xs = reinterpret_cast<VT*>(st) + lane;
      VT* gs = xs + kChunk * kLanes;
      const T* xp = xg + q0 * c;
      const T* gp = gg + q0 * c;
      if (nv >= kChunk) {
#pragma unroll
        for (int k = 0; k < kChunk; ++k) {
          cp_async<kB>(xs + k * kLanes, xp + k * c);
          cp_async<kB>(gs + k * kLanes, gp + k * c);
        }
      } else if (nv > 0) {  // rows past the row's end read nothing (their address: row 0's) and fill zeros
#pragma unroll
        for (int k = 0; k < kChunk; ++k) {
          cp_async<kB>(xs + k * kLanes, xp + (k < nv ? k * c : 0), k < nv);
          cp_async<kB>(gs + k * kLanes, gp + (k < nv ? k * c : 0), k < nv);
        }
      } else {
#pragma unroll
        for (int k = 0; k < kChunk; ++k) {
          zero_vec(xs + k * kLanes);
          zero_vec(gs + k * kLanes);
        }
      }
    }
    if (seq && lane < kChunk) {
      int32_t* ids = reinterpret_cast<int32_t*>(st + 2 * R::kVecs);
      if (lane < nv) cp_async<4>(ids + lane, seq + q0 + lane);
      else ids[lane] = 0;
    }
  };

  // Step q = q0 + k from stage st; kMasked: with document masks and bounds checks.
  auto step = [&](const char* st, int q0, int k, auto masked) {
    constexpr bool kMasked = decltype(masked)::value;
    const int32_t* ids = reinterpret_cast<const int32_t*>(st + 2 * R::kVecs);
    const int q = q0 + k;
    float xt[V], g[V];
    if constexpr (V > 1) {
      const VT* xs = reinterpret_cast<const VT*>(st) + k * kLanes + lane;
      unpack<T, V>(xs[0], xt);
      unpack<T, V>(xs[kChunk * kLanes], g);  // dout follows x in the stage
    } else {
      const bool ok = !kMasked || q < n_row;
      xt[0] = ok ? to_f32(xg[q * c]) : 0.f;
      g[0] = ok ? to_f32(gg[q * c]) : 0.f;
    }
    const int32_t id = kMasked && seq ? ids[k] : 0;
    bool tap[W - 1];  // input t − (w−1) + j is in t's document
#pragma unroll
    for (int j = 0; j < W - 1; ++j) tap[j] = !kMasked || idw[j] == id;
    const bool in_row = !kMasked || q < n_row, own = !kMasked || q < n_own;
    float dp[V];
#pragma unroll
    for (int v = 0; v < V; ++v) {
      float x[W];
#pragma unroll
      for (int j = 0; j < W - 1; ++j) x[j] = tap[j] ? xw[j][v] : 0.f;
      x[W - 1] = xt[v];
      if constexpr (kSilu) {
        float pre = br[v];
#pragma unroll
        for (int j = 0; j < W; ++j) pre = fmaf(wr[v][j], x[j], pre);
        const float sg = sigmoid(pre), gs_ = g[v] * sg;
        dp[v] = fmaf(pre, fmaf(-gs_, sg, gs_), gs_);  // g·σ·(1 + pre·(1 − σ))
      } else {
        dp[v] = g[v];
      }
      if (!in_row) dp[v] = 0.f;
      if (own) {
#pragma unroll
        for (int j = 0; j < W; ++j) dw[v][j] = fmaf(dp[v], x[j], dw[v][j]);
        dw[v][W] += dp[v];
      }
    }
    // dx at s = t − (w−1): Σ_m weight[w−1−m] · dp[s + m] over s's document.
    const int s = q - (W - 1);
    if (!kMasked || s >= 0 || (a.dinit && tb == 0)) {
      const int32_t id_s = idw[0];
      bool from[W];  // dp at s + m counts
#pragma unroll
      for (int m = 0; m < W - 1; ++m) from[m] = !kMasked || idw[m] == id_s;
      from[W - 1] = !kMasked || id == id_s;
      float acc[V];
#pragma unroll
      for (int v = 0; v < V; ++v) {
        acc[v] = wr[v][W - 1] * dpw[0][v];
#pragma unroll
        for (int m = 1; m < W - 1; ++m) acc[v] = fmaf(wr[v][W - 1 - m], from[m] ? dpw[m][v] : 0.f, acc[v]);
        acc[v] = fmaf(wr[v][0], from[W - 1] ? dp[v] : 0.f, acc[v]);
      }
      // Inputs l − (w−1) .. l − 1 of the last document also feed final_state's slots.
      const int64_t slot = tb + s - (a.l - (W - 1));
      if (kMasked && a.dfinal && slot >= 0 && id_s == (seq && a.l > 0 ? seq[a.l - 1 - tb] : 0)) {
#pragma unroll
        for (int v = 0; v < V; ++v) acc[v] += to_f32(a.dfinal[state + v * (W - 1) + slot]);
      }
      if (!kMasked || s >= 0) {
        store_row<T, V>(dxg, acc);
        dxg += c;
      } else {
#pragma unroll
        for (int v = 0; v < V; ++v) a.dinit[state + v * (W - 1) + s + W - 1] = from_f32<T>(acc[v]);
      }
    }
#pragma unroll
    for (int j = 0; j + 1 < W - 1; ++j) {
      idw[j] = idw[j + 1];
#pragma unroll
      for (int v = 0; v < V; ++v) {
        xw[j][v] = xw[j + 1][v];
        dpw[j][v] = dpw[j + 1][v];
      }
    }
    if (kMasked) idw[W - 2] = id;  // unmasked chunks keep the one id they share
#pragma unroll
    for (int v = 0; v < V; ++v) {
      xw[W - 2][v] = xt[v];
      dpw[W - 2][v] = dp[v];
    }
  };

  const int n_chunks = (n_step + kChunk - 1) / kChunk;
#pragma unroll
  for (int n = 0; n < R::kStages - 1; ++n) {
    if (n < n_chunks) stage(n);
    cp_commit();
  }
  for (int n = 0; n < n_chunks; ++n) {
    __syncwarp();  // every lane is done with chunk n − 1, whose stage the next chunk takes
    if (n + R::kStages - 1 < n_chunks) stage(n + R::kStages - 1);
    cp_commit();
    cp_wait<R::kStages - 1>();  // chunk n has landed
    __syncwarp();               // and its ids are visible to every lane
    const char* st = ring + (n % R::kStages) * R::kStage;
    const int q0 = n * kChunk;
    bool plain = q0 >= W - 1 && q0 + kChunk <= n_own;
    if (plain && seq) {  // and one document from q0 − (w−1) to the chunk's end
      const int32_t* ids = reinterpret_cast<const int32_t*>(st + 2 * R::kVecs);
      bool same = true;
#pragma unroll
      for (int j = 1; j < W - 1; ++j) same = same && idw[j] == idw[0];
      plain = __all_sync(0xffffffffu, ids[lane % kChunk] == idw[0]) && same;
    }
    if (plain) {
#pragma unroll
      for (int k = 0; k < kChunk; ++k) step(st, q0, k, std::false_type{});
    } else {  // rare: not unrolled
#pragma unroll 1
      for (int k = 0; k < kChunk && q0 + k < n_step; ++k) step(st, q0, k, std::true_type{});
    }
  }
  cp_wait_all();
}

template <class T, class P, int W, int V, bool kSilu>
__global__ void __launch_bounds__(kLanes* kBwdWarps, 4) conv_bwd_kernel(ConvArgs<T, P> a) {
  using R = BwdRing<T, W, V>;
  constexpr int kRow = kLanes * V;  // channels of the block
  extern __shared__ float4 conv_smem[];
  char* const smem = reinterpret_cast<char*>(conv_smem);
  char* const ring = smem + threadIdx.y * R::kBytes;
  // Lanes past the last channel redo the last vector: the same values to the same
  // addresses; their sums are dropped.
  const int64_t lane_ch = (int64_t(blockIdx.x) * kLanes + threadIdx.x) * V;
  const int64_t ch0 = lane_ch < a.c ? lane_ch : a.c - V;
  float wr[V][W], br[V];
  load_params<P, W, V>(a.weight, a.bias, ch0, true, wr, br);
  for (int64_t unit = blockIdx.y; unit < a.units; unit += gridDim.y) {
    const int64_t i = unit / a.per_row, tb = ((unit % a.per_row) * kBwdWarps + threadIdx.y) * a.seg;
    float dw[V][W + 1];  // dweight terms, then dbias
#pragma unroll
    for (int v = 0; v < V; ++v)
#pragma unroll
      for (int k = 0; k <= W; ++k) dw[v][k] = 0.f;
    if (tb < a.l || (tb == 0 && a.dinit))
      bwd_walk<T, P, W, V, kSilu>(a, i, tb, tb + a.seg < a.l ? tb + a.seg : a.l, ch0, wr, br, ring, dw);
    // The warp's sums into its ring, then partial[unit] = the warps' sums in order.
    __syncwarp();
    float* sums = reinterpret_cast<float*>(ring);
#pragma unroll
    for (int k = 0; k <= W; ++k) {
      Vec<float, V> r;
#pragma unroll
      for (int v = 0; v < V; ++v) r.v[v] = dw[v][k];
      *reinterpret_cast<Vec<float, V>*>(sums + k * kRow + threadIdx.x * V) = r;
    }
    __syncthreads();
    for (int e = threadIdx.y * kLanes + threadIdx.x; e < (W + 1) * kRow; e += kLanes * kBwdWarps) {
      const int64_t ch = int64_t(blockIdx.x) * kRow + e % kRow;
      if (ch >= a.c) continue;
      float s = 0.f;
#pragma unroll
      for (int w = 0; w < kBwdWarps; ++w) s += reinterpret_cast<const float*>(smem + w * R::kBytes)[e];
      a.partial[(unit * (W + 1) + e / kRow) * a.c + ch] = s;
    }
    __syncthreads();  // the sums are read before the next unit's copies land
  }
}

// dweight[ch, k] (k < w) and dbias[ch] (k = w) = Σ over units of partial[unit, k, ch],
// in order, in f64.
template <class G>
__global__ void conv_param_finish_kernel(const float* __restrict__ partial, int64_t units, int64_t c, int w,
                                         G* __restrict__ dweight, G* __restrict__ dbias) {
  const int64_t n = int64_t(w + 1) * c;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k = e / c, ch = e % c;
    double s = 0;
    for (int64_t u = 0; u < units; ++u) s += double(partial[(u * (w + 1) + k) * c + ch]);
    if (k < w) dweight[ch * w + k] = cast_value<G>(s);
    else if (dbias) dbias[ch] = cast_value<G>(s);
  }
}

// ---------------------------------------------------------------- decode step
template <class T, class P>
__global__ void conv_step_kernel(const T* __restrict__ x, const P* __restrict__ weight, const P* __restrict__ bias,
                                 T* __restrict__ state, T* __restrict__ out, int64_t b, int64_t c, int w, bool silu) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < b * c; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t ch = e % c;
    T* st = state + e * (w - 1);
    const P* wc = weight + ch * w;
    const T xv = x[e];
    float acc = bias ? to_f32(bias[ch]) : 0.f;
    for (int k = 0; k < w - 1; ++k) acc += to_f32(wc[k]) * to_f32(st[k]);
    acc += to_f32(wc[w - 1]) * to_f32(xv);
    for (int k = 0; k + 1 < w - 1; ++k) st[k] = st[k + 1];
    st[w - 2] = xv;
    out[e] = from_f32<T>(silu ? acc * sigmoid(acc) : acc);
  }
}

}  // namespace mambatron::cuda::conv
