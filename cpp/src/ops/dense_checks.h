// Argument checks shared by the embedding, norm and activation ops: every float
// tensor of one op must be defined, on the device of the first one, of the exact
// expected shape, and contiguous. On the CPU all have one dtype, f32 or f64. On
// CUDA activations are bf16 or f32 (one dtype), parameters and their gradients
// f32 or bf16 (one dtype, independent of the activations), statistics f32.
#pragma once
#include "mambatron/check.h"
#include "mambatron/tensor.h"

namespace mambatron::dense {

// The first float argument of an op: defined, f32 or f64, contiguous.
inline void check_float_ref(const Tensor& t, const char* op, const char* name) {
  check_defined(t, op, name);
  if (t.is_cuda())
    MT_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::bf16, TypeError, op, ": argument '", name,
             "' has dtype ", dtype_name(t.dtype()), ", expected bf16 or f32 on CUDA");
  else
    MT_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::f64, TypeError, op, ": argument '", name,
             "' has dtype ", dtype_name(t.dtype()), ", expected f32 or f64 on the CPU");
  check_contiguous(t, op, name);
}

// Any other float argument, compared with the first one `ref`.
inline void check_float_like(const Tensor& t, const Tensor& ref, const char* op, const char* name,
                             const char* ref_name, const Shape& shape) {
  check_defined(t, op, name);
  check_same_device(t, ref, op, name, ref_name);
  check_same_dtype(t, ref, op, name, ref_name);
  check_shape(t, op, name, shape);
  check_contiguous(t, op, name);
}

// A parameter or parameter gradient: like `ref` on the CPU; on CUDA its dtype is
// bf16 or f32 and equal to `dtype_ref`'s (the first parameter), not the activations'.
inline void check_param_like(const Tensor& t, const Tensor& ref, const Tensor& dtype_ref, const char* op,
                             const char* name, const char* ref_name, const char* dtype_ref_name, const Shape& shape) {
  if (!ref.is_cuda()) return check_float_like(t, ref, op, name, ref_name, shape);
  check_defined(t, op, name);
  check_same_device(t, ref, op, name, ref_name);
  MT_CHECK(dtype_ref.dtype() == DType::f32 || dtype_ref.dtype() == DType::bf16, TypeError, op, ": argument '",
           dtype_ref_name, "' has dtype ", dtype_name(dtype_ref.dtype()), ", expected bf16 or f32 on CUDA");
  check_same_dtype(t, dtype_ref, op, name, dtype_ref_name);
  check_shape(t, op, name, shape);
  check_contiguous(t, op, name);
}

// A saved statistic (mean, rstd): like `ref` on the CPU, f32 on CUDA.
inline void check_stat(const Tensor& t, const Tensor& ref, const char* op, const char* name, const char* ref_name,
                       const Shape& shape) {
  if (!ref.is_cuda()) return check_float_like(t, ref, op, name, ref_name, shape);
  check_defined(t, op, name);
  check_same_device(t, ref, op, name, ref_name);
  check_dtype(t, op, name, DType::f32);
  check_shape(t, op, name, shape);
  check_contiguous(t, op, name);
}

// A float tensor whose dtype is its own on CUDA (bf16 or f32, e.g. the embedding's
// out and dweight); like `ref` on the CPU.
inline void check_float_own_dtype(const Tensor& t, const Tensor& ref, const char* op, const char* name,
                                  const char* ref_name, const Shape& shape) {
  check_param_like(t, ref, t, op, name, ref_name, name, shape);
}

// The shape without its last dimension (the rows of a [..., d] tensor).
inline Shape leading_shape(const Shape& s) { return Shape(s.begin(), s.end() - (s.empty() ? 0 : 1)); }

// `s` with its last dimension replaced by `last`.
inline Shape with_last(const Shape& s, int64_t last) {
  Shape r = s;
  if (!r.empty()) r.back() = last;
  return r;
}

}  // namespace mambatron::dense
