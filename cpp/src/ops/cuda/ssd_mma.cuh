// What the SSD's mma.sync kernels share (bf16 activations; ssd_forward_mma.cu,
// ssd_chunk_state_mma.cu, ssd_backward_dx_mma.cu, ssd_backward_bc_mma.cu): f32 states
// staged in shared memory as sums of bf16 parts, small fragment helpers, and the entry
// points that ssd_forward.cu and ssd_states.cu dispatch to.
#pragma once
#include "mma_bf16.cuh"
#include "ssd_common.cuh"

namespace mambatron::cuda::ssd {

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Whether two blocks of `bytes` dynamic shared memory fit an SM (228 KB, 1 KB of it
// reserved per block).
constexpr bool fits_two_blocks(size_t bytes) { return 2 * (bytes + 1024) <= 228 * 1024; }

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

// A block of an f32 state (kRows × kCols, rows `stride` floats apart, 16-byte aligned)
// on its way into kParts bf16 planes (the parts of split_parts, each a swizzled
// [kRows][kCols] tile, one after another), by kThreads threads of which this is number
// tid. load() brings this thread's share into registers and put() splits and stores it,
// so the loads may be in flight while the block works on something else. Each value is
// split once for the block, and the products read the planes with ldmatrix; a barrier
// comes between put() and their use.
template <int kRows, int kCols, int kThreads, int kParts>
struct StatePlanes {
  static constexpr int kC = kCols / 8, kItems = kRows * kC / kThreads;  // items of 8 values
  static_assert(kRows * kC % kThreads == 0, "StatePlanes: whole items per thread");
  static constexpr int kPlane = kRows * kCols;  // elements of a plane
  float4 v[kItems][2];

  __device__ __forceinline__ void load(const float* __restrict__ src, int64_t stride, int tid) {
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const int e = tid + i * kThreads, r = e / kC;
      const float4* p = reinterpret_cast<const float4*>(src + r * stride + 8 * (e - r * kC));
      v[i][0] = p[0], v[i][1] = p[1];
    }
  }
  __device__ __forceinline__ void put(__nv_bfloat16* planes, int tid) const {
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const int e = tid + i * kThreads, r = e / kC, at = mma_bf16::swz<kCols>(r, e - r * kC);
      const float f[8] = {v[i][0].x, v[i][0].y, v[i][0].z, v[i][0].w, v[i][1].x, v[i][1].y, v[i][1].z, v[i][1].w};
      uint32_t w[4][kParts];
#pragma unroll
      for (int k = 0; k < 4; ++k) split_parts<kParts>(f[2 * k], f[2 * k + 1], w[k]);
#pragma unroll
      for (int q = 0; q < kParts; ++q)
        *reinterpret_cast<uint4*>(planes + q * kPlane + at) = make_uint4(w[0][q], w[1][q], w[2][q], w[3][q]);
    }
  }
  // Σ of this thread's values times o's at the same places, in f64.
  __device__ __forceinline__ double dot(const StatePlanes& o) const {
    double s = 0;
#pragma unroll
    for (int i = 0; i < kItems; ++i)
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        const float4 a = v[i][k], b = o.v[i][k];
        s += double(a.x) * b.x + double(a.y) * b.y + double(a.z) * b.z + double(a.w) * b.w;
      }
    return s;
  }
};

// Eight bf16 values of token t (columns 8·ck ..) times `scale`, as the three bf16 parts
// of split_parts, into swizzled [..][64] tiles `part` elements apart: the scaled X that
// chunk_state_product reads.
__device__ __forceinline__ void put_scaled_parts(__nv_bfloat16* xs, int part, int t, int ck, const uint4& raw,
                                                 float scale) {
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
  uint32_t parts[3][4];
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&words[k]));
    uint32_t r[3];
    split_parts<3>(f.x * scale, f.y * scale, r);
#pragma unroll
    for (int q = 0; q < 3; ++q) parts[q][k] = r[q];
  }
#pragma unroll
  for (int q = 0; q < 3; ++q)
    *reinterpret_cast<uint4*>(xs + q * part + mma_bf16::swz<64>(t, ck)) =
        make_uint4(parts[q][0], parts[q][1], parts[q][2], parts[q][3]);
}

// The chunk's own state of a state pass, in a block of 8 warps: acc (warp w: p rows
// 16·(w mod 4) .., columns (w / 4)·kN/2 ..) += (X·diag(scale))ᵀ·B over the chunk's Lt token
// tiles, X·diag(scale) in three bf16 parts (swizzled [..][64] tiles, `part` elements
// apart), B a swizzled [..][kN] tile.
template <int kN>
__device__ __forceinline__ void chunk_state_product(float (&acc)[kN / 16][4], const __nv_bfloat16* xs, int part,
                                                    const __nv_bfloat16* bs, int Lt) {
  using namespace mma_bf16;
  constexpr int kNT = kN / 16;
  const int warp = threadIdx.x >> 5, pr = warp % 4, nh = warp / 4;
  zero_frags(acc);
  for (int ks = 0; ks < Lt; ++ks) {
    uint32_t a[3][4];
#pragma unroll
    for (int q = 0; q < 3; ++q) ldsm_x4_t(a[q], b_addr<64>(xs + q * part, 16 * ks, 2 * pr));
#pragma unroll
    for (int np = 0; np < kNT / 2; ++np) {
      uint32_t b[4];
      ldsm_x4_t(b, a_addr<kN>(bs, 16 * ks, 2 * (nh * kNT / 2 + np)));
#pragma unroll
      for (int q = 0; q < 3; ++q) {
        mma(acc[2 * np], a[q], b[0], b[1]);
        mma(acc[2 * np + 1], a[q], b[2], b[3]);
      }
    }
  }
}

// A block's place in a state pass handed from block to block: (step, row, head) from a
// ticket taken in the order blocks start (sync[0]), step outermost, so that the block a
// step waits on is already running and every (row, head) chain moves on together.
struct PassPlace {
  int64_t step, bi, j;
};
__device__ __forceinline__ PassPlace take_pass_place(const Dims& d, int32_t* sync) {
  __shared__ int64_t ticket;
  if (threadIdx.x == 0) ticket = atomicAdd(reinterpret_cast<unsigned*>(sync), 1u);
  __syncthreads();
  const int64_t id = ticket, head = id % (d.b * d.h);
  return {id / (d.b * d.h), head / d.h, head % d.h};
}

// The carry of a state pass handed from block to block (ssd_chunk_state_mma.cu,
// ssd_forward_mma.cu), at a thread's places of chunk_state_product's fragments in a
// [64][n] state: rows r and r + 8, columns c0 + 8·nt and + 1. take() gets the state
// entering the block's step: `init` (or 0) at the first step, else what the previous
// step's block handed on, once its flag is up (thread 0 waits; the block follows).
// hand() stores E·in + G (the fmaf of state_carry_kernel) at `out` (none when null) and,
// when `flag` is given, raises it once the whole block has stored.
template <int kN>
struct CarryPlaces {
  static constexpr int kNT = kN / 16;
  int r, c0;
  __device__ __forceinline__ CarryPlaces() {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    r = 16 * (warp % 4) + (lane >> 2), c0 = (warp / 4) * (kN / 2) + 2 * (lane & 3);
  }
  __device__ __forceinline__ int at(int nt, int hr) const { return (r + 8 * hr) * kN + c0 + 8 * nt; }

  __device__ __forceinline__ void take(float2 (&in)[kNT][2], bool first, const float* init, const float* slot,
                                       const int32_t* flag) const {
    if (first) {
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int hr = 0; hr < 2; ++hr)
          in[nt][hr] = init ? *reinterpret_cast<const float2*>(init + at(nt, hr)) : make_float2(0.f, 0.f);
      return;
    }
    if (threadIdx.x == 0) {
      while (*reinterpret_cast<const volatile int32_t*>(flag) == 0) __nanosleep(32);
      __threadfence();
    }
    __syncthreads();
#pragma unroll
    for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) in[nt][hr] = __ldcg(reinterpret_cast<const float2*>(slot + at(nt, hr)));
  }

  __device__ __forceinline__ void hand(const float2 (&in)[kNT][2], const float (&G)[kNT][4], float E, float* out,
                                       int32_t* flag) const {
    if (out) {
#pragma unroll
      for (int nt = 0; nt < kNT; ++nt)
#pragma unroll
        for (int hr = 0; hr < 2; ++hr)
          *reinterpret_cast<float2*>(out + at(nt, hr)) =
              make_float2(fmaf(E, in[nt][hr].x, G[nt][2 * hr]), fmaf(E, in[nt][hr].y, G[nt][2 * hr + 1]));
    }
    if (flag) {
      __syncthreads();  // every thread's part is stored
      if (threadIdx.x == 0) {
        __threadfence();
        atomicExch(flag, 1);
      }
    }
  }
};

// f(kq, kn), integral constants: the chunk's tile height (64 or 128, with_chunk_tiles) and
// the state size n (64 or 128), for the mma kernels' launchers.
template <class F>
void with_mma_sizes(const Dims& d, F&& f) {
  with_chunk_tiles(d.Q, [&](auto kq) {
    if (d.n == 64) f(kq, std::integral_constant<int, 64>{});
    else f(kq, std::integral_constant<int, 128>{});
  });
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

// The whole forward on mma.sync in one launch (ssd_forward_mma.cu): bf16, p 64, n 64 or
// 128, 16-byte aligned rows, at least one chunk. K (launch_chunk_cb) comes first; `ring`
// holds forward_mma_ring_floats(d) floats and `sync` state_pass_sync_ints(d) ints.
bool forward_mma_supported(const Dims& d, const void* x, const void* B, const void* C, const void* y,
                           const float* init, const float* last);
inline int64_t forward_mma_ring_floats(const Dims& d) { return d.b * d.h * 2 * d.p * d.n; }
void launch_forward_mma(const Dims& d, const __nv_bfloat16* x, const __nv_bfloat16* B, const __nv_bfloat16* C,
                        const float* D, const double* S, const float* delta, const int32_t* seq, const float* K,
                        const float* init, float* ring, float* last, int32_t* sync, __nv_bfloat16* y,
                        cudaStream_t s);

// The state pass on mma.sync (ssd_chunk_state_mma.cu): each chunk's own state and the
// carry, in one launch; bf16, p 64, n 64 or 128, 16-byte aligned rows, at least one
// chunk. launch_state_pass takes it where it applies.
bool chunk_state_mma_supported(const Dims& d, const void* X, const void* Bm, const float* init, const float* states,
                               const float* last);
void launch_chunk_state_mma(const Dims& d, bool reverse, const __nv_bfloat16* X, const __nv_bfloat16* Bm,
                            const float* delta, const double* S, const int32_t* seq, const float* init, float* states,
                            float* last, int32_t* sync, cudaStream_t s);

}  // namespace mambatron::cuda::ssd
