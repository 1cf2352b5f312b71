// KV-cache append and one-token decode attention on CUDA.
// Append: one block per sequence copies its token's k and v into the caches at
// position cache_lens[i], then bumps cache_lens[i] (the caller checked the lengths).
// Decode is bound by one read of the caches, so it is shaped to keep memory busy.
// Split-K: one block per (batch, kv head, group of query heads, split), with as many
// splits as make one wave of resident blocks; each sequence deals its 64-key chunks
// evenly to the splits from its length, which is read on the device only. A block
// walks its chunks through a ring of shared-memory slots filled by cp.async, so the
// next chunks' keys and values are in flight while one is computed; each key and
// value read serves all the block's query heads, with an online softmax (max m, sum
// l, unnormalised o) in f32. bf16 caches with p 64 or 128 take the products on the
// tensor cores (decode_mma_kernel, up to 16 heads a block); other rows of 16-byte units
// take them in f32 FMAs (decode_split_kernel, up to 8 heads); rows that are not whole
// 16-byte units, or too wide for the ring, are read from global memory directly
// (slower, same arithmetic). A second
// kernel combines the splits of each query head in a fixed order:
// out = Σ_s o_s·e^(m_s − M) / Σ_s l_s·e^(m_s − M). No atomics: the bits repeat.
// The combine is a programmatic dependent launch (sm_90): it is scheduled while the
// split kernel runs and waits for its results on the device, so no launch gap falls
// between the two (a few microseconds of a batch-1 call's ~60).
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "attention.h"
#include "async_copy.cuh"
#include "attention_mma.cuh"
#include "dense.cuh"

namespace mambatron::cuda {

namespace {
constexpr int kAppendThreads = 256;
constexpr int kThreads = 256;             // decode block: 8 warps
constexpr int kKeys = 64;                 // keys per chunk, one ring slot
constexpr int kStages = 3;                // ring slots: kStages − 1 chunks in flight while one is computed
constexpr int kMaxHeads = 8;              // query heads per block, one softmax warp each
constexpr int kParts = kThreads / kKeys;  // threads per key in the score step
constexpr int kSmemDefault = 48 * 1024;
static_assert(kMaxHeads <= kThreads / 32 && kKeys % 32 == 0 && kParts * kKeys == kThreads, "decode block shape");
static_assert(kKeys / (kThreads / 32) % 8 == 0 && kStages >= 2, "value step: 8 keys a step; a ring");

template <class T>
__global__ void kv_append_kernel(const T* __restrict__ k, const T* __restrict__ v, T* __restrict__ kc,
                                 T* __restrict__ vc, int32_t* __restrict__ lens, int64_t max_len, int64_t row) {
  const int64_t bi = blockIdx.x;
  const int32_t pos = lens[bi];
  if (pos < 0 || pos >= max_len) return;  // unchecked lengths: never write outside the cache
  const int64_t dst = (bi * max_len + pos) * row, src = bi * row;
  for (int64_t e = threadIdx.x; e < row; e += blockDim.x) {
    kc[dst + e] = k[src + e];
    vc[dst + e] = v[src + e];
  }
  __syncthreads();  // every thread has read lens[bi]
  if (threadIdx.x == 0) lens[bi] = pos + 1;
}

struct DecodeArgs {
  const void *q, *kc, *vc;
  const int32_t* lens;
  float *pm, *pl, *po;  // partials [b·hq, splits] and [b·hq, splits, p]
  int64_t max_len;
  int hq, hkv, p, heads, head_groups, splits;
  float scale;
};

// Programmatic dependent launch (sm_90 and later; nothing on older devices, where the
// stream orders the kernels as usual): the primary lets the dependent grid be scheduled,
// the dependent waits until the primary has finished and its writes are visible.
__device__ __forceinline__ void allow_dependent_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void wait_for_primary() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ int64_t valid_len(const int32_t* lens, int64_t bi, int64_t max_len) {
  const int64_t n = lens[bi];
  return n < 0 ? 0 : (n > max_len ? max_len : n);
}

// Chunks per split of a sequence of n keys: its ceil(n / kKeys) chunks dealt evenly,
// in order, to the splits (0 when n is 0). Split s holds chunks [s·per, (s + 1)·per).
__device__ __forceinline__ int64_t split_chunks(int64_t n, int splits) {
  return ((n + kKeys - 1) / kKeys + splits - 1) / splits;
}

// The block's place: batch row bi, query heads h0 .. h0 + nh − 1 (up to `heads` a
// block) on one kv head, whose rows start at element kv of either cache (row elements
// between tokens); the sequence's length n and its chunks [c0, c1) in this split.
struct SplitBlock {
  int64_t bi, n, c0, c1, row, kv;
  int h0, nh;
};
__device__ __forceinline__ SplitBlock split_block(const DecodeArgs& a, int heads, int p) {
  SplitBlock s;
  const int64_t bx = blockIdx.x, bkv = bx / a.head_groups;
  s.bi = bkv / a.hkv;
  const int hg = int(bx % a.head_groups), group = a.hq / a.hkv, kvh = int(bkv % a.hkv);
  s.h0 = kvh * group + hg * heads;
  s.nh = min(heads, group - hg * heads);
  s.n = valid_len(a.lens, s.bi, a.max_len);
  const int64_t per = split_chunks(s.n, a.splits);
  s.c0 = int64_t(blockIdx.y) * per;
  s.c1 = min((s.n + kKeys - 1) / kKeys, s.c0 + per);
  s.row = int64_t(a.hkv) * p;
  s.kv = s.bi * a.max_len * s.row + int64_t(kvh) * p;
  return s;
}

// Value step: threads per column group, the narrowest warp multiple ≥ p (at most the
// block); the block's kThreads / col_threads groups each take a share of a chunk's keys.
__host__ __device__ constexpr int col_threads(int64_t p) {
  return p <= 32 ? 32 : p <= 64 ? 64 : p <= 128 ? 128 : kThreads;
}
// A ring row of `units` 16-byte units: the key step reads one row per thread, so 8
// neighbouring rows must fall in 8 bank groups: XOR-swizzled when units is a multiple
// of 8, else padded to an odd count.
__host__ __device__ constexpr int64_t ring_pitch(int64_t units) { return units % 8 == 0 ? units : units | 1; }

// Shared memory of a decode block: [ring: K then V] scores [kParts][heads][kKeys],
// q [heads][p], (direct only) o [groups][heads][p], rescale factors [heads].
size_t decode_smem_bytes(bool staged, int64_t p, int heads, size_t elem) {
  size_t floats = (size_t(kParts) * kKeys + size_t(p) + 1) * size_t(heads);
  size_t ring = 0;
  if (staged) {
    const int64_t units = p * int64_t(elem) / 16;
    ring = size_t(kStages) * kKeys * size_t(ring_pitch(units) + units) * 16;
  } else {
    floats += size_t(kThreads / col_threads(p)) * size_t(heads) * size_t(p);
  }
  return ring + floats * 4;
}

// One 16-byte unit of a row as V f32 values.
template <class T, int V>
__device__ __forceinline__ void load_f32(const T* __restrict__ p, float (&out)[V]) {
  static_assert(Pack<T>::N == V, "one 16-byte pack");
  const Pack<T> pk = *reinterpret_cast<const Pack<T>*>(p);
#pragma unroll
  for (int e = 0; e < V; ++e) out[e] = to_f32(pk.v[e]);
}

// acc + Σ_e q[e]·x[e] in order; q from shared memory, as float4 when V allows.
template <int V>
__device__ __forceinline__ float dot(const float* q, const float (&x)[V], float acc) {
  if constexpr (V % 4 == 0) {
#pragma unroll
    for (int e = 0; e < V; e += 4) {
      const float4 qq = *reinterpret_cast<const float4*>(q + e);
      acc = fmaf(qq.x, x[e], acc), acc = fmaf(qq.y, x[e + 1], acc);
      acc = fmaf(qq.z, x[e + 2], acc), acc = fmaf(qq.w, x[e + 3], acc);
    }
  } else {
#pragma unroll
    for (int e = 0; e < V; ++e) acc = fmaf(q[e], x[e], acc);
  }
  return acc;
}

// One block per (batch, kv head, group of up to kMaxHeads query heads, split); the
// split's chunks are walked in order. Per chunk: thread (part, key) scores its key
// against every head over a quarter of the row (parts summed in order after); one
// warp per head takes the online softmax; then column group g sums its share of the
// keys, in order, into its output column. Staged (rows of 16-byte units, p ≤
// kThreads): chunks come through the cp.async ring, rows past the length zero-filled,
// and a thread's column lives in registers. Direct (any other shape): rows are read
// from global memory one element at a time and o lives in shared memory.
template <class T, int P, bool kStaged>
__global__ void __launch_bounds__(kThreads, 2) decode_split_kernel(DecodeArgs a) {
  constexpr int V = kStaged ? 16 / int(sizeof(T)) : 1;  // elements per load
  static_assert(P == 0 || (kStaged && P / V % kParts == 0 && P <= kThreads), "a fixed p is staged");
  extern __shared__ float4 smem4[];
  const int p = P ? P : a.p, heads = a.heads, units = p / V;
  const int pitch = int(ring_pitch(units)), swz = units % 8 == 0 ? 7 : 0;
  const int cols = col_threads(p), groups = kThreads / cols, kg = kKeys / groups;
  T* k_ring = reinterpret_cast<T*>(smem4);              // [kStages][kKeys][pitch units]
  T* v_ring = k_ring + kStages * kKeys * pitch * V;     // [kStages][kKeys][p]
  float* sp = kStaged ? reinterpret_cast<float*>(v_ring + kStages * kKeys * p) : reinterpret_cast<float*>(smem4);
  float* q_s = sp + kParts * heads * kKeys;
  float* o_s = q_s + heads * p;                          // direct only
  float* al_s = kStaged ? o_s : o_s + groups * heads * p;

  allow_dependent_launch();
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const SplitBlock sb = split_block(a, heads, p);
  const int64_t bi = sb.bi, n = sb.n, c0 = sb.c0, c1 = sb.c1, row = sb.row;
  const int h0 = sb.h0, nh = sb.nh;
  if (c0 >= c1) return;  // no keys (n = 0 included): the combine does not read this split
  const T *kb = static_cast<const T*>(a.kc) + sb.kv, *vb = static_cast<const T*>(a.vc) + sb.kv;
  // Chunk c into ring slot `slot`: row r's unit u of K at unit u ^ (r & swz) of its
  // ring row; rows at or past the length are zeros (their weights are 0 too).
  auto load_chunk = [&](int64_t c, int slot) {
    const int64_t j0 = c * kKeys;
    const int cn = int(min(int64_t(kKeys), n - j0));
    const T *kr = kb + j0 * row, *vr = vb + j0 * row;
    T* ks = k_ring + slot * kKeys * pitch * V;
    T* vs = v_ring + slot * kKeys * p;
    const int copies = kKeys * units;  // a multiple of kThreads when P is
#pragma unroll 4
    for (int i = 0; i < (copies + kThreads - 1) / kThreads; ++i) {
      const int e = tid + i * kThreads;
      if (copies % kThreads != 0 && e >= copies) break;
      const int r = e / units, u = e % units;
      const bool ok = r < cn;
      const int64_t src = int64_t(ok ? r : 0) * row + u * V;
      cp_async<16>(ks + (r * pitch + (u ^ (r & swz))) * V, kr + src, ok);
      cp_async<16>(vs + r * p + u * V, vr + src, ok);
    }
  };
  if constexpr (kStaged) {
#pragma unroll
    for (int s = 0; s < kStages - 1; ++s) {
      if (c0 + s < c1) load_chunk(c0 + s, s);
      cp_commit();  // one group per chunk, empty past the split, so the waits count alike
    }
  }

  const T* q = static_cast<const T*>(a.q) + (bi * a.hq + h0) * p;
  for (int e = tid; e < nh * p; e += kThreads) q_s[e] = to_f32(q[e]);
  if constexpr (!kStaged)
    for (int e = tid; e < groups * heads * p; e += kThreads) o_s[e] = 0.f;
  const int key = tid % kKeys, part = tid / kKeys;        // key step
  const int g = tid / cols, col = tid % cols, k_lo = g * kg;  // value step
  float o[kMaxHeads];  // staged: column `col` of each head's unnormalised output
#pragma unroll
  for (int h = 0; h < kMaxHeads; ++h) o[h] = 0.f;
  float m_run = -INFINITY, l_run = 0.f;  // warp h < nh: head h's running max and sum

  int slot = 0;  // chunk c's ring slot
  for (int64_t c = c0; c < c1; ++c, slot = slot + 1 == kStages ? 0 : slot + 1) {
    const int64_t j0 = c * kKeys;
    const int cn = int(min(int64_t(kKeys), n - j0));
    if constexpr (kStaged) cp_wait<kStages - 2>();  // chunk c's group is done
    __syncthreads();  // chunk c visible; the slot and weights of chunk c − 1 are read no more
    if constexpr (kStaged) {
      if (c + kStages - 1 < c1) load_chunk(c + kStages - 1, slot == 0 ? kStages - 1 : slot - 1);
      cp_commit();
    }
    const T* ks = k_ring + slot * kKeys * pitch * V;
    const T* vs = v_ring + slot * kKeys * p;
    // Scores: part `part` of key `key` against each head, over units part,
    // part + kParts, .. of the row, in order.
    if constexpr (P > 0) {  // the thread's whole share of the row in registers, then head by head
      constexpr int B = P / V / kParts;
      float x[B][V];
#pragma unroll
      for (int i = 0; i < B; ++i) load_f32<T, V>(ks + (key * pitch + ((part + kParts * i) ^ (key & swz))) * V, x[i]);
#pragma unroll
      for (int h = 0; h < kMaxHeads; ++h)
        if (h < nh) {
          float acc = 0.f;
#pragma unroll
          for (int i = 0; i < B; ++i) acc = dot<V>(q_s + h * p + (part + kParts * i) * V, x[i], acc);
          sp[(part * heads + h) * kKeys + key] = acc;
        }
    } else {
      float acc[kMaxHeads];
#pragma unroll
      for (int h = 0; h < kMaxHeads; ++h) acc[h] = 0.f;
      if (kStaged || key < cn) {
        for (int u = part; u < units; u += kParts) {
          float x[V];
          if constexpr (kStaged) load_f32<T, V>(ks + (key * pitch + (u ^ (key & swz))) * V, x);
          else x[0] = to_f32(kb[(j0 + key) * row + u]);
#pragma unroll
          for (int h = 0; h < kMaxHeads; ++h)
            if (h < nh) acc[h] = dot<V>(q_s + h * p + u * V, x, acc[h]);
        }
      }
#pragma unroll
      for (int h = 0; h < kMaxHeads; ++h)
        if (h < nh) sp[(part * heads + h) * kKeys + key] = acc[h];
    }
    __syncthreads();
    if (warp < nh) {  // warp h: head h's running max and sum; weights over the parts' scores
      float x[kKeys / 32], mx = -INFINITY;
#pragma unroll
      for (int u = 0; u < kKeys / 32; ++u) {
        const int k = lane + 32 * u;
        float s = sp[warp * kKeys + k];
#pragma unroll
        for (int r = 1; r < kParts; ++r) s += sp[(r * heads + warp) * kKeys + k];
        x[u] = k < cn ? s * a.scale : -INFINITY;
        mx = fmaxf(mx, x[u]);
      }
      for (int k = 16; k > 0; k >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, k));
      const float mnew = fmaxf(m_run, mx);  // finite: key j0 is in the split
      float sum = 0.f;
#pragma unroll
      for (int u = 0; u < kKeys / 32; ++u) {
        const float w = expf(x[u] - mnew);
        sp[warp * kKeys + lane + 32 * u] = w;
        sum += w;
      }
      for (int k = 16; k > 0; k >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, k);
      const float al = expf(m_run - mnew);
      l_run = l_run * al + sum;
      m_run = mnew;
      if (lane == 0) al_s[warp] = al;
    }
    __syncthreads();
    // o = al·o + Σ_k w_k v_k over group g's keys k_lo .. k_lo + kg − 1, in order.
    if constexpr (kStaged) {
      if (col < p) {
#pragma unroll
        for (int h = 0; h < kMaxHeads; ++h)
          if (h < nh) o[h] *= al_s[h];
        if (k_lo < cn) {
#pragma unroll 4
          for (int kk = k_lo; kk < k_lo + kg; kk += 8) {  // 8 keys a step: 2 float4 weight reads a head
            float x[8];
#pragma unroll
            for (int e = 0; e < 8; ++e) x[e] = to_f32(vs[(kk + e) * p + col]);
#pragma unroll
            for (int h = 0; h < kMaxHeads; ++h)
              if (h < nh) {
                const float4 w0 = *reinterpret_cast<const float4*>(sp + h * kKeys + kk);
                const float4 w1 = *reinterpret_cast<const float4*>(sp + h * kKeys + kk + 4);
                o[h] = fmaf(w0.x, x[0], o[h]), o[h] = fmaf(w0.y, x[1], o[h]);
                o[h] = fmaf(w0.z, x[2], o[h]), o[h] = fmaf(w0.w, x[3], o[h]);
                o[h] = fmaf(w1.x, x[4], o[h]), o[h] = fmaf(w1.y, x[5], o[h]);
                o[h] = fmaf(w1.z, x[6], o[h]), o[h] = fmaf(w1.w, x[7], o[h]);
              }
          }
        }
      }
    } else {
      const int k_end = min(cn, k_lo + kg);
      for (int d = col; d < p; d += cols) {
        float acc[kMaxHeads];
#pragma unroll
        for (int h = 0; h < kMaxHeads; ++h) acc[h] = h < nh ? o_s[(g * heads + h) * p + d] * al_s[h] : 0.f;
        for (int kk = k_lo; kk < k_end; ++kk) {
          const float x = to_f32(vb[(j0 + kk) * row + d]);
#pragma unroll
          for (int h = 0; h < kMaxHeads; ++h)
            if (h < nh) acc[h] = fmaf(sp[h * kKeys + kk], x, acc[h]);
        }
#pragma unroll
        for (int h = 0; h < kMaxHeads; ++h)
          if (h < nh) o_s[(g * heads + h) * p + d] = acc[h];
      }
    }
  }
  __syncthreads();  // the weights are read no more
  // The groups' outputs [groups][heads][p] (staged: moved into the score buffer, which
  // holds kParts·kKeys = kThreads ≥ groups·p floats per head), added in group order.
  float* og = o_s;
  if constexpr (kStaged) {
    og = sp;
    if (col < p)
#pragma unroll
      for (int h = 0; h < kMaxHeads; ++h)
        if (h < nh) og[(g * heads + h) * p + col] = o[h];
    __syncthreads();
  }
  const int64_t out0 = (bi * a.hq + h0) * a.splits + blockIdx.y;  // of head h0; head h adds h·splits
  for (int e = tid; e < nh * p; e += kThreads) {
    const int h = e / p, d = e % p;
    float sum = og[h * p + d];
    for (int r = 1; r < groups; ++r) sum += og[(r * heads + h) * p + d];
    a.po[(out0 + int64_t(h) * a.splits) * p + d] = sum;
  }
  if (warp < nh && lane == 0) {
    a.pm[out0 + int64_t(warp) * a.splits] = m_run;
    a.pl[out0 + int64_t(warp) * a.splits] = l_run;
  }
}

// Tensor-core decode (bf16 caches, p 64 or 128, 16-byte aligned rows, up to 16 query
// heads a block): the same split and ring of 64-key chunks, 4 warps a block. Each warp
// runs its own online softmax over keys 16w .. 16w + 15 of every chunk: scores
// S (16 query rows, the heads padded with zeros, × 16 keys) = Q·Kᵀ and O += P·V by
// mma.sync (P split into bf16 hi + lo, so the products lose almost nothing); at the end
// the block adds its warps' (m, l, o) in warp order into the split's partials, which
// the combine kernel reads as from any split. Memory-bound where the FMA kernel above
// is not: a 64-key chunk costs each warp 24 (p 64) or 48 (p 128) mma, not hundreds of FMAs a thread.
constexpr int kMmaThreads = 128;
constexpr int kMmaHeads = 16;  // rows of an mma tile
static_assert(kMmaThreads / 32 * 16 == kKeys, "a warp takes 16 keys of a chunk");

template <int P>
constexpr size_t decode_mma_smem_bytes() {
  // ring [kStages][K, V][kKeys][P] bf16, q [16][P] bf16, the warps' m and l [2][4][16]
  return size_t(kStages) * 2 * kKeys * P * 2 + size_t(kMmaHeads) * P * 2 + 2 * 4 * kMmaHeads * 4;
}

template <int P>
__global__ void __launch_bounds__(kMmaThreads) decode_mma_kernel(DecodeArgs a) {
  using namespace attn_mma;
  using bf16 = __nv_bfloat16;
  static_assert(P == 64 || P == 128, "head dim 64 or 128");
  allow_dependent_launch();
  extern __shared__ float4 smem4[];
  bf16* ring = reinterpret_cast<bf16*>(smem4);  // [kStages][K, V][kKeys][P], swizzled
  bf16* q_s = ring + kStages * 2 * kKeys * P;   // [16][P], swizzled
  float* mw = reinterpret_cast<float*>(q_s + kMmaHeads * P);  // [4][16]
  float* lw = mw + 4 * kMmaHeads;                               // [4][16]
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
  const SplitBlock sb = split_block(a, a.heads, P);
  const int64_t bi = sb.bi, n = sb.n, c0 = sb.c0, c1 = sb.c1, row = sb.row;
  const int h0 = sb.h0, nh = sb.nh;
  if (c0 >= c1) return;  // no keys (n = 0 included): the combine does not read this split
  const bf16 *kb = static_cast<const bf16*>(a.kc) + sb.kv, *vb = static_cast<const bf16*>(a.vc) + sb.kv;
  auto load_chunk = [&](int64_t c, int slot) {
    bf16* kt = ring + slot * 2 * kKeys * P;
    load_tile<kKeys, P, kMmaThreads>(kt, kb, row, c * kKeys, n);
    load_tile<kKeys, P, kMmaThreads>(kt + kKeys * P, vb, row, c * kKeys, n);
  };
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (c0 + s < c1) load_chunk(c0 + s, s);
    cp_commit();  // one group per chunk, empty past the split, so the waits count alike
  }
  const bf16* q = static_cast<const bf16*>(a.q) + (bi * a.hq + h0) * P;
  for (int e = tid; e < kMmaHeads * P / 8; e += kMmaThreads) {
    const int r = e / (P / 8), c = e % (P / 8);
    Pack<bf16> v{};
    if (r < nh) v = *reinterpret_cast<const Pack<bf16>*>(q + r * P + c * 8);
    *reinterpret_cast<Pack<bf16>*>(q_s + swz<P>(r, c)) = v;
  }

  float o[P / 8][4];
  zero_frags(o);
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};  // rows g and g + 8
  int slot = 0;
  for (int64_t c = c0; c < c1; ++c, slot = slot + 1 == kStages ? 0 : slot + 1) {
    const int cn = int(min(int64_t(kKeys), n - c * kKeys));
    cp_wait<kStages - 2>();  // chunk c's group is done
    __syncthreads();         // chunk c visible; the slot of chunk c − 1 is read no more
    if (c + kStages - 1 < c1) load_chunk(c + kStages - 1, slot == 0 ? kStages - 1 : slot - 1);
    cp_commit();
    // The warp's 16 keys: rows 16·warp .. of the chunk's tiles (a multiple of 8 rows
    // from their start, so the swizzle reads the same).
    const bf16* kt = ring + slot * 2 * kKeys * P + 16 * warp * P;
    const bf16* vt = kt + kKeys * P;
    float s[2][4];
    zero_frags(s);
    gemm_abt<P, 2>(s, q_s, 0, kt);
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int key = 16 * warp + 8 * nt + 2 * t + (e & 1);
        s[nt][e] = key < cn ? s[nt][e] * a.scale : -INFINITY;
      }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float mx = fmaxf(fmaxf(s[0][2 * r], s[0][2 * r + 1]), fmaxf(s[1][2 * r], s[1][2 * r + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float mnew = fmaxf(m[r], mx), base = mnew == -INFINITY ? 0.f : mnew;  // no key yet: all zeros
      const float al = expf(m[r] - base);
      m[r] = mnew;
      l[r] *= al;
#pragma unroll
      for (int nt = 0; nt < P / 8; ++nt) o[nt][2 * r] *= al, o[nt][2 * r + 1] *= al;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 2 * r; e < 2 * r + 2; ++e) {
          s[nt][e] = expf(s[nt][e] - base);
          l[r] += s[nt][e];
        }
    }
    gemm_xb<P, 1, true>(o, s, vt);
  }
  // The warps' (m, l, o) into shared memory (o over the ring, free now), then added
  // in warp order: M = max m_w, L = Σ l_w·e^(m_w − M), O = Σ o_w·e^(m_w − M).
  cp_wait_all();
  __syncthreads();
  float* ow = reinterpret_cast<float*>(ring);  // [4][16][P]
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 1);
    l[r] += __shfl_xor_sync(0xffffffffu, l[r], 2);
    const int h = g + 8 * r;
    if (h < nh) {
      if (t == 0) mw[warp * kMmaHeads + h] = m[r], lw[warp * kMmaHeads + h] = l[r];
#pragma unroll
      for (int nt = 0; nt < P / 8; ++nt)
        *reinterpret_cast<float2*>(ow + (warp * kMmaHeads + h) * P + 8 * nt + 2 * t) =
            make_float2(o[nt][2 * r], o[nt][2 * r + 1]);
    }
  }
  __syncthreads();
  const int64_t out0 = (bi * a.hq + h0) * a.splits + blockIdx.y;  // of head h0; head h adds h·splits
  for (int e = tid; e < nh * P; e += kMmaThreads) {
    const int h = e / P, d = e % P;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < 4; ++w) M = fmaxf(M, mw[w * kMmaHeads + h]);  // finite: warp 0 holds the split's first key
    float O = 0.f, L = 0.f;
#pragma unroll
    for (int w = 0; w < 4; ++w) {
      const float f = expf(mw[w * kMmaHeads + h] - M);
      O = fmaf(ow[(w * kMmaHeads + h) * P + d], f, O);
      L = fmaf(lw[w * kMmaHeads + h], f, L);
    }
    a.po[(out0 + int64_t(h) * a.splits) * P + d] = O;
    if (d == 0) {
      a.pm[out0 + int64_t(h) * a.splits] = M;
      a.pl[out0 + int64_t(h) * a.splits] = L;
    }
  }
}

// One block per (batch, query head) over the splits that hold keys. The maximum M and
// the sum L = Σ_s l_s·e^(m_s − M) are reduced over the block in a fixed tree; for the
// output the threads form `groups` row groups, group g summing splits g, g + groups, ..
// in order over float4 columns (when p allows), then the groups' sums are added in
// order. The order depends on the shapes and lengths alone: the bits repeat.
constexpr int kCombineThreads = 256;

__host__ __device__ constexpr int combine_vec(int p) { return p % 4 == 0 ? 4 : 1; }
__host__ __device__ constexpr int combine_groups(int p) {
  return kCombineThreads / (p / combine_vec(p)) > 1 ? kCombineThreads / (p / combine_vec(p)) : 1;
}

template <class T>
__global__ void __launch_bounds__(kCombineThreads) decode_combine_kernel(DecodeArgs a, T* __restrict__ out) {
  extern __shared__ float4 smem4[];
  __shared__ float red[32];
  float* part = reinterpret_cast<float*>(smem4);  // [groups][p] the row groups' sums
  const int tid = threadIdx.x, p = a.p, vec = combine_vec(p), units = p / vec, groups = combine_groups(p);
  float* w = part + groups * p;                   // [splits] weights e^(m_s − M)
  const int64_t bh = blockIdx.x, bi = bh / a.hq;
  wait_for_primary();
  const int64_t n = valid_len(a.lens, bi, a.max_len);
  const int64_t per = split_chunks(n, a.splits);
  const int ns = per > 0 ? int(((n + kKeys - 1) / kKeys + per - 1) / per) : 0;
  const float* m = a.pm + bh * a.splits;
  const float* l = a.pl + bh * a.splits;
  const float* o = a.po + bh * a.splits * p;
  float mx = -INFINITY;
  for (int s = tid; s < ns; s += kCombineThreads) mx = fmaxf(mx, m[s]);
  for (int k = 16; k > 0; k >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, k));
  if ((tid & 31) == 0) red[tid >> 5] = mx;
  __syncthreads();
  float M = -INFINITY;
  for (int k = 0; k < kCombineThreads / 32; ++k) M = fmaxf(M, red[k]);
  float ls = 0.f;
  for (int s = tid; s < ns; s += kCombineThreads) {
    const float e = expf(m[s] - M);
    w[s] = e;
    ls = fmaf(l[s], e, ls);
  }
  const float L = block_sum(ls, red);  // its barriers also publish w
  for (int e = tid; e < units * groups; e += kCombineThreads) {
    const int g = e / units, c = (e % units) * vec;
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    if (vec == 4) {
#pragma unroll 4
      for (int s = g; s < ns; s += groups) {
        const float4 v = *reinterpret_cast<const float4*>(o + int64_t(s) * p + c);
        acc[0] = fmaf(v.x, w[s], acc[0]), acc[1] = fmaf(v.y, w[s], acc[1]);
        acc[2] = fmaf(v.z, w[s], acc[2]), acc[3] = fmaf(v.w, w[s], acc[3]);
      }
    } else {
#pragma unroll 4
      for (int s = g; s < ns; s += groups) acc[0] = fmaf(o[int64_t(s) * p + c], w[s], acc[0]);
    }
    for (int k = 0; k < vec; ++k) part[g * p + c + k] = acc[k];
  }
  __syncthreads();
  for (int d = tid; d < p; d += kCombineThreads) {
    float acc = 0.f;
    for (int g = 0; g < groups; ++g) acc += part[g * p + d];
    out[bh * p + d] = from_f32<T>(ns > 0 ? acc / L : 0.f);
  }
}

int multiprocessors(int dev) {
  int n = 0;
  MT_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  return n > 0 ? n : 1;
}

int max_smem(int dev) {
  int n = 0;
  MT_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  return n;
}

}  // namespace

void kv_cache_append(const Tensor& k, const Tensor& v, Tensor& k_cache, Tensor& v_cache, Tensor& cache_lens) {
  const int dev = k.device().index;
  DeviceGuard guard(dev);
  const int64_t b = k.size(0), row = k.size(1) * k.size(2), max_len = k_cache.size(1);
  if (b == 0) return;
  MT_CHECK(b <= INT32_MAX, ValueError, "kv_cache_append: batch ", b, " is more than this kernel's grid allows");
  visit_bf16_f32(k.dtype(), "kv_cache_append", "k", [&](auto tag) {
    using T = typename decltype(tag)::type;
    kv_append_kernel<T><<<unsigned(b), kAppendThreads, 0, stream(dev)>>>(
        static_cast<const T*>(k.data_ptr()), static_cast<const T*>(v.data_ptr()), static_cast<T*>(k_cache.data_ptr()),
        static_cast<T*>(v_cache.data_ptr()), static_cast<int32_t*>(cache_lens.data_ptr()), max_len, row);
    MT_CUDA_LAUNCH_CHECK();
  });
}

void attention_decode(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& cache_lens,
                      Tensor& out, double scale) {
  const char* op = "attention_decode";
  const int dev = q.device().index;
  DeviceGuard guard(dev);
  const int64_t b = q.size(0), hq = q.size(1), p = q.size(2), max_len = k_cache.size(1), hkv = k_cache.size(2);
  if (b == 0 || hq == 0) return;
  const int64_t group = hq / hkv;
  const size_t max_sm = size_t(max_smem(dev));
  cudaStream_t s = stream(dev);
  visit_bf16_f32(q.dtype(), op, "q", [&](auto tag) {
    using T = typename decltype(tag)::type;
    using Kernel = void (*)(DecodeArgs);
    // bf16 rows of 64 or 128 in 16-byte aligned buffers go to the tensor cores. Else the
    // ring takes rows of whole 16-byte units, p ≤ kThreads (one output column a thread)
    // and what fits in shared memory; other shapes read the caches directly, with fewer
    // query heads a block if their buffers need it.
    const bool mma = std::is_same_v<T, __nv_bfloat16> && (p == 64 || p == 128) &&
                     aligned16({q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr()});
    int heads = int(std::min<int64_t>(group, mma ? kMmaHeads : kMaxHeads));
    const bool staged = !mma && p * int64_t(sizeof(T)) % 16 == 0 && p <= kThreads &&
                        aligned16({k_cache.data_ptr(), v_cache.data_ptr()}) &&
                        decode_smem_bytes(true, p, heads, sizeof(T)) <= max_sm;
    while (!mma && !staged && heads > 1 && decode_smem_bytes(false, p, heads, sizeof(T)) > max_sm) --heads;
    const size_t smem = mma ? (p == 64 ? decode_mma_smem_bytes<64>() : decode_mma_smem_bytes<128>())
                            : decode_smem_bytes(staged, p, heads, sizeof(T));
    MT_CHECK(smem <= max_sm, ValueError, op, ": head dim ", p, " is more than this kernel holds");
    const int threads = mma ? kMmaThreads : kThreads;
    const Kernel kernel = mma        ? (p == 64 ? &decode_mma_kernel<64> : &decode_mma_kernel<128>)
                          : !staged  ? &decode_split_kernel<T, 0, false>
                          : p == 64  ? &decode_split_kernel<T, 64, true>
                          : p == 128 ? &decode_split_kernel<T, 128, true>
                                     : &decode_split_kernel<T, 0, true>;
    if (smem > size_t(kSmemDefault))
      MT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    const int64_t head_groups = (group + heads - 1) / heads, units = b * hkv * head_groups;
    MT_CHECK(units <= INT32_MAX, ValueError, op, ": ", units, " blocks per split are more than the grid allows");
    // Splits: as many as keep the grid within one wave of resident blocks (at least
    // one, at most one a chunk of max_len). Fixed by the shapes and the device alone,
    // so the bits repeat; each sequence deals its own chunks to them on the device.
    int per_sm = 0;
    MT_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem));
    const int64_t slots = int64_t(std::max(per_sm, 1)) * multiprocessors(dev);
    const int64_t chunks = std::max<int64_t>(1, (max_len + kKeys - 1) / kKeys);
    const int64_t splits = std::clamp<int64_t>(slots / units, 1, std::min<int64_t>(chunks, 65535));
    Tensor partial = Tensor::empty({b * hq * splits * (p + 2)}, DType::f32, q.device());
    float* pp = static_cast<float*>(partial.data_ptr());
    // o first: the combine reads it as float4 (the buffer is 16-byte aligned).
    float* po = pp;
    float* pm = po + b * hq * splits * p;
    const DecodeArgs a{q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(),
                       static_cast<const int32_t*>(cache_lens.data_ptr()), pm, pm + b * hq * splits, po, max_len,
                       int(hq), int(hkv), int(p), heads, int(head_groups), int(splits), float(scale)};
    kernel<<<dim3(unsigned(units), unsigned(splits)), threads, smem, s>>>(a);
    MT_CUDA_LAUNCH_CHECK();
    const size_t csmem = (size_t(combine_groups(int(p))) * size_t(p) + size_t(splits)) * 4;
    MT_CHECK(csmem + 32 * sizeof(float) <= max_sm, ValueError, op, ": head dim ", p, " with ", splits,
             " splits is more than the combine kernel holds");
    if (csmem > size_t(kSmemDefault))
      MT_CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(&decode_combine_kernel<T>),
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, int(csmem)));
    MT_CHECK(b * hq <= INT32_MAX, ValueError, op, ": ", b * hq, " (batch, head) pairs are more than the grid allows");
    cudaLaunchConfig_t cfg{};
    cfg.gridDim = dim3(unsigned(b * hq));
    cfg.blockDim = dim3(kCombineThreads);
    cfg.dynamicSmemBytes = csmem;
    cfg.stream = s;
    cudaLaunchAttribute pdl{};
    pdl.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    pdl.val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = &pdl;
    cfg.numAttrs = 1;
    MT_CUDA_CHECK(cudaLaunchKernelEx(&cfg, &decode_combine_kernel<T>, a, static_cast<T*>(out.data_ptr())));
  });
}

}  // namespace mambatron::cuda
