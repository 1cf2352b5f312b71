// Uniform and normal draws from the Philox generator (core/philox.h): the same
// numbers as the CPU version for the same seed and offset.
#include "../../core/philox.h"
#include "../backend.h"
#include "common.cuh"

namespace mambatron::cuda {

namespace {
template <class T>
__global__ void uniform_kernel(T* __restrict__ dst, int64_t n, uint64_t seed, uint64_t offset, int bits) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = cast_value<T>(rng::uniform_at(uint64_t(i), seed, offset, bits));
}
template <class T>
__global__ void normal_kernel(T* __restrict__ dst, int64_t n, uint64_t seed, uint64_t offset) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = cast_value<T>(rng::normal_at(uint64_t(i), seed, offset));
}

template <class F>
void launch_floating(Tensor& dst, F&& launch) {
  DeviceGuard guard(dst.device().index);
  visit_device_dtype(dst.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_floating_point_v<T> || is_half_v<T>) launch(static_cast<T*>(dst.data_ptr()));
    else throw TypeError(std::string("rand: dtype ") + dtype_name(dst.dtype()) + " is not a floating type");
  });
  MT_CUDA_LAUNCH_CHECK();
}
}  // namespace

void rand_uniform(Tensor& dst, uint64_t seed, uint64_t offset) {
  int64_t n = dst.numel();
  int bits = uniform_bits(dst.dtype());
  cudaStream_t s = stream(dst.device().index);
  launch_floating(dst, [&](auto* p) {
    using T = std::remove_pointer_t<decltype(p)>;
    uniform_kernel<T><<<grid_for(n, 256), 256, 0, s>>>(p, n, seed, offset, bits);
  });
}

void rand_normal(Tensor& dst, uint64_t seed, uint64_t offset) {
  int64_t n = dst.numel();
  cudaStream_t s = stream(dst.device().index);
  launch_floating(dst, [&](auto* p) {
    using T = std::remove_pointer_t<decltype(p)>;
    normal_kernel<T><<<grid_for(n, 256), 256, 0, s>>>(p, n, seed, offset);
  });
}

}  // namespace mambatron::cuda
