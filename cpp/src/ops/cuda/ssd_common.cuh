// What the SSD kernels share: sizes and 64-bit offsets of one problem, the Δ
// transform, the per-token scalars of a chunk, and the launchers of the stages that
// forward and backward both run (ssd_states.cu).
//
// Notation (as in cpu/ssd_chunked.cpp), chunk of L tokens (t, s local), head j:
//   S_t = Σ_{u ≤ t} Δ_u·A_j (f64, from the chunk start), doc_t the document id,
//   doc_in that of the token before the chunk (of token 0 for the first chunk),
//   e_t = exp(S_t)·[doc_t = doc_in], f_t = exp(S_last − S_t)·[doc_t = doc_last],
//   E = exp(S_last)·[doc_last = doc_in], W_ts = exp(S_t − S_s)·[s ≤ t, doc_s = doc_t].
#pragma once
#include <cstdint>
#include <type_traits>
#include <utility>

#include "async_copy.cuh"
#include "ssd.h"
#include "ssd_tile.cuh"
#include "mambatron/ops.h"

namespace mambatron::cuda::ssd {

struct Dims {
  int64_t b, l, h, p, g, n;
  int64_t Q, nc;  // chunk length, chunks per row
  __host__ __device__ int64_t group(int64_t j) const { return j / (h / g); }
  // x, y, dy, dx [b, l, h, p]: element (bi, t, j, 0).
  __host__ __device__ int64_t xo(int64_t bi, int64_t t, int64_t j) const { return ((bi * l + t) * h + j) * p; }
  // dt, ddt [b, l, h].
  __host__ __device__ int64_t dto(int64_t bi, int64_t t, int64_t j) const { return (bi * l + t) * h + j; }
  // B, C, dB, dC [b, l, g, n]: element (bi, t, gi, 0).
  __host__ __device__ int64_t bco(int64_t bi, int64_t t, int64_t gi) const { return ((bi * l + t) * g + gi) * n; }
  // Per-token scalars [b, h, l].
  __host__ __device__ int64_t so(int64_t bi, int64_t j, int64_t t) const { return (bi * h + j) * l + t; }
  // States of chunks [b, h, nc, p, n]: the (p, n) matrix of chunk c.
  __host__ __device__ int64_t co(int64_t bi, int64_t j, int64_t c) const { return ((bi * h + j) * nc + c) * p * n; }
  // Initial/final states [b, h, p, n].
  __host__ __device__ int64_t sto(int64_t bi, int64_t j) const { return (bi * h + j) * p * n; }
  // Tile height that holds a chunk (64 or 128), and K = C·Bᵀ of chunks [b, nc, g, kq, kq].
  __host__ __device__ int64_t kq() const { return Q <= 64 ? 64 : 128; }
  __host__ __device__ int64_t ko(int64_t bi, int64_t c, int64_t gi) const { return ((bi * nc + c) * g + gi) * kq() * kq(); }
};

// Δ = clamp(softplus?(v)), v = dt + dt_bias, and dΔ/dv (0 where clamped), in f64 as on the CPU.
struct DeltaOpt {
  bool softplus, has_min, has_max;
  double min, max;
};
DeltaOpt delta_opt(const SsdOptions& opt);

struct DeltaSlope {
  double value, slope;
};
__device__ __forceinline__ DeltaSlope delta_of(double v, const DeltaOpt& o) {
  double d = v, s = 1.0;
  if (o.softplus && v <= 20.0) {
    d = log1p(exp(v));
    s = 1.0 / (1.0 + exp(-v));
  }
  if (o.has_min && d < o.min) d = o.min, s = 0.0;
  if (o.has_max && d > o.max) d = o.max, s = 0.0;
  return {d, s};
}

// exp(S_t − S_s) of W: in f32 for the bf16 form, in f64 (rounded once) for the f32 form as on the CPU.
template <class T>
__device__ __forceinline__ float decay(double diff) {
  if constexpr (kTensorCores<T>) return expf(float(diff));
  else return float(exp(diff));
}

// The chunk a block works on, and its document ids at the edges.
struct Chunk {
  int64_t bi, j, c, t0;
  int L;        // tokens in the chunk
  int Lt;       // ⌈L / 16⌉ tiles
  int doc_in, doc_last;
  double S_last;
};

__device__ __forceinline__ int doc_at(const int32_t* seq, const Dims& d, int64_t bi, int64_t t) {
  return seq ? seq[bi * d.l + t] : 0;
}

__device__ __forceinline__ Chunk make_chunk(const Dims& d, const double* S, const int32_t* seq, int64_t bi, int64_t j,
                                            int64_t c) {
  Chunk k;
  k.bi = bi, k.j = j, k.c = c, k.t0 = c * d.Q;
  const int64_t rest = d.l - k.t0;
  k.L = int(rest < d.Q ? rest : d.Q);
  k.Lt = (k.L + 15) / 16;
  k.doc_in = doc_at(seq, d, bi, k.t0 > 0 ? k.t0 - 1 : 0);
  k.doc_last = doc_at(seq, d, bi, k.t0 + k.L - 1);
  k.S_last = S[d.so(bi, j, k.t0 + k.L - 1)];
  return k;
}

// The scale of token t of a chunk in its own state (the state pass's diag(scale)):
// forward f_t·Δ_t (the tokens of the chunk's last document, decayed to its end),
// reverse e_t (those of its first document, decayed from its start); 0 past L.
template <bool kReverse>
__device__ __forceinline__ float state_scale(const Dims& d, const double* S, const float* delta, const int32_t* seq,
                                             const Chunk& ch, int t) {
  if (t >= ch.L) return 0.f;
  const int64_t tok = ch.t0 + t;
  const double St = S[d.so(ch.bi, ch.j, tok)];
  const int doc = doc_at(seq, d, ch.bi, tok);
  if (kReverse) return doc == ch.doc_in ? float(exp(St)) : 0.f;
  return doc == ch.doc_last ? float(exp(ch.S_last - St) * double(delta[d.so(ch.bi, ch.j, tok)])) : 0.f;
}

// The output kernels' values of every token of a chunk (zeros past L): S, Δ, e and
// the document ids, each kQ long; the whole block takes part.
__device__ __forceinline__ void fill_output_values(const Dims& d, const double* S, const float* delta,
                                                   const int32_t* seq, const Chunk& ch, int kQ, double* Ss,
                                                   float* dls, float* es, int* docs) {
  for (int t = threadIdx.x; t < kQ; t += blockDim.x) {
    if (t < ch.L) {
      const int64_t tok = ch.t0 + t;
      Ss[t] = S[d.so(ch.bi, ch.j, tok)];
      dls[t] = delta[d.so(ch.bi, ch.j, tok)];
      docs[t] = doc_at(seq, d, ch.bi, tok);
      es[t] = docs[t] == ch.doc_in ? float(exp(Ss[t])) : 0.f;
    } else {
      Ss[t] = 0, dls[t] = 0.f, es[t] = 0.f, docs[t] = 0;
    }
  }
}

// The chunk length and sizes of one call: x [b, l, h, p], B [b, l, g, n].
inline Dims make_dims(const Tensor& x, const Tensor& B, const SsdOptions& opt) {
  Dims d;
  d.b = x.size(0), d.l = x.size(1), d.h = x.size(2), d.p = x.size(3), d.g = B.size(2), d.n = B.size(3);
  d.Q = opt.chunk_size == 0 ? kSsdDefaultChunk : (opt.chunk_size < kSsdMaxChunk ? opt.chunk_size : kSsdMaxChunk);
  d.nc = (d.l + d.Q - 1) / d.Q;
  return d;
}

// f(std::integral_constant<int, kQ>) with the tile height kQ (64 or 128) that holds a chunk.
template <class F>
void with_chunk_tiles(int64_t Q, F&& f) {
  if (Q <= 64) f(std::integral_constant<int, 64>{});  // as Dims::kq
  else f(std::integral_constant<int, 128>{});
}

// A launch with `smem` bytes of dynamic shared memory (above the default 48 KiB limit).
template <class... P, class... A>
void launch_big(void (*kernel)(P...), unsigned blocks, int threads, size_t smem, cudaStream_t s, A&&... args) {
  MT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kernel<<<blocks, threads, smem, s>>>(std::forward<A>(args)...);
  MT_CUDA_LAUNCH_CHECK();
}

// Shared memory one block may use on sm_80/sm_90.
constexpr size_t kMaxSmem = 227 * 1024;

// ---------------------------------------------------------------- staging into shared memory
// Reads a rows × cols block of a row-major global matrix (row r at g + r·stride;
// rows ≥ valid_rows and columns ≥ valid_cols read as 0) in groups of V = 16 bytes of
// consecutive columns, and hands each group to put(r, c, Pack). The whole block
// takes part; each thread loads kInFlight groups before it stores any, so the loads
// overlap. A group is one 16-byte load when the valid columns come in whole groups
// and every row start is 16-byte aligned, else V element loads. cols: a multiple of V.
template <class G, class Put>
__device__ __forceinline__ void read_block(const G* g, int64_t stride, int rows, int cols, int valid_rows,
                                           int valid_cols, Put&& put) {
  constexpr int V = Pack<G>::N, kInFlight = 4;
  const int groups = cols / V, total = rows * groups, step = int(blockDim.x);
  const bool vec = valid_cols % V == 0 && reinterpret_cast<uintptr_t>(g) % 16 == 0 && (stride * sizeof(G)) % 16 == 0;
  for (int e0 = threadIdx.x; e0 < total; e0 += kInFlight * step) {
    Pack<G> v[kInFlight];
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      const int e = e0 + u * step, r = e / groups, c = (e - r * groups) * V;
      if (e < total && r < valid_rows && c < valid_cols) {
        const G* src = g + r * stride + c;
        if (vec) {
          v[u] = *reinterpret_cast<const Pack<G>*>(src);
        } else {
#pragma unroll
          for (int k = 0; k < V; ++k) v[u].v[k] = c + k < valid_cols ? src[k] : G(0.f);
        }
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k) v[u].v[k] = G(0.f);
      }
    }
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      const int e = e0 + u * step, r = e / groups;
      if (e < total) put(r, (e - r * groups) * V, v[u]);
    }
  }
}

// A kRows × kCols block of a row-major global matrix held in registers between its
// load and its use (rows ≥ valid_rows and columns ≥ valid_cols read as 0), so that a
// block can load the next chunk while it computes on this one. Thread k holds groups
// k, k + kThreads, ... of V = 16 bytes of consecutive columns.
template <class G, int kRows, int kCols, int kThreads>
struct RegBlock {
  static constexpr int V = Pack<G>::N, kGroups = kCols / V, kPer = kRows * kGroups / kThreads;
  static_assert(kCols % V == 0 && (kRows * kGroups) % kThreads == 0, "RegBlock: groups must split evenly");
  Pack<G> v[kPer];

  __device__ __forceinline__ void load(const G* g, int64_t stride, int valid_rows, int valid_cols) {
    const bool vec = valid_cols % V == 0 && reinterpret_cast<uintptr_t>(g) % 16 == 0 && (stride * sizeof(G)) % 16 == 0;
#pragma unroll
    for (int u = 0; u < kPer; ++u) {
      const int e = int(threadIdx.x) + u * kThreads, r = e / kGroups, c = (e - r * kGroups) * V;
      if (r < valid_rows && c < valid_cols && vec) {
        v[u] = *reinterpret_cast<const Pack<G>*>(g + r * stride + c);
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k) v[u].v[k] = r < valid_rows && c + k < valid_cols ? g[r * stride + c + k] : G(0.f);
      }
    }
  }
  // put(r, c, Pack) for each group this thread holds.
  template <class Put>
  __device__ __forceinline__ void put(Put&& f) const {
#pragma unroll
    for (int u = 0; u < kPer; ++u) {
      const int e = int(threadIdx.x) + u * kThreads, r = e / kGroups;
      f(r, (e - r * kGroups) * V, v[u]);
    }
  }
  // The block as it is into an exact operand (rows of pitch m.ld; 16-byte stores).
  __device__ __forceinline__ void put_exact(const Smem<G>& m) const {
    put([&](int r, int c, const Pack<G>& p) { *reinterpret_cast<Pack<G>*>(m.p + r * m.ld + c) = p; });
  }
};

// The causal 16×16 tiles of the first `rows` rows of a chunk's K (launch_chunk_cb; row
// pitch kQ) into shared rows of pitch ld floats (a multiple of 4), asynchronously:
// cp_commit, cp_wait_all and a barrier come before their use.
template <int kQ>
__device__ __forceinline__ void copy_causal_async(float* dst, int ld, const float* K, int rows) {
  constexpr int kPieces = kQ / 4;  // 16-byte pieces of a row
  for (int e = threadIdx.x; e < rows * kPieces; e += blockDim.x) {
    const int t = e / kPieces, c4 = (e - t * kPieces) * 4;
    if (c4 < 16 * (t / 16 + 1)) cp_async<16>(dst + t * ld + c4, K + t * kQ + c4);
  }
}

// An input block into an exact operand (rows of pitch m.ld; 16-byte stores).
template <class T>
__device__ __forceinline__ void stage_exact(const Smem<T>& m, const T* g, int64_t stride, int rows, int cols,
                                            int valid_rows, int valid_cols) {
  read_block(g, stride, rows, cols, valid_rows, valid_cols,
             [&](int r, int c, const Pack<T>& v) { *reinterpret_cast<Pack<T>*>(m.p + r * m.ld + c) = v; });
}

// An f32 block (a state) into an operand split in N parts.
template <int N, class T>
__device__ __forceinline__ void stage_split(const Smem<T>& m, const float* g, int64_t stride, int rows, int cols,
                                            int valid_rows, int valid_cols) {
  read_block(g, stride, rows, cols, valid_rows, valid_cols,
             [&](int r, int c, const Pack<float>& v) { put_split_vec<N>(m, r * m.ld + c, v.v); });
}

// ---------------------------------------------------------------- shared stages (ssd_states.cu)
// Δ (f32) and S (f64) of every token: [b, h, l] each.
template <class T>
void launch_chunk_scalars(const Dims& d, const T* dt, const float* dt_bias, const float* A, const DeltaOpt& o,
                          float* delta, double* S, cudaStream_t s);

// K = C·Bᵀ of every chunk and group, f32 [b, nc, g, kq, kq] (Dims::ko): the causal
// 16×16 tiles of the chunk's rows are written, nothing else. The heads of a group
// share it.
template <class T>
void launch_chunk_cb(const Dims& d, const T* C, const T* B, float* K, cudaStream_t s);

// The state passed along the chunks:
//   forward: states[c] = H entering chunk c; H ← E·H + Xᵀ·diag(f⊙Δ)·B (X = x, Bm = B)
//   reverse: states[c] = Ĥ leaving chunk c;  Ĥ ← E·Ĥ + dYᵀ·diag(e)·C  (X = dy, Bm = C)
// starting from `init` (or 0) and ending in `last` (when given). On mma.sync (bf16, p 64,
// n 64 or 128) one launch makes each chunk's product term and carries it along
// (ssd_chunk_state_mma.cu), its blocks signalling each other through `sync`
// (state_pass_sync_ints(d) ints of scratch); else two: every chunk's product term into
// states[c], then the recurrence in place.
inline int64_t state_pass_sync_ints(const Dims& d) { return 1 + d.b * d.h * d.nc; }
template <class T>
void launch_state_pass(const Dims& d, bool reverse, const T* X, const T* Bm, const float* delta, const double* S,
                       const int32_t* seq, const float* init, float* states, float* last, int32_t* sync,
                       cudaStream_t s);

}  // namespace mambatron::cuda::ssd
