// Elementwise copy with dtype conversion, fill, and copies between devices.
#include "../backend.h"
#include "common.cuh"

namespace mambatron::cuda {

StridedIndex strided_index(const Tensor& t) {
  MT_CHECK(t.dim() <= kMaxDims, ValueError, "tensor with ", t.dim(), " dims: CUDA kernels support up to ",
           kMaxDims);
  StridedIndex s;
  s.ndim = t.dim();
  for (int d = 0; d < t.dim(); ++d) { s.shape[d] = t.size(d); s.stride[d] = t.stride(d); }
  return s;
}

namespace {

template <class D, class S>
__global__ void copy_contiguous_kernel(const S* __restrict__ src, D* __restrict__ dst, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = cast_value<D>(src[i]);
}

template <class D, class S>
__global__ void copy_strided_kernel(const S* __restrict__ src, StridedIndex si, D* __restrict__ dst,
                                    StridedIndex di, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[di.offset(i)] = cast_value<D>(src[si.offset(i)]);
}

// The value is converted on the device, so its rounding matches every other CUDA cast.
template <class T>
__global__ void fill_kernel(T* __restrict__ dst, StridedIndex di, double value, int64_t n) {
  const T v = cast_value<T>(value);
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[di.offset(i)] = v;
}

}  // namespace

void copy(const Tensor& src, Tensor& dst) {
  int dev = dst.device().index;
  DeviceGuard guard(dev);
  cudaStream_t s = stream(dev);
  int64_t n = dst.numel();
  const int threads = 256;
  visit_device_dtype(src.dtype(), [&](auto stag) {
    using S = typename decltype(stag)::type;
    visit_device_dtype(dst.dtype(), [&](auto dtag) {
      using D = typename decltype(dtag)::type;
      const S* sp = static_cast<const S*>(src.data_ptr());
      D* dp = static_cast<D*>(dst.data_ptr());
      if (src.is_contiguous() && dst.is_contiguous()) {
        if constexpr (std::is_same_v<S, D>) {
          MT_CUDA_CHECK(cudaMemcpyAsync(dp, sp, size_t(n) * sizeof(D), cudaMemcpyDeviceToDevice, s));
        } else {
          copy_contiguous_kernel<D, S><<<grid_for(n, threads), threads, 0, s>>>(sp, dp, n);
          MT_CUDA_LAUNCH_CHECK();
        }
      } else {
        copy_strided_kernel<D, S>
            <<<grid_for(n, threads), threads, 0, s>>>(sp, strided_index(src), dp, strided_index(dst), n);
        MT_CUDA_LAUNCH_CHECK();
      }
    });
  });
}

void fill(Tensor& dst, double value) {
  int dev = dst.device().index;
  DeviceGuard guard(dev);
  int64_t n = dst.numel();
  visit_device_dtype(dst.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    fill_kernel<T><<<grid_for(n, 256), 256, 0, stream(dev)>>>(static_cast<T*>(dst.data_ptr()), strided_index(dst),
                                                              value, n);
    MT_CUDA_LAUNCH_CHECK();
  });
}

void memcpy(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes) {
  if (nbytes == 0) return;
  if (dst_device.is_cuda() && src_device.is_cuda()) {
    {
      DeviceGuard g(src_device.index);
      MT_CUDA_CHECK(cudaStreamSynchronize(stream(src_device.index)));
    }
    DeviceGuard g(dst_device.index);
    MT_CUDA_CHECK(cudaMemcpyPeerAsync(dst, dst_device.index, src, src_device.index, nbytes, stream(dst_device.index)));
    return;
  }
  int dev = dst_device.is_cuda() ? dst_device.index : src_device.index;
  DeviceGuard g(dev);
  cudaStream_t s = stream(dev);
  MT_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDefault, s));
  if (dst_device.is_cpu()) MT_CUDA_CHECK(cudaStreamSynchronize(s));  // the host reads it next
}

}  // namespace mambatron::cuda
