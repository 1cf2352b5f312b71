// Kernels of the CUDA causal depthwise conv1d (launched by conv1d.cu).
//
// Tiles: a block is kLanes threads across channels (V adjacent channels each, one
// vector access) times G threads across tokens (kFwdGroups or kBwdGroups); each thread
// walks kTokensPerThread consecutive tokens of one batch row, keeping the last w − 1
// inputs (and in backward the last w gradients of the conv) in registers. With vector
// accesses (V > 1) the block first requests its whole tile of rows (with the halo of
// w − 1 tokens) into shared memory with cp.async, so that tens of kilobytes per SM are
// in flight at once, then the threads walk their tokens from there. The tile's document
// ids sit in shared memory; a tap at position s counts for token t when both lie in the
// same document (s < 0: the initial state, which belongs to the row's first document),
// exactly as on the CPU. Backward writes per-block partial sums of dweight/dbias (f32,
// tokens in order, then the token groups in order) that a second kernel adds in f64,
// block by block in order: no atomics, the same bits on every run.
#pragma once
#include <cstdint>

#include "async_copy.cuh"
#include "dense.cuh"

namespace mambatron::cuda::conv {

constexpr int kLanes = 32;
constexpr int kFwdGroups = 8;
constexpr int kBwdGroups = 4;  // the backward stages x and dout: half the tokens per block
constexpr int kTokensPerThread = 32;
constexpr unsigned kMaxUnits = 65535;  // grid.y; larger counts loop

__host__ __device__ constexpr int tile_tokens(int groups) { return groups * kTokensPerThread; }
__host__ __device__ inline int64_t tiles_per_row(int64_t l, int groups) {
  return l > 0 ? (l + tile_tokens(groups) - 1) / tile_tokens(groups) : 1;
}
// Ids kept per tile: tokens [t0 − (w−1), t0 + tile + w − 1), then the row's first and last id.
__host__ __device__ constexpr int window_size(int w, int groups) { return tile_tokens(groups) + 2 * (w - 1); }
// Bytes of the ids, rounded up so that what follows them is 16-byte aligned.
__host__ __device__ constexpr size_t ids_bytes(int w, int groups) {
  return (size_t(window_size(w, groups) + 2) * sizeof(int32_t) + 15) / 16 * 16;
}

template <class T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

template <class T, int V>
__device__ __forceinline__ void unpack(const Vec<T, V>& r, float (&o)[V]) {
#pragma unroll
  for (int v = 0; v < V; ++v) o[v] = to_f32(r.v[v]);
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

// Branch-free: e^(−x) overflows to inf for x < −88, giving 0 as it should.
__device__ __forceinline__ float sigmoid(float x) { return __frcp_rn(1.f + __expf(-x)); }

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
};

// The ids of the block's tile of row i into sid (positions outside [0, l) read 0),
// then the row's first and last ids (0 and 0 without seq_idx or tokens).
__device__ __forceinline__ void load_ids(const int32_t* seq, int64_t i, int64_t l, int64_t t0, int w, int32_t* sid) {
  const int n = window_size(w, blockDim.y), nthreads = blockDim.x * blockDim.y;
  for (int k = threadIdx.y * blockDim.x + threadIdx.x; k < n + 2; k += nthreads) {
    int32_t v = 0;
    if (seq && l > 0) {
      if (k < n) {
        const int64_t p = t0 - (w - 1) + k;
        if (p >= 0 && p < l) v = seq[i * l + p];
      } else {
        v = seq[i * l + (k == n ? 0 : l - 1)];
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
// Thread (lane, group) of the block of tile t0 owns tokens [tb, te): it adds their
// dweight/dbias terms and writes dx there (and d_initial_state when it starts the
// row). dx[s] needs the conv gradient dp at s .. s + w − 1, so the walk runs w − 1
// tokens past te and recomputes dp there.
// Shared memory: the block's sums [G][w + 1][kLanes·V] floats, the ids, then (V > 1) the
// staged x [tile + 2(w−1)][kLanes] (row r: position t0 − (w−1) + r) and dout
// [tile + w − 1][kLanes] (row r: position t0 + r).
template <class T, int W, int V>
__host__ __device__ constexpr size_t bwd_smem_bytes() {
  constexpr int kTile = tile_tokens(kBwdGroups);
  return size_t(kBwdGroups) * (W + 1) * kLanes * V * sizeof(float) + ids_bytes(W, kBwdGroups) +
         (V > 1 ? size_t(2 * kTile + 3 * (W - 1)) * kLanes * sizeof(Vec<T, V>) : 0);
}

template <class T, class P, int W, int V>
__global__ void __launch_bounds__(kLanes* kBwdGroups) conv_bwd_kernel(ConvArgs<T, P> a) {
  constexpr int kTile = tile_tokens(kBwdGroups), kXRows = kTile + 2 * (W - 1), kGRows = kTile + W - 1;
  extern __shared__ float4 conv_smem[];
  constexpr int kRow = kLanes * V;                   // channels of the block
  float* red = reinterpret_cast<float*>(conv_smem);  // [kBwdGroups][W + 1][kRow]
  int32_t* sid = reinterpret_cast<int32_t*>(red + kBwdGroups * (W + 1) * kRow);
  Vec<T, V>* xs = reinterpret_cast<Vec<T, V>*>(reinterpret_cast<char*>(sid) + ids_bytes(W, kBwdGroups));
  Vec<T, V>* gs = xs + kXRows * kLanes;
  const int nwin = window_size(W, kBwdGroups);
  const int64_t ch0 = (int64_t(blockIdx.x) * kLanes + threadIdx.x) * V;
  const bool active = ch0 < a.c;
  float wr[V][W], br[V];
  load_params<P, W, V>(a.weight, a.bias, ch0, active, wr, br);
  const int64_t ntiles = tiles_per_row(a.l, kBwdGroups);
  for (int64_t unit = blockIdx.y; unit < a.b * ntiles; unit += gridDim.y) {
    const int64_t i = unit / ntiles, t0 = (unit % ntiles) * kTile;
    const int64_t base = t0 - (W - 1);  // position of sid[0] and of staged x row 0
    __syncthreads();  // the previous tile's ids, inputs and sums are no longer read
    load_ids(a.seq, i, a.l, t0, W, sid);
    if constexpr (V > 1) {
      constexpr int kBytes = int(sizeof(Vec<T, V>));
      if (active) {
        for (int r = threadIdx.y; r < kXRows; r += kBwdGroups) {
          const int64_t s = base + r;
          const bool ok = s >= 0 && s < a.l;
          cp_async<kBytes>(xs + r * kLanes + threadIdx.x, a.x + (i * a.l + (ok ? s : 0)) * a.c + ch0, ok);
        }
        for (int r = threadIdx.y; r < kGRows; r += kBwdGroups) {
          const int64_t s = t0 + r;
          const bool ok = s < a.l;
          cp_async<kBytes>(gs + r * kLanes + threadIdx.x, a.dout + (i * a.l + (ok ? s : 0)) * a.c + ch0, ok);
        }
      }
      cp_commit();
      cp_wait_all();
    }
    __syncthreads();
    // x at position s (s < te + w − 1) and dout at t (0 <= t < l, t < te + w − 1).
    auto input = [&](int64_t s, float(&o)[V]) {
      if constexpr (V > 1)
        if (s >= 0) return unpack<T, V>(xs[(s - base) * kLanes + threadIdx.x], o);
      load_input<T, P, W, V>(a, i, s, ch0, o);
    };
    auto grad = [&](int64_t t, float(&o)[V]) {
      if constexpr (V > 1) unpack<T, V>(gs[(t - t0) * kLanes + threadIdx.x], o);
      else load_row<T, V>(a.dout + (i * a.l + t) * a.c + ch0, o);
    };
    float dw[V][W + 1];  // dweight terms, then dbias
#pragma unroll
    for (int v = 0; v < V; ++v)
#pragma unroll
      for (int k = 0; k <= W; ++k) dw[v][k] = 0.f;
    const int64_t tb = t0 + int64_t(threadIdx.y) * kTokensPerThread;
    const int64_t te = tb + kTokensPerThread < a.l ? tb + kTokensPerThread : a.l;
    const bool with_init = a.dinit && tb == 0;
    if (active && (tb < te || with_init)) {
      const int32_t first = sid[nwin], last = sid[nwin + 1];
      const int64_t sb = with_init ? -(W - 1) : tb;  // first position whose gradient is written
      float xw[W - 1][V];   // inputs at t − (w−1) .. t − 1
      float dpw[W][V];      // dp at t − (w−1) .. t
#pragma unroll
      for (int k = 0; k < W - 1; ++k) input(sb - (W - 1) + k, xw[k]);
#pragma unroll
      for (int k = 0; k < W; ++k)
#pragma unroll
        for (int v = 0; v < V; ++v) dpw[k][v] = 0.f;
      for (int64_t t = sb; t < te + W - 1; ++t) {
        float cur[V], dp[V];
        input(t, cur);
#pragma unroll
        for (int v = 0; v < V; ++v) dp[v] = 0.f;
        if (t >= 0 && t < a.l) {
          const int32_t id = sid[t - base];
          float taps[W][V];
#pragma unroll
          for (int k = 0; k < W - 1; ++k) {
            const int64_t s = t - (W - 1) + k;
            const bool same = (s >= 0 ? sid[s - base] : first) == id;
#pragma unroll
            for (int v = 0; v < V; ++v) taps[k][v] = same ? xw[k][v] : 0.f;
          }
#pragma unroll
          for (int v = 0; v < V; ++v) taps[W - 1][v] = cur[v];
          float g[V];
          grad(t, g);
#pragma unroll
          for (int v = 0; v < V; ++v) {
            if (a.silu) {
              float pre = br[v];
#pragma unroll
              for (int k = 0; k < W; ++k) pre += wr[v][k] * taps[k][v];
              const float sg = sigmoid(pre);
              dp[v] = g[v] * sg * (1.f + pre * (1.f - sg));
            } else {
              dp[v] = g[v];
            }
          }
          if (t >= tb && t < te) {  // one of this thread's tokens
#pragma unroll
            for (int v = 0; v < V; ++v) {
#pragma unroll
              for (int k = 0; k < W; ++k) dw[v][k] += dp[v] * taps[k][v];
              dw[v][W] += dp[v];
            }
          }
        }
#pragma unroll
        for (int v = 0; v < V; ++v) {
#pragma unroll
          for (int k = 0; k + 1 < W - 1; ++k) xw[k][v] = xw[k + 1][v];
          xw[W - 2][v] = cur[v];
#pragma unroll
          for (int k = 0; k + 1 < W; ++k) dpw[k][v] = dpw[k + 1][v];
          dpw[W - 1][v] = dp[v];
        }
        const int64_t s = t - (W - 1);
        if (s < sb) continue;
        // dx[s] = Σ_m weight[w−1−m] · dp[s + m] over the tokens s + m of s's document.
        const int32_t sid_s = s >= 0 ? sid[s - base] : first;
        const int64_t slot = s - (a.l - (W - 1));  // the final_state slot holding s, when >= 0
        const bool to_final = a.dfinal && slot >= 0 && sid_s == last;
        float acc[V];
#pragma unroll
        for (int v = 0; v < V; ++v) {
          acc[v] = 0.f;
#pragma unroll
          for (int m = 0; m < W; ++m) {
            const int64_t tt = s + m;
            if (tt >= 0 && tt < a.l && sid[tt - base] == sid_s) acc[v] += wr[v][W - 1 - m] * dpw[m][v];
          }
          if (to_final) acc[v] += to_f32(a.dfinal[(i * a.c + ch0 + v) * (W - 1) + slot]);
        }
        if (s >= 0) {
          store_row<T, V>(a.dx + (i * a.l + s) * a.c + ch0, acc);
        } else {
#pragma unroll
          for (int v = 0; v < V; ++v) a.dinit[(i * a.c + ch0 + v) * (W - 1) + s + W - 1] = from_f32<T>(acc[v]);
        }
      }
    }
    // The block's sums: token groups in order.
#pragma unroll
    for (int k = 0; k <= W; ++k)
#pragma unroll
      for (int v = 0; v < V; ++v) red[(threadIdx.y * (W + 1) + k) * kRow + threadIdx.x * V + v] = dw[v][k];
    __syncthreads();
    if (threadIdx.y == 0 && active) {
#pragma unroll
      for (int k = 0; k <= W; ++k)
#pragma unroll
        for (int v = 0; v < V; ++v) {
          float s = 0.f;
          for (int y = 0; y < kBwdGroups; ++y) s += red[(y * (W + 1) + k) * kRow + threadIdx.x * V + v];
          a.partial[(unit * (W + 1) + k) * a.c + ch0 + v] = s;
        }
    }
  }
}

// dweight[ch, k] (k < w) and dbias[ch] (k = w) = Σ over blocks of partial[unit, k, ch],
// units in order, in f64.
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
