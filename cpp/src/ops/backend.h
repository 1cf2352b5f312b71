// The two backends of every op. Public entry points (ops.h, tensor.h) check
// their arguments and dispatch here by device; these assume valid arguments.
#pragma once
#include <cstdint>

#include "mambatron/ops.h"
#include "mambatron/tensor.h"

namespace mambatron {

// Counters a draw of n numbers uses (see core/philox.h).
inline uint64_t uniform_counters(int64_t n, DType dt) { return dt == DType::f64 ? (n + 1) / 2 : (n + 3) / 4; }
inline uint64_t normal_counters(int64_t n) { return (n + 1) / 2; }
inline int uniform_bits(DType dt) {
  return dt == DType::f64 ? 53 : dt == DType::f32 ? 24 : dt == DType::bf16 ? 8 : 11;
}

#define MT_BACKEND_OPS                                                              \
  /* dst = src elementwise, any dtypes and strides, same device and shape */       \
  void copy(const Tensor& src, Tensor& dst);                                        \
  void fill(Tensor& dst, double value);                                             \
  void rand_uniform(Tensor& dst, uint64_t seed, uint64_t offset);                   \
  void rand_normal(Tensor& dst, uint64_t seed, uint64_t offset);                    \
  void gemm(const Tensor& a, const Tensor& b, Tensor& c, const GemmOptions& opt);

namespace cpu {
MT_BACKEND_OPS
}
namespace cuda {
MT_BACKEND_OPS
// Bytes between devices (either may be the CPU), ordered on the current streams.
void memcpy(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes);
}

#undef MT_BACKEND_OPS

// Calls cpu::F or cuda::F by the device of `t`; a CPU-only build names the problem.
#ifdef MAMBATRON_WITH_CUDA
#define MT_DISPATCH(t, F, ...) ((t).is_cuda() ? cuda::F(__VA_ARGS__) : cpu::F(__VA_ARGS__))
#else
#define MT_DISPATCH(t, F, ...)                                                                  \
  ((t).is_cuda() ? throw TypeError(std::string(#F) + ": tensor on " + (t).device().str() +     \
                                   ", but mambatron was built without CUDA")                    \
                 : cpu::F(__VA_ARGS__))
#endif

}  // namespace mambatron
