// Tensor-core pieces of the bf16 attention kernels (head dim 64 or 128), over the
// shared mma.sync / ldmatrix / swizzled-tile helpers of mma_bf16.cuh.
#pragma once
#include <cuda_bf16.h>

#include <climits>
#include <cstdint>
#include <initializer_list>

#include "mma_bf16.cuh"

namespace mambatron::cuda::attn_mma {

using namespace mma_bf16;

constexpr float kLog2e = 1.4426950408889634f;

// min and max of the n (a multiple of 32, at most 128) ids ids[0..n) that are
// below len - row0, over the warp (the same in every warp); INT_MAX/INT_MIN if none.
__device__ __forceinline__ void id_range(const int* ids, int n, int64_t valid, int& lo, int& hi) {
  const int lane = threadIdx.x & 31;
  lo = INT_MAX, hi = INT_MIN;
  for (int r = lane; r < n; r += 32)
    if (r < valid) lo = min(lo, ids[r]), hi = max(hi, ids[r]);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    lo = min(lo, __shfl_xor_sync(0xffffffffu, lo, o));
    hi = max(hi, __shfl_xor_sync(0xffffffffu, hi, o));
  }
}

}  // namespace mambatron::cuda::attn_mma

namespace mambatron::cuda {
// The tensor-core path: bf16 activations, p 64 or 128, 16-byte aligned rows.
bool attention_mma_supported(const Tensor& q, std::initializer_list<const Tensor*> ts);
void attention_forward_mma(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, Tensor& lse,
                           const Tensor& seq_idx, double scale);
// lse from the forward and D = rowsum(dout ∘ out), each f32 [b, hq, l].
void attention_backward_mma(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const float* lse,
                            const float* D, Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& seq_idx,
                            double scale);
}  // namespace mambatron::cuda
