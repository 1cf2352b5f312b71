// What the SSD's mma.sync kernels share (bf16 activations; ssd_output_mma.cu,
// ssd_chunk_state_mma.cu, ssd_backward_dx_mma.cu, ssd_backward_bc_mma.cu): f32 state
// blocks staged in shared memory and multiplied as a sum of bf16 parts, small fragment
// helpers, and the entry points that ssd_forward.cu and ssd_states.cu dispatch to.
#pragma once
#include "mma_bf16.cuh"
#include "ssd_common.cuh"

namespace mambatron::cuda::ssd {

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Whether two blocks of `bytes` dynamic shared memory fit an SM (228 KB, 1 KB of it
// reserved per block).
constexpr bool fits_two_blocks(size_t bytes) { return 2 * (bytes + 1024) <= 228 * 1024; }

// The rows × cols f32 block at src (row stride `stride` floats) into shared rows of
// pitch ld floats, asynchronously (cols and ld multiples of 4, src 16-byte aligned).
template <int kThreads>
__device__ __forceinline__ void load_f32_async(float* dst, int ld, const float* __restrict__ src, int64_t stride,
                                               int rows, int cols) {
  const int pieces = cols / 4;
  for (int e = threadIdx.x; e < rows * pieces; e += kThreads) {
    const int r = e / pieces, c4 = (e - r * pieces) * 4;
    cp_async<16>(dst + r * ld + c4, src + r * stride + c4);
  }
}

// x ≈ r[0] + … + r[N − 1], each bf16, for a pair (packed as an mma operand register).
template <int N>
__device__ __forceinline__ void split_parts(float x0, float x1, uint32_t (&r)[N]) {
#pragma unroll
  for (int k = 0; k < N; ++k) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(x0, x1);
    const float2 hf = __bfloat1622float2(h);
    r[k] = *reinterpret_cast<const uint32_t*>(&h);
    x0 -= hf.x, x1 -= hf.y;
  }
}

// Eight consecutive f32 values (a, b) of a state as bf16 hi and lo parts, stored at
// element `at` of the hi and lo planes (16 bytes each).
__device__ __forceinline__ void put_parts8(__nv_bfloat16* hi, __nv_bfloat16* lo, int at, const float4& a,
                                           const float4& b) {
  uint4 h, l;
  mma_bf16::split_bf16(a.x, a.y, h.x, l.x), mma_bf16::split_bf16(a.z, a.w, h.y, l.y);
  mma_bf16::split_bf16(b.x, b.y, h.z, l.z), mma_bf16::split_bf16(b.z, b.w, h.w, l.w);
  *reinterpret_cast<uint4*>(hi + at) = h, *reinterpret_cast<uint4*>(lo + at) = l;
}

// The f32 state [64][kN] at src (row p, column n, rows kN apart, 16-byte aligned) as hi
// and lo bf16 planes, each a swizzled [64][kN] tile, by kThreads threads of which this
// is number tid: each value is split once for the block, and the products read the
// planes with ldmatrix (gemm_abt). A barrier comes before their use.
template <int kN, int kThreads>
__device__ __forceinline__ void stage_state_planes(__nv_bfloat16* hi, __nv_bfloat16* lo, const float* __restrict__ src,
                                                   int tid) {
  constexpr int kC = kN / 8, kItems = 64 * kC / kThreads;
  static_assert(64 * kC % kThreads == 0, "stage_state_planes: whole items per thread");
  float4 v[kItems][2];
#pragma unroll
  for (int i = 0; i < kItems; ++i) {  // every load in flight before the first split
    const float4* p = reinterpret_cast<const float4*>(src + 8 * (tid + i * kThreads));
    v[i][0] = p[0], v[i][1] = p[1];
  }
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int e = tid + i * kThreads, r = e / kC;
    put_parts8(hi, lo, mma_bf16::swz<kN>(r, e - r * kC), v[i][0], v[i][1]);
  }
}

// The pair (col, col + 1) of row r of a swizzled [..][64] bf16 tile, col even.
__device__ __forceinline__ float2 tile_pair(const __nv_bfloat16* tile, int r, int col) {
  return __bfloat1622float2(
      *reinterpret_cast<const __nv_bfloat162*>(tile + mma_bf16::swz<64>(r, col >> 3) + (col & 7)));
}

// The sum over the four lanes of a fragment row (lanes 4g .. 4g + 3), in a fixed tree.
__device__ __forceinline__ double quad_sum(double v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  v += __shfl_xor_sync(0xffffffffu, v, 2);
  return v;
}

// An f32 16×16 tile in C-fragment layout (two n8 tiles c[0], c[1]) as the A fragment
// of its hi and lo bf16 parts.
__device__ __forceinline__ void c_to_a_split(const float (&c)[2][4], uint32_t (&hi)[4], uint32_t (&lo)[4]) {
  using mma_bf16::split_bf16;
  split_bf16(c[0][0], c[0][1], hi[0], lo[0]);
  split_bf16(c[0][2], c[0][3], hi[1], lo[1]);
  split_bf16(c[1][0], c[1][1], hi[2], lo[2]);
  split_bf16(c[1][2], c[1][3], hi[3], lo[3]);
}

// acc[nt] (a warp's 16 rows × P columns) += (hi + lo)·B: hi, lo the A fragments of a
// 16×16 operand in two bf16 parts, B the rows r0 .. r0 + 15 of a swizzled [..][P] tile.
template <int P>
__device__ __forceinline__ void gemm_split_a(float (&acc)[P / 8][4], const uint32_t (&hi)[4], const uint32_t (&lo)[4],
                                             const __nv_bfloat16* b_tile, int r0) {
  using namespace mma_bf16;
#pragma unroll
  for (int np = 0; np < P / 16; ++np) {
    uint32_t b[4];
    ldsm_x4_t(b, a_addr<P>(b_tile, r0, 2 * np));
    mma(acc[2 * np], hi, b[0], b[1]);
    mma(acc[2 * np], lo, b[0], b[1]);
    mma(acc[2 * np + 1], hi, b[2], b[3]);
    mma(acc[2 * np + 1], lo, b[2], b[3]);
  }
}

// tile (16 × 16, two n8 tiles) = A·Bᵀ over 64 columns: A given as fragments a[ks]
// (held in registers), B the rows r0 .. r0 + 15 of a swizzled [..][64] tile.
__device__ __forceinline__ void tile_abt(float (&tile)[2][4], const uint32_t (&a)[4][4], const __nv_bfloat16* b_tile,
                                         int r0) {
  using namespace mma_bf16;
  zero_frags(tile);
#pragma unroll
  for (int ks = 0; ks < 4; ++ks) {
    uint32_t b[4];
    ldsm_x4(b, b_addr<64>(b_tile, r0, 2 * ks));
    mma(tile[0], a[ks], b[0], b[1]);
    mma(tile[1], a[ks], b[2], b[3]);
  }
}

// The forward's output on mma.sync: bf16, p 64, n 64 or 128, 16-byte aligned rows.
bool output_mma_supported(const Dims& d, const void* x, const void* C, const void* y, const float* states);
void launch_output_mma(const Dims& d, const __nv_bfloat16* x, const __nv_bfloat16* C, const float* D, const double* S,
                       const float* delta, const int32_t* seq, const float* states, const float* K, __nv_bfloat16* y,
                       cudaStream_t s);

// A chunk's own state on mma.sync (ssd_chunk_state_mma.cu): bf16, p 64, n 64 or 128,
// 16-byte aligned rows; launch_state_pass takes it where it applies.
bool chunk_state_mma_supported(const Dims& d, const void* X, const void* Bm, const float* states);
void launch_chunk_state_mma(const Dims& d, bool reverse, const __nv_bfloat16* X, const __nv_bfloat16* Bm,
                            const float* delta, const double* S, const int32_t* seq, float* states, cudaStream_t s);

}  // namespace mambatron::cuda::ssd
