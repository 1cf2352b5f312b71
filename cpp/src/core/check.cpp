#include "mambatron/check.h"

namespace mambatron {

void check_defined(const Tensor& t, const char* op, const char* name) {
  MT_CHECK(t.defined(), ValueError, op, ": argument '", name, "' is an undefined tensor");
}

void check_dtype(const Tensor& t, const char* op, const char* name, DType expected) {
  check_defined(t, op, name);
  MT_CHECK(t.dtype() == expected, TypeError, op, ": argument '", name, "' has dtype ", dtype_name(t.dtype()),
           ", expected ", dtype_name(expected));
}

void check_same_dtype(const Tensor& t, const Tensor& ref, const char* op, const char* name, const char* ref_name) {
  check_defined(t, op, name);
  MT_CHECK(t.dtype() == ref.dtype(), TypeError, op, ": argument '", name, "' has dtype ", dtype_name(t.dtype()),
           ", expected ", dtype_name(ref.dtype()), " like '", ref_name, "'");
}

void check_dim(const Tensor& t, const char* op, const char* name, int expected) {
  check_defined(t, op, name);
  MT_CHECK(t.dim() == expected, ValueError, op, ": argument '", name, "' has shape ", shape_str(t.shape()), " (",
           t.dim(), " dims), expected ", expected, " dims");
}

void check_shape(const Tensor& t, const char* op, const char* name, const Shape& expected) {
  check_defined(t, op, name);
  MT_CHECK(t.shape() == expected, ValueError, op, ": argument '", name, "' has shape ", shape_str(t.shape()),
           ", expected ", shape_str(expected));
}

void check_contiguous(const Tensor& t, const char* op, const char* name) {
  check_defined(t, op, name);
  MT_CHECK(t.is_contiguous(), ValueError, op, ": argument '", name, "' (shape ", shape_str(t.shape()), ", strides ",
           shape_str(t.strides()), ") is not contiguous; call .contiguous() first");
}

void check_same_device(const Tensor& t, const Tensor& ref, const char* op, const char* name, const char* ref_name) {
  check_defined(t, op, name);
  MT_CHECK(t.device() == ref.device(), TypeError, op, ": argument '", name, "' is on ", t.device().str(),
           " but '", ref_name, "' is on ", ref.device().str(), "; all tensors of an op must be on one device");
}

}  // namespace mambatron
