// Pieces shared by the dense CUDA ops (activations, norms, embedding, AdamW):
// f32 loads and stores of bf16/f32 elements, a deterministic block sum, and the
// dtype visitor for the two activation dtypes.
#pragma once
#include <cstdint>
#include <initializer_list>

#include "common.cuh"
#include "mambatron/dtype.h"

namespace mambatron::cuda {

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T>
__device__ __forceinline__ T from_f32(float v) { return cast_value<T>(v); }

// f(DTypeTag<float>) or f(DTypeTag<__nv_bfloat16>); other dtypes are a TypeError naming op and arg.
template <class F>
decltype(auto) visit_bf16_f32(DType dt, const char* op, const char* name, F&& f) {
  if (dt == DType::f32) return f(DTypeTag<float>{});
  if (dt == DType::bf16) return f(DTypeTag<__nv_bfloat16>{});
  throw TypeError(detail::cat(op, ": argument '", name, "' has dtype ", dtype_name(dt),
                              ", expected bf16 or f32 on CUDA"));
}

// True when every pointer is 16-byte aligned, so 16-byte vector accesses are legal.
inline bool aligned16(std::initializer_list<const void*> ps) {
  for (const void* p : ps)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

// 16 bytes of T, loaded and stored as one vector access.
template <class T>
struct alignas(16) Pack {
  static constexpr int N = 16 / sizeof(T);
  T v[N];
};

// A barrier among `threads` threads (whole warps) of the block, numbered `id` (1..15;
// 0 is __syncthreads'): lets one set of warps publish shared memory to each other while
// the rest of the block goes on.
__device__ __forceinline__ void named_barrier(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
// The producer's side of a named barrier: counts this thread's arrival (its shared-memory
// writes before it are seen by the threads that wait there with named_barrier) and goes on.
__device__ __forceinline__ void named_barrier_arrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// Sum of `v` over the block, in a fixed tree (warp shuffles, then the warp sums in
// order), so the bits do not depend on timing. blockDim.x must be a multiple of 32
// and at most 1024. Every thread gets the total; `shared` holds 32 floats.
template <class A>
__device__ __forceinline__ A block_sum(A v, A* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();  // `shared` may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  A t = lane < warps ? shared[lane] : A(0);
  for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
  return t;
}

}  // namespace mambatron::cuda
