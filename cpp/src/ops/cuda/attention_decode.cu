// KV-cache append and one-token decode attention on CUDA.
// Append: one block per sequence copies its token's k and v into the caches at
// position cache_lens[i], then bumps cache_lens[i] (the caller checked the lengths).
// Decode, split-K: the context of each sequence is cut into splits of a length
// fixed by max_len and the device's size; one block per (batch, kv head, group of
// up to 8 query heads, split) reads each key and value of its split once for all
// its query heads, keeping an online softmax (max m, sum l, unnormalised o) in f32.
// A second kernel combines the splits of each query head in an order fixed by the
// shapes: out = Σ_s o_s·e^(m_s − M) / Σ_s l_s·e^(m_s − M). No atomics: the bits repeat.
#include <algorithm>
#include <cmath>

#include "attention.h"
#include "attention_mma.cuh"
#include "dense.cuh"

namespace mambatron::cuda {

namespace {
constexpr int kAppendThreads = 256;
constexpr int kThreads = 128;    // decode block
constexpr int kChunk = 128;      // keys per step of a split (the split length is a multiple)
constexpr int kMaxHeads = 8;     // query heads per block
constexpr int kKeyLanes = 8;     // lanes per key in the score step
constexpr int kSmemDefault = 48 * 1024;

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
  int64_t max_len, slen;
  int hq, hkv, p, heads, head_groups, splits;
  float scale;
};

// V consecutive elements of a row as f32: one 16-byte load when V > 1.
template <class T, int V>
__device__ __forceinline__ void load_f32(const T* __restrict__ p, float (&out)[V]) {
  if constexpr (V == 1) {
    out[0] = to_f32(p[0]);
  } else {
    static_assert(Pack<T>::N == V, "one 16-byte pack");
    const Pack<T> pk = *reinterpret_cast<const Pack<T>*>(p);
#pragma unroll
    for (int e = 0; e < V; ++e) out[e] = to_f32(pk.v[e]);
  }
}

__device__ __forceinline__ int64_t valid_len(const int32_t* lens, int64_t bi, int64_t max_len) {
  const int64_t n = lens[bi];
  return n < 0 ? 0 : (n > max_len ? max_len : n);
}

template <class T, int V>
__global__ void __launch_bounds__(kThreads) decode_split_kernel(DecodeArgs a) {
  extern __shared__ float4 smem4[];
  const int gh = a.heads, p = a.p;
  float* q_s = reinterpret_cast<float*>(smem4);  // [gh][p]
  float* o_s = q_s + gh * p;                     // [gh][p]
  float* sc = o_s + gh * p;                      // [gh][kChunk]: scores, then weights
  float* m_s = sc + gh * kChunk;
  float* l_s = m_s + gh;
  float* al_s = l_s + gh;

  const int64_t bx = blockIdx.x, bkv = bx / a.head_groups, bi = bkv / a.hkv;
  const int hg = int(bx % a.head_groups), kvh = int(bkv % a.hkv), group = a.hq / a.hkv;
  const int h0 = kvh * group + hg * gh, nh = min(gh, group - hg * gh);
  const int64_t n = valid_len(a.lens, bi, a.max_len);
  const int64_t s0 = int64_t(blockIdx.y) * a.slen, s1 = min(n, s0 + a.slen);
  if (s0 >= s1) return;  // past the sequence's length: the combine does not read this split

  const T* q = static_cast<const T*>(a.q) + (bi * a.hq + h0) * p;
  for (int e = threadIdx.x; e < nh * p; e += kThreads) q_s[e] = to_f32(q[e]), o_s[e] = 0.f;
  if (threadIdx.x < nh) m_s[threadIdx.x] = -INFINITY, l_s[threadIdx.x] = 0.f;
  const int64_t row = int64_t(a.hkv) * p;  // elements between tokens of a cache
  const T* kb = static_cast<const T*>(a.kc) + bi * a.max_len * row + int64_t(kvh) * p;
  const T* vb = static_cast<const T*>(a.vc) + bi * a.max_len * row + int64_t(kvh) * p;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int gl = lane % kKeyLanes, slot0 = warp * (32 / kKeyLanes) + lane / kKeyLanes;
  constexpr int kSlots = kThreads / kKeyLanes;  // keys scored at once

  for (int64_t j0 = s0; j0 < s1; j0 += kChunk) {
    const int cn = int(min(int64_t(kChunk), s1 - j0));
    __syncthreads();  // q_s, o_s, m_s ready; the previous chunk's weights are read no more
    for (int kk = slot0; kk < kChunk; kk += kSlots) {
      float acc[kMaxHeads];
#pragma unroll
      for (int h = 0; h < kMaxHeads; ++h) acc[h] = 0.f;
      if (kk < cn) {
        const T* kr = kb + (j0 + kk) * row;
        for (int d = gl * V; d < p; d += kKeyLanes * V) {
          float kv[V];
          load_f32<T, V>(kr + d, kv);
#pragma unroll
          for (int h = 0; h < kMaxHeads; ++h)
            if (h < nh)
#pragma unroll
              for (int e = 0; e < V; ++e) acc[h] = fmaf(q_s[h * p + d + e], kv[e], acc[h]);
        }
      }
#pragma unroll
      for (int h = 0; h < kMaxHeads; ++h)
        for (int o = kKeyLanes / 2; o > 0; o >>= 1) acc[h] += __shfl_xor_sync(0xffffffffu, acc[h], o);
      if (gl == 0)
#pragma unroll
        for (int h = 0; h < kMaxHeads; ++h)
          if (h < nh) sc[h * kChunk + kk] = kk < cn ? acc[h] * a.scale : -INFINITY;
    }
    __syncthreads();
    for (int h = warp; h < nh; h += kThreads / 32) {  // one warp per head: running max and sum
      float x[kChunk / 32], mx = -INFINITY;
#pragma unroll
      for (int u = 0; u < kChunk / 32; ++u) x[u] = sc[h * kChunk + lane + 32 * u], mx = fmaxf(mx, x[u]);
      for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      const float mnew = fmaxf(m_s[h], mx);  // finite: key j0 is in the split
      float sum = 0.f;
#pragma unroll
      for (int u = 0; u < kChunk / 32; ++u) {
        const float w = expf(x[u] - mnew);
        sc[h * kChunk + lane + 32 * u] = w;
        sum += w;
      }
      for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
      if (lane == 0) {
        const float al = expf(m_s[h] - mnew);
        l_s[h] = l_s[h] * al + sum;
        m_s[h] = mnew;
        al_s[h] = al;
      }
    }
    __syncthreads();
    for (int d = threadIdx.x; d < p; d += kThreads) {  // o = al·o + Σ_k w_k v_k, keys in order
      float acc[kMaxHeads];
#pragma unroll
      for (int h = 0; h < kMaxHeads; ++h) acc[h] = h < nh ? o_s[h * p + d] * al_s[h] : 0.f;
#pragma unroll 8
      for (int kk = 0; kk < cn; ++kk) {
        const float x = to_f32(vb[(j0 + kk) * row + d]);
#pragma unroll
        for (int h = 0; h < kMaxHeads; ++h)
          if (h < nh) acc[h] = fmaf(sc[h * kChunk + kk], x, acc[h]);
      }
#pragma unroll
      for (int h = 0; h < kMaxHeads; ++h)
        if (h < nh) o_s[h * p + d] = acc[h];
    }
  }
  __syncthreads();
  const int64_t slot = (bi * a.hq + h0) * a.splits + blockIdx.y;  // of head h0; head h adds h·splits
  for (int e = threadIdx.x; e < nh * p; e += kThreads) {
    const int h = e / p, d = e % p;
    a.po[(slot + int64_t(h) * a.splits) * p + d] = o_s[e];
  }
  if (threadIdx.x < nh) {
    a.pm[slot + int64_t(threadIdx.x) * a.splits] = m_s[threadIdx.x];
    a.pl[slot + int64_t(threadIdx.x) * a.splits] = l_s[threadIdx.x];
  }
}

// The bf16 path for head dim 64 or 128: one block per (batch, kv head, group of up
// to 8 query heads, 128 keys). The block's keys and values (up to 64 KiB) are all
// requested at once with 16-byte cp.async, so many bytes are in flight per SM;
// then thread r scores key r against the block's query heads, one warp per head
// takes the softmax, and thread d sums its output column over the keys in order.
// Writes the same partials as decode_split_kernel (one split = 128 keys).
constexpr int kFastKeys = 128;

template <int P>
constexpr size_t fast_smem_bytes() {
  return size_t(2 * kFastKeys * P) * 2 + size_t(kMaxHeads) * (P + kFastKeys + 2) * 4;
}

template <int P>
__global__ void __launch_bounds__(kFastKeys) decode_fast_kernel(DecodeArgs a) {
  using namespace attn_mma;
  using bf16 = __nv_bfloat16;
  extern __shared__ uint4 smem_raw[];
  bf16* k_s = reinterpret_cast<bf16*>(smem_raw);     // [kFastKeys][P], swizzled
  bf16* v_s = k_s + kFastKeys * P;                    // [kFastKeys][P], plain rows
  float* q_s = reinterpret_cast<float*>(v_s + kFastKeys * P);  // [kMaxHeads][P]
  float* w_s = q_s + kMaxHeads * P;                   // [kMaxHeads][kFastKeys]: scores, then weights
  float* m_s = w_s + kMaxHeads * kFastKeys;
  float* l_s = m_s + kMaxHeads;

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t bx = blockIdx.x, bkv = bx / a.head_groups, bi = bkv / a.hkv;
  const int hg = int(bx % a.head_groups), kvh = int(bkv % a.hkv), group = a.hq / a.hkv;
  const int h0 = kvh * group + hg * a.heads, nh = min(a.heads, group - hg * a.heads);
  const int64_t n = valid_len(a.lens, bi, a.max_len), j0 = int64_t(blockIdx.y) * kFastKeys;
  if (j0 >= n) return;  // the combine does not read this split
  const int cn = int(min(int64_t(kFastKeys), n - j0));
  const int64_t row = int64_t(a.hkv) * P;
  const bf16* kb = static_cast<const bf16*>(a.kc) + (bi * a.max_len + j0) * row + int64_t(kvh) * P;
  const bf16* vb = static_cast<const bf16*>(a.vc) + (bi * a.max_len + j0) * row + int64_t(kvh) * P;
  constexpr int C = P / 8;
#pragma unroll 4
  for (int e = tid; e < kFastKeys * C; e += kFastKeys) {
    const int r = e / C, c = e % C;
    const bool ok = r < cn;
    cp_async<16>(k_s + swz<P>(r, c), kb + (ok ? r : 0) * row + c * 8, ok);
    cp_async<16>(v_s + r * P + c * 8, vb + (ok ? r : 0) * row + c * 8, ok);
  }
  cp_commit();
  const bf16* q = static_cast<const bf16*>(a.q) + (bi * a.hq + h0) * P;
  for (int e = tid; e < nh * P; e += kFastKeys) q_s[e] = __bfloat162float(q[e]);
  cp_wait_all();
  __syncthreads();

  {  // scores: thread tid takes key tid
    float acc[kMaxHeads];
#pragma unroll
    for (int h = 0; h < kMaxHeads; ++h) acc[h] = 0.f;
#pragma unroll 4
    for (int c = 0; c < C; ++c) {
      const uint4 raw = *reinterpret_cast<const uint4*>(k_s + swz<P>(tid, c));
      const __nv_bfloat162* kp = reinterpret_cast<const __nv_bfloat162*>(&raw);
      float kv[8];
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float2 f = __bfloat1622float2(kp[e]);
        kv[2 * e] = f.x, kv[2 * e + 1] = f.y;
      }
#pragma unroll
      for (int h = 0; h < kMaxHeads; ++h)
        if (h < nh)
#pragma unroll
          for (int e = 0; e < 8; ++e) acc[h] = fmaf(q_s[h * P + c * 8 + e], kv[e], acc[h]);
    }
#pragma unroll
    for (int h = 0; h < kMaxHeads; ++h)
      if (h < nh) w_s[h * kFastKeys + tid] = tid < cn ? acc[h] * a.scale : -INFINITY;
  }
  __syncthreads();
  for (int h = warp; h < nh; h += kFastKeys / 32) {  // one warp per head
    float x[kFastKeys / 32], mx = -INFINITY;
#pragma unroll
    for (int u = 0; u < kFastKeys / 32; ++u) x[u] = w_s[h * kFastKeys + lane + 32 * u], mx = fmaxf(mx, x[u]);
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float sum = 0.f;
#pragma unroll
    for (int u = 0; u < kFastKeys / 32; ++u) {
      const float w = expf(x[u] - mx);  // finite mx: key j0 is valid
      w_s[h * kFastKeys + lane + 32 * u] = w;
      sum += w;
    }
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (lane == 0) m_s[h] = mx, l_s[h] = sum;
  }
  __syncthreads();
  // o[h][d] = Σ_k w[h][k]·v[k][d], keys in order; KS threads share a column
  // (P = 64: keys split in two halves, added in order after).
  constexpr int KS = kFastKeys / P;
  const int d = tid % P, part = tid / P, k_end = min(cn, (part + 1) * (kFastKeys / KS));
  float acc[kMaxHeads];
#pragma unroll
  for (int h = 0; h < kMaxHeads; ++h) acc[h] = 0.f;
#pragma unroll 4
  for (int kk = part * (kFastKeys / KS); kk < k_end; ++kk) {
    const float x = __bfloat162float(v_s[kk * P + d]);
#pragma unroll
    for (int h = 0; h < kMaxHeads; ++h)
      if (h < nh) acc[h] = fmaf(w_s[h * kFastKeys + kk], x, acc[h]);
  }
  const int64_t slot = (bi * a.hq + h0) * a.splits + blockIdx.y;  // of head h0; head h adds h·splits
  if constexpr (KS == 2) {
    __syncthreads();  // w_s is read no more: it takes the second half's sums
    if (part == 1)
#pragma unroll
      for (int h = 0; h < kMaxHeads; ++h)
        if (h < nh) w_s[h * kFastKeys + d] = acc[h];
    __syncthreads();
    if (part == 1) return;
#pragma unroll
    for (int h = 0; h < kMaxHeads; ++h)
      if (h < nh) acc[h] += w_s[h * kFastKeys + d];
  }
#pragma unroll
  for (int h = 0; h < kMaxHeads; ++h)
    if (h < nh) a.po[(slot + int64_t(h) * a.splits) * P + d] = acc[h];
  if (tid < nh) {
    a.pm[slot + int64_t(tid) * a.splits] = m_s[tid];
    a.pl[slot + int64_t(tid) * a.splits] = l_s[tid];
  }
}

// One block per (batch, query head) over the splits that hold keys. The maximum M and
// the sum L = Σ_s l_s·e^(m_s − M) are reduced over the block in a fixed tree; for the
// output the threads form `groups` row groups, group g summing splits g, g + groups, ..
// in order over float4 columns (when p allows), then the groups' sums are added in
// order. The order depends on the shapes alone: the bits repeat.
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
  const int64_t n = valid_len(a.lens, bi, a.max_len);
  const int ns = int((n + a.slen - 1) / a.slen);
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

size_t split_smem_bytes(int heads, int64_t p) { return size_t(heads) * (2 * size_t(p) + kChunk + 3) * 4; }
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
  // Query heads per block: up to 8 of a kv head's group, fewer when p is large.
  int heads = int(std::min<int64_t>(group, kMaxHeads));
  while (heads > 1 && split_smem_bytes(heads, p) > size_t(kSmemDefault)) --heads;
  const size_t smem = split_smem_bytes(heads, p);
  MT_CHECK(smem <= size_t(max_smem(dev)), ValueError, op, ": head dim ", p, " is more than this kernel holds");
  const int64_t head_groups = (group + heads - 1) / heads, units = b * hkv * head_groups;
  MT_CHECK(units <= INT32_MAX, ValueError, op, ": ", units, " blocks per split are more than the grid allows");
  // Splits: enough blocks to fill the device ~16 times over, each split a whole number of
  // chunks. Fixed by the shapes and the device alone, so the bits repeat.
  const int64_t chunks = std::max<int64_t>(1, (max_len + kChunk - 1) / kChunk);
  const int64_t want = std::max<int64_t>(1, (16 * int64_t(multiprocessors(dev)) + units - 1) / units);
  int64_t per_split = std::max<int64_t>((chunks + want - 1) / want, (chunks + 65534) / 65535);
  // The bf16 path of p 64 or 128 takes one 128-key split per block, up to 16384 splits
  // (2M keys): the combine kernel holds 4 bytes of shared memory per split (64 KB).
  constexpr int64_t kMaxFastSplits = 16384;
  const bool fast = q.dtype() == DType::bf16 && (p == 64 || p == 128) && chunks <= kMaxFastSplits &&
                    aligned16({k_cache.data_ptr(), v_cache.data_ptr()});
  static_assert(kFastKeys == kChunk, "a fast split is one chunk");
  if (fast) per_split = 1;
  const int64_t splits = (chunks + per_split - 1) / per_split;
  Tensor partial = Tensor::empty({b * hq * splits * (p + 2)}, DType::f32, q.device());
  float* pp = static_cast<float*>(partial.data_ptr());
  // o first: the combine reads it as float4 (the buffer is 16-byte aligned).
  float* po = pp;
  float* pm = po + b * hq * splits * p;
  DecodeArgs a{q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(),
               static_cast<const int32_t*>(cache_lens.data_ptr()), pm, pm + b * hq * splits, po, max_len, per_split * kChunk, int(hq), int(hkv), int(p), heads,
               int(head_groups), int(splits), float(scale)};
  cudaStream_t s = stream(dev);
  visit_bf16_f32(q.dtype(), op, "q", [&](auto tag) {
    using T = typename decltype(tag)::type;
    constexpr int V = 16 / sizeof(T);
    const bool vec = p % V == 0 && aligned16({k_cache.data_ptr(), v_cache.data_ptr()});
    const dim3 grid{unsigned(units), unsigned(splits)};
    if (fast) {  // bf16 only
      const void* kernel = p == 64 ? reinterpret_cast<const void*>(&decode_fast_kernel<64>)
                                   : reinterpret_cast<const void*>(&decode_fast_kernel<128>);
      const int fsmem = int(p == 64 ? fast_smem_bytes<64>() : fast_smem_bytes<128>());
      MT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, fsmem));
      if (p == 64) decode_fast_kernel<64><<<grid, kFastKeys, fsmem, s>>>(a);
      else decode_fast_kernel<128><<<grid, kFastKeys, fsmem, s>>>(a);
    } else if (vec) {
      if (smem > size_t(kSmemDefault))
        MT_CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(&decode_split_kernel<T, V>),
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
      decode_split_kernel<T, V><<<grid, kThreads, smem, s>>>(a);
    } else {
      if (smem > size_t(kSmemDefault))
        MT_CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(&decode_split_kernel<T, 1>),
                                           cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
      decode_split_kernel<T, 1><<<grid, kThreads, smem, s>>>(a);
    }
    MT_CUDA_LAUNCH_CHECK();
    const size_t csmem = (size_t(combine_groups(int(p))) * size_t(p) + size_t(splits)) * 4;
    MT_CHECK(csmem + 32 * sizeof(float) <= size_t(max_smem(dev)), ValueError, op, ": head dim ", p, " with ", splits,
             " splits is more than the combine kernel holds");
    if (csmem > size_t(kSmemDefault))
      MT_CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(&decode_combine_kernel<T>),
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, int(csmem)));
    MT_CHECK(b * hq <= INT32_MAX, ValueError, op, ": ", b * hq, " (batch, head) pairs are more than the grid allows");
    decode_combine_kernel<T><<<unsigned(b * hq), kCombineThreads, csmem, s>>>(a, static_cast<T*>(out.data_ptr()));
    MT_CUDA_LAUNCH_CHECK();
  });
}

}  // namespace mambatron::cuda
