// Tensor-core pieces shared by the bf16 kernels (attention, SSD): mma.sync m16n8k16
// bf16 -> f32, ldmatrix, cp.async, and a swizzled shared-memory layout for [rows][P]
// bf16 tiles. A row of P elements is P/8 chunks of 16 bytes; chunk c of row r sits at
// chunk c ^ (r & 7), so the 8 rows one ldmatrix reads at the same logical chunk fall
// in 8 different bank groups (no conflicts).
//
// Fragments (PTX ISA, m16n8k16): g = lane / 4, t = lane % 4.
//   A 16×16: a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..)
//   B 16×8:  b0 (k 2t..2t+1, n g), b1 (k 2t+8.., n g)
//   C 16×8:  c0 c1 (g, 2t..2t+1), c2 c3 (g+8, 2t..2t+1)
// A C tile pair (two n8 tiles side by side) packed to bf16 is an A fragment, so a
// product's result feeds the next product from registers.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>

#include "async_copy.cuh"
#include "dense.cuh"

namespace mambatron::cuda::mma_bf16 {

// Element offset of (row r, chunk c) in a swizzled [rows][P] tile.
template <int P>
__device__ __forceinline__ int swz(int r, int c) {
  return r * P + ((c ^ (r & 7)) << 3);
}

__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}
// x ≈ hi + lo with both bf16: the pair carries ~16 bits of x's mantissa, so a
// product taken as hi·B + lo·B loses almost nothing to the bf16 operand.
__device__ __forceinline__ void split_bf16(float x0, float x1, uint32_t& hi, uint32_t& lo) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(x0, x1);
  const float2 hf = __bfloat1622float2(h);
  hi = *reinterpret_cast<const uint32_t*>(&h);
  lo = pack_bf16(x0 - hf.x, x1 - hf.y);
}

// Rows [row0, row0 + R) of a token-major tensor (row stride `stride` elements,
// first element `src`) into a swizzled [R][P] tile; rows at or past `len` are zeros.
// THREADS threads share the copy, this one being number `tid` of them.
template <int R, int P, int THREADS>
__device__ __forceinline__ void load_tile(__nv_bfloat16* dst, const __nv_bfloat16* __restrict__ src,
                                          int64_t stride, int64_t row0, int64_t len, int tid = threadIdx.x) {
  constexpr int C = P / 8;
#pragma unroll
  for (int e = tid; e < R * C; e += THREADS) {
    const int r = e / C, c = e % C;
    const int64_t row = row0 + r;
    const bool ok = row < len;
    cp_async<16>(dst + swz<P>(r, c), src + (ok ? row : 0) * stride + c * 8, ok);
  }
}

// n values src[row0 .. row0 + n) into dst (4 bytes each; zero past len).
template <class V>
__device__ __forceinline__ void load_vec(V* dst, const V* __restrict__ src, int64_t row0, int64_t len, int n) {
  for (int e = threadIdx.x; e < n; e += blockDim.x) {
    const bool ok = row0 + e < len;
    cp_async<4>(dst + e, src + (ok ? row0 + e : 0), ok);
  }
}

// Lane address of an ldmatrix.x4 over a swizzled [..][P] tile:
// a_addr: the A fragment of rows r0..r0+15, columns 8·c0 .. 8·c0+15 (also the
// B fragments, with .trans, of k rows r0..r0+15 and two n8 tiles at columns 8·c0);
// b_addr: B fragments (no .trans) of two n8 tiles, rows r0..r0+7 and r0+8..r0+15
// of a [n][k] tile, k columns 8·c0 .. 8·c0+15. Registers come back as
// {b0, b1} of the first n tile, then {b0, b1} of the second.
template <int P>
__device__ __forceinline__ uint32_t a_addr(const __nv_bfloat16* tile, int r0, int c0) {
  const int lane = threadIdx.x & 31;
  return smem_addr(tile + swz<P>(r0 + (lane & 15), c0 + (lane >> 4)));
}
template <int P>
__device__ __forceinline__ uint32_t b_addr(const __nv_bfloat16* tile, int r0, int c0) {
  const int lane = threadIdx.x & 31;
  return smem_addr(tile + swz<P>(r0 + (lane & 7) + ((lane >> 4) << 3), c0 + ((lane >> 3) & 1)));
}

// acc[nt] (16 rows × 8·NT columns) += A (16 × P, rows r0 of a_tile) · Bᵀ where B is
// the [8·NT][P] tile b_tile: scores Q·Kᵀ and the like. A is read from shared memory.
template <int P, int NT>
__device__ __forceinline__ void gemm_abt(float (&acc)[NT][4], const __nv_bfloat16* a_tile, int r0,
                                         const __nv_bfloat16* b_tile) {
#pragma unroll
  for (int ks = 0; ks < P / 16; ++ks) {
    uint32_t a[4];
    ldsm_x4(a, a_addr<P>(a_tile, r0, 2 * ks));
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      uint32_t b[4];
      ldsm_x4(b, b_addr<P>(b_tile, 16 * np, 2 * ks));
      mma(acc[2 * np], a, b[0], b[1]);
      mma(acc[2 * np + 1], a, b[2], b[3]);
    }
  }
}

// acc[nt] (16 × P) += X · B where X (16 × 16·KS) is given as C tiles x[2·KS][4] in
// f32 and B is the swizzled [16·KS][P] tile b_tile. X is split into bf16 hi + lo
// when SPLIT (two products), else rounded once.
template <int P, int KS, bool SPLIT>
__device__ __forceinline__ void gemm_xb(float (&acc)[P / 8][4], const float (&x)[2 * KS][4],
                                        const __nv_bfloat16* b_tile) {
#pragma unroll
  for (int kk = 0; kk < KS; ++kk) {
    uint32_t hi[4], lo[4];
    if constexpr (SPLIT) {
      split_bf16(x[2 * kk][0], x[2 * kk][1], hi[0], lo[0]);
      split_bf16(x[2 * kk][2], x[2 * kk][3], hi[1], lo[1]);
      split_bf16(x[2 * kk + 1][0], x[2 * kk + 1][1], hi[2], lo[2]);
      split_bf16(x[2 * kk + 1][2], x[2 * kk + 1][3], hi[3], lo[3]);
    } else {
      hi[0] = pack_bf16(x[2 * kk][0], x[2 * kk][1]);
      hi[1] = pack_bf16(x[2 * kk][2], x[2 * kk][3]);
      hi[2] = pack_bf16(x[2 * kk + 1][0], x[2 * kk + 1][1]);
      hi[3] = pack_bf16(x[2 * kk + 1][2], x[2 * kk + 1][3]);
    }
#pragma unroll
    for (int np = 0; np < P / 16; ++np) {
      uint32_t b[4];
      ldsm_x4_t(b, a_addr<P>(b_tile, 16 * kk, 2 * np));
      mma(acc[2 * np], hi, b[0], b[1]);
      mma(acc[2 * np + 1], hi, b[2], b[3]);
      if constexpr (SPLIT) {
        mma(acc[2 * np], lo, b[0], b[1]);
        mma(acc[2 * np + 1], lo, b[2], b[3]);
      }
    }
  }
}

// A warp's 16 rows of f32 C tiles (16 × P, times `mul`) -> bf16 rows r0.. of the
// token-major output (rows at or past len skipped), through the warp's own 16 rows
// of the swizzled staging tile so that the global stores are 16 bytes wide.
template <int P>
__device__ __forceinline__ void store_rows(const float (&acc)[P / 8][4], const float (&mul)[2], __nv_bfloat16* stage,
                                           int sr0, __nv_bfloat16* __restrict__ dst, int64_t stride, int64_t row0,
                                           int64_t len) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int nt = 0; nt < P / 8; ++nt) {
    const int c = nt, col = 2 * t;  // chunk nt holds columns 8·nt .. 8·nt + 7
    *reinterpret_cast<uint32_t*>(stage + swz<P>(sr0 + g, c) + col) =
        pack_bf16(acc[nt][0] * mul[0], acc[nt][1] * mul[0]);
    *reinterpret_cast<uint32_t*>(stage + swz<P>(sr0 + g + 8, c) + col) =
        pack_bf16(acc[nt][2] * mul[1], acc[nt][3] * mul[1]);
  }
  __syncwarp();
  constexpr int C = P / 8;
#pragma unroll
  for (int e = lane; e < 16 * C; e += 32) {
    const int r = e / C, c = e % C;
    const int64_t row = row0 + r;
    if (row < len)
      *reinterpret_cast<uint4*>(dst + row * stride + c * 8) =
          *reinterpret_cast<const uint4*>(stage + swz<P>(sr0 + r, c));
  }
}

// Zeroes an accumulator of N m16n8 fragments.
template <int N>
__device__ __forceinline__ void zero_frags(float (&f)[N][4]) {
#pragma unroll
  for (int nt = 0; nt < N; ++nt) f[nt][0] = f[nt][1] = f[nt][2] = f[nt][3] = 0.f;
}

}  // namespace mambatron::cuda::mma_bf16
