// Argument checks shared by the embedding, norm and activation ops: every float
// tensor of one op must be defined, on the device of the first one, f32 or f64
// like it, of the exact expected shape, and contiguous.
#pragma once
#include "mambatron/check.h"
#include "mambatron/tensor.h"

namespace mambatron::dense {

// The first float argument of an op: defined, f32 or f64, contiguous.
inline void check_float_ref(const Tensor& t, const char* op, const char* name) {
  check_defined(t, op, name);
  MT_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::f64, TypeError, op, ": argument '", name,
           "' has dtype ", dtype_name(t.dtype()), ", expected f32 or f64");
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

// The shape without its last dimension (the rows of a [..., d] tensor).
inline Shape leading_shape(const Shape& s) { return Shape(s.begin(), s.end() - (s.empty() ? 0 : 1)); }

// `s` with its last dimension replaced by `last`.
inline Shape with_last(const Shape& s, int64_t last) {
  Shape r = s;
  if (!r.empty()) r.back() = last;
  return r;
}

}  // namespace mambatron::dense
