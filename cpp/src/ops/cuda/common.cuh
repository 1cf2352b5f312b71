// Shared pieces of the CUDA kernels: device element types, conversions with
// round-to-nearest-even, launch shapes and strided indexing.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "../../core/cuda_context.h"
#include "mambatron/tensor.h"

namespace mambatron::cuda {

template <class T> struct DTypeTag { using type = T; };

// visit_device_dtype(dt, [&](auto tag) { using T = typename decltype(tag)::type; ... })
template <class F>
decltype(auto) visit_device_dtype(DType dt, F&& f) {
  switch (dt) {
    case DType::f32: return f(DTypeTag<float>{});
    case DType::f64: return f(DTypeTag<double>{});
    case DType::bf16: return f(DTypeTag<__nv_bfloat16>{});
    case DType::f16: return f(DTypeTag<__half>{});
    case DType::i32: return f(DTypeTag<int32_t>{});
    case DType::i64: return f(DTypeTag<int64_t>{});
    case DType::u16: return f(DTypeTag<uint16_t>{});
    case DType::u8: return f(DTypeTag<uint8_t>{});
  }
  throw TypeError("invalid dtype");
}

template <class T>
constexpr bool is_half_v = std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>;

// One value between element types; into bf16/f16 by round-to-nearest-even from
// the exact source value (integers and doubles are not rounded through float).
template <class D, class S>
__device__ __forceinline__ D cast_value(S s) {
  if constexpr (std::is_same_v<D, S>) {
    return s;
  } else if constexpr (is_half_v<S>) {
    return cast_value<D>(static_cast<float>(s));
  } else if constexpr (std::is_same_v<D, __nv_bfloat16>) {
    if constexpr (std::is_same_v<S, float>) return __float2bfloat16_rn(s);
    else return __double2bfloat16(static_cast<double>(s));
  } else if constexpr (std::is_same_v<D, __half>) {
    if constexpr (std::is_same_v<S, float>) return __float2half_rn(s);
    else return __double2half(static_cast<double>(s));
  } else {
    return static_cast<D>(s);
  }
}

constexpr int kMaxDims = 8;

// Shape and strides passed by value to a kernel, for strided element access.
struct StridedIndex {
  int ndim = 0;
  int64_t shape[kMaxDims];
  int64_t stride[kMaxDims];
  __device__ __forceinline__ int64_t offset(int64_t linear) const {
    int64_t off = 0;
    for (int d = ndim - 1; d >= 0; --d) {
      int64_t i = linear % shape[d];
      linear /= shape[d];
      off += i * stride[d];
    }
    return off;
  }
};

StridedIndex strided_index(const Tensor& t);

// A tensor's data as T*, or nullptr for an undefined (optional) tensor.
template <class T>
const T* cptr(const Tensor& t) {
  return t.defined() ? static_cast<const T*>(t.data_ptr()) : nullptr;
}
template <class T>
T* mptr(const Tensor& t) {
  return t.defined() ? static_cast<T*>(t.data_ptr()) : nullptr;
}

inline unsigned grid_for(int64_t n, int threads) {
  int64_t blocks = (n + threads - 1) / threads;
  return unsigned(blocks < 65535 * 16 ? (blocks > 0 ? blocks : 1) : 65535 * 16);  // grid-stride beyond this
}

}  // namespace mambatron::cuda
