// Per-device CUDA state: the current stream, the cuBLASLt handle and its
// workspace. Internal to the library; compiled only in CUDA builds.
#pragma once
#include <cublasLt.h>
#include <cuda_runtime.h>

#include "mambatron/error.h"

#define MT_CUDA_CHECK(expr)                                                                          \
  do {                                                                                               \
    cudaError_t mt_err_ = (expr);                                                                    \
    if (mt_err_ != cudaSuccess) {                                                                    \
      cudaGetLastError();                                                                            \
      throw ::mambatron::CudaError(::mambatron::detail::cat(#expr, " failed: ", cudaGetErrorName(mt_err_), \
                                                            " (", cudaGetErrorString(mt_err_), ") at ", __FILE__, ":", __LINE__)); \
    }                                                                                                \
  } while (0)

// After every kernel launch: catches bad launch configurations at once.
#define MT_CUDA_LAUNCH_CHECK() MT_CUDA_CHECK(cudaGetLastError())

#define MT_CUBLAS_CHECK(expr)                                                                        \
  do {                                                                                               \
    cublasStatus_t mt_st_ = (expr);                                                                  \
    if (mt_st_ != CUBLAS_STATUS_SUCCESS)                                                             \
      throw ::mambatron::CudaError(::mambatron::detail::cat(#expr, " failed: cuBLAS status ", int(mt_st_), \
                                                            " at ", __FILE__, ":", __LINE__));       \
  } while (0)

namespace mambatron::cuda {

// Makes `device` current for the guard's lifetime.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = -1;
};

cudaStream_t stream(int device);
cublasLtHandle_t cublaslt(int device);
// A scratch buffer for cuBLASLt, allocated once per device.
void* cublaslt_workspace(int device, size_t* bytes);

}  // namespace mambatron::cuda

namespace mambatron::detail {
using cuda::DeviceGuard;
}
