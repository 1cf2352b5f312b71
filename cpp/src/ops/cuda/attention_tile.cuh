// Tiles shared by the attention forward and backward kernels (f32 on CUDA cores).
// A block of kThreads = 256 threads works on 64 × 64 tiles of scores: thread
// tid = ty·16 + tx owns rows ty·4 + i and columns tx·4 + j (i, j < 4), so the 16
// threads of one row group are one half-warp and row reductions are shuffles.
// Products over the head dim go through shared memory in chunks of kChunk
// elements, so any p works; the P·V-like products write PO output columns
// (32, 64 or 128) per block, more columns taking more blocks.
#pragma once
#include <climits>
#include <cstdint>
#include <type_traits>

#include "dense.cuh"

namespace mambatron::cuda::attn {

constexpr int kTile = 64;     // queries and keys per tile
constexpr int kThreads = 256;
constexpr int kChunk = 32;    // head-dim elements per step of a score product
constexpr int kPad = 68;      // row length of 64-wide shared tiles: float4-aligned, fewer bank conflicts

// Shared-memory floats of the pieces below.
constexpr int kChunkFloats = kChunk * kPad;
constexpr int kTileFloats = kTile * kPad;

__device__ __forceinline__ int tid_x() { return threadIdx.x & 15; }
__device__ __forceinline__ int tid_y() { return threadIdx.x >> 4; }

// Output column of a thread's jj-th accumulator in a PO-wide slice: float4 groups
// at stride 64 (float2 for PO = 32), so a quarter-warp reads 32 consecutive floats.
template <int PO>
__device__ __forceinline__ int slice_col(int tx, int jj) {
  if constexpr (PO == 32) return tx * 2 + jj;
  else return (jj / 4) * 64 + tx * 4 + (jj % 4);
}

// Reductions over the 16 threads of a row group (a half-warp), in a fixed tree.
__device__ __forceinline__ float group_max(float v) {
  for (int o = 8; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float group_sum(float v) {
  for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// dst[d·kPad + r] = x[(row0 + r)·stride + d0 + d] for r < 64, d < kChunk; zero
// outside rows [0, len) and columns [0, p).
template <class T>
__device__ __forceinline__ void load_chunk(float* dst, const T* __restrict__ x, int64_t stride, int64_t row0,
                                           int64_t len, int d0, int p) {
  for (int e = threadIdx.x; e < kTile * kChunk; e += kThreads) {
    const int r = e / kChunk, d = e % kChunk;
    const int64_t row = row0 + r;
    float v = 0.f;
    if (row < len && d0 + d < p) v = to_f32(x[row * stride + d0 + d]);
    dst[d * kPad + r] = v;
  }
}

// acc[i][j] = Σ_d A[a0 + ty·4 + i][d] · B[b0 + tx·4 + j][d] over the whole head dim,
// chunk by chunk through a_s and b_s. Starts with a barrier, so the caller may
// reuse any shared tile read before the call.
template <class T>
__device__ __forceinline__ void score_tile(float (&acc)[4][4], float* a_s, float* b_s, const T* __restrict__ a,
                                           int64_t a_stride, int64_t a0, const T* __restrict__ b, int64_t b_stride,
                                           int64_t b0, int64_t len, int p) {
  const int tx = tid_x(), ty = tid_y();
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;
  for (int d0 = 0; d0 < p; d0 += kChunk) {
    __syncthreads();
    load_chunk(a_s, a, a_stride, a0, len, d0, p);
    load_chunk(b_s, b, b_stride, b0, len, d0, p);
    __syncthreads();
#pragma unroll 8
    for (int d = 0; d < kChunk; ++d) {
      const float4 av = *reinterpret_cast<const float4*>(a_s + d * kPad + ty * 4);
      const float4 bv = *reinterpret_cast<const float4*>(b_s + d * kPad + tx * 4);
      const float ar[4] = {av.x, av.y, av.z, av.w}, br[4] = {bv.x, bv.y, bv.z, bv.w};
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(ar[i], br[j], acc[i][j]);
    }
  }
}

// Row ty·4 + i of a [64][kPad] tile gets v[i][0..3] at columns tx·4 .. tx·4 + 3.
__device__ __forceinline__ void store_tile(float* t, const float (&v)[4][4]) {
  const int tx = tid_x(), ty = tid_y();
#pragma unroll
  for (int i = 0; i < 4; ++i)
    *reinterpret_cast<float4*>(t + (ty * 4 + i) * kPad + tx * 4) = make_float4(v[i][0], v[i][1], v[i][2], v[i][3]);
}

// dst[r·PO + n] = x[(row0 + r)·stride + n0 + n] for r < 64, n < PO; zero outside.
template <int PO, class T>
__device__ __forceinline__ void load_slice(float* dst, const T* __restrict__ x, int64_t stride, int64_t row0,
                                           int64_t len, int n0, int p) {
  for (int e = threadIdx.x; e < kTile * PO; e += kThreads) {
    const int r = e / PO, n = e % PO;
    const int64_t row = row0 + r;
    float v = 0.f;
    if (row < len && n0 + n < p) v = to_f32(x[row * stride + n0 + n]);
    dst[r * PO + n] = v;
  }
}

// acc[i][jj] += Σ_c w[ty·4 + i][c] · x[c][slice_col(jj)], c = 0 .. 63 in order;
// w is a [64][kPad] tile, x a [64][PO] slice.
template <int PO>
__device__ __forceinline__ void product_tile(float (&acc)[4][PO / 16], const float* w_s, const float* x_s) {
  constexpr int NO = PO / 16;
  const int tx = tid_x(), ty = tid_y();
#pragma unroll 2
  for (int c = 0; c < kTile; c += 4) {
    float w[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float4 v = *reinterpret_cast<const float4*>(w_s + (ty * 4 + i) * kPad + c);
      w[i][0] = v.x, w[i][1] = v.y, w[i][2] = v.z, w[i][3] = v.w;
    }
#pragma unroll
    for (int cc = 0; cc < 4; ++cc) {
      float xv[NO];
      const float* xr = x_s + (c + cc) * PO;
      if constexpr (PO == 32) {
        const float2 v = *reinterpret_cast<const float2*>(xr + tx * 2);
        xv[0] = v.x, xv[1] = v.y;
      } else {
#pragma unroll
        for (int g = 0; g < NO / 4; ++g) {
          const float4 v = *reinterpret_cast<const float4*>(xr + g * 64 + tx * 4);
          xv[g * 4] = v.x, xv[g * 4 + 1] = v.y, xv[g * 4 + 2] = v.z, xv[g * 4 + 3] = v.w;
        }
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int jj = 0; jj < NO; ++jj) acc[i][jj] = fmaf(w[i][cc], xv[jj], acc[i][jj]);
    }
  }
}

// Warp 0 loads the document ids of rows row0 .. row0 + 63 into ids (0 for rows
// past len, which are masked by position anyway) and their min and max over the
// rows < len into mm[0], mm[1]. The caller synchronises before reading them.
__device__ __forceinline__ void load_ids(const int32_t* __restrict__ seq, int64_t row0, int64_t len, int* ids,
                                         int* mm) {
  if (threadIdx.x >= 32) return;
  int lo = INT_MAX, hi = INT_MIN;
  for (int r = threadIdx.x; r < kTile; r += 32) {
    int v = 0;
    if (row0 + r < len) {
      v = seq[row0 + r];
      lo = min(lo, v);
      hi = max(hi, v);
    }
    ids[r] = v;
  }
  for (int o = 16; o > 0; o >>= 1) {
    lo = min(lo, __shfl_xor_sync(0xffffffffu, lo, o));
    hi = max(hi, __shfl_xor_sync(0xffffffffu, hi, o));
  }
  if (threadIdx.x == 0) mm[0] = lo, mm[1] = hi;
}

// True when no id in [a[0], a[1]] can equal one in [b[0], b[1]]: the tile pair is all masked.
__device__ __forceinline__ bool disjoint(const int* a, const int* b) { return a[1] < b[0] || b[1] < a[0]; }

// ---------------------------------------------------------------- host side
// Lets `kernel` take `bytes` of dynamic shared memory (more than the default 48 KiB).
inline void allow_smem(const void* kernel, int bytes) {
  MT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
}

// Grid x: `units` (batch × heads), y: 64-row tiles of l, z: PO-column slices of p.
inline dim3 tile_grid(int64_t units, int64_t l, int64_t p, int po, const char* op) {
  const int64_t tiles = (l + kTile - 1) / kTile, slices = (p + po - 1) / po;
  MT_CHECK(tiles <= 65535, ValueError, op, ": sequence length ", l, " is more than this kernel's ",
           65535 * int64_t(kTile), " on CUDA");
  MT_CHECK(units <= INT32_MAX && slices <= 65535, ValueError, op, ": ", units, " (batch, head) pairs and head dim ",
           p, " are more than this kernel's grid allows");
  return dim3(unsigned(units), unsigned(tiles), unsigned(slices));
}

// f(integral_constant<int, PO>) with the slice width for head dim p: the smallest
// of 32, 64, 128 that holds p, else 128 (several slices).
template <class F>
void with_slice_width(int64_t p, F&& f) {
  if (p <= 32) f(std::integral_constant<int, 32>{});
  else if (p <= 64) f(std::integral_constant<int, 64>{});
  else f(std::integral_constant<int, 128>{});
}

}  // namespace mambatron::cuda::attn
