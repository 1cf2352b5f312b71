// gemm: argument checks and dispatch. CPU: ops/cpu/gemm.cpp, CUDA: ops/cuda/gemm.cu.
#include "mambatron/check.h"
#include "mambatron/ops.h"
#include "backend.h"

namespace mambatron {

namespace {
bool is_half(DType dt) { return dt == DType::bf16 || dt == DType::f16; }
}  // namespace

void gemm(const Tensor& a, const Tensor& b, Tensor& c, const GemmOptions& opt) {
  const char* op = "gemm";
  check_defined(a, op, "a");
  check_defined(b, op, "b");
  check_defined(c, op, "c");
  check_same_device(b, a, op, "b", "a");
  check_same_device(c, a, op, "c", "a");
  MT_CHECK(a.dim() == 2 || a.dim() == 3, ValueError, op, ": argument 'a' has shape ", shape_str(a.shape()),
           ", expected 2 dims [m, k] or 3 dims [batch, m, k]");
  MT_CHECK(b.dim() == 2 || b.dim() == 3, ValueError, op, ": argument 'b' has shape ", shape_str(b.shape()),
           ", expected 2 dims [k, n] or 3 dims [batch, k, n]");
  check_same_dtype(b, a, op, "b", "a");
  DType in = a.dtype(), out = c.dtype();
  if (a.is_cuda()) {
    MT_CHECK(in == DType::f32 || is_half(in), TypeError, op, ": argument 'a' has dtype ", dtype_name(in),
             ", expected bf16, f16 or f32 on CUDA");
  } else {
    MT_CHECK(is_floating(in), TypeError, op, ": argument 'a' has dtype ", dtype_name(in),
             ", expected f32, f64, bf16 or f16");
  }
  MT_CHECK(out == in || (is_half(in) && out == DType::f32), TypeError, op, ": argument 'c' has dtype ",
           dtype_name(out), ", expected ", dtype_name(in), is_half(in) ? " or f32" : "", " for ", dtype_name(in),
           " inputs");
  int64_t m = a.size(-2), ka = a.size(-1), kb = b.size(-2), n = b.size(-1);
  if (opt.trans_a) std::swap(m, ka);
  if (opt.trans_b) std::swap(kb, n);
  MT_CHECK(ka == kb, ValueError, op, ": inner dimensions differ: 'a' ", shape_str(a.shape()),
           opt.trans_a ? " (transposed)" : "", " gives k = ", ka, ", 'b' ", shape_str(b.shape()),
           opt.trans_b ? " (transposed)" : "", " gives k = ", kb);
  if (a.dim() == 3 && b.dim() == 3)
    MT_CHECK(a.size(0) == b.size(0), ValueError, op, ": batch sizes differ: 'a' ", shape_str(a.shape()), ", 'b' ",
             shape_str(b.shape()));
  Shape expected = {m, n};
  if (a.dim() == 3 || b.dim() == 3) expected.insert(expected.begin(), a.dim() == 3 ? a.size(0) : b.size(0));
  check_shape(c, op, "c", expected);
  check_contiguous(a, op, "a");
  check_contiguous(b, op, "b");
  check_contiguous(c, op, "c");
  if (opt.addend.defined()) {
    check_same_device(opt.addend, a, op, "addend", "a");
    MT_CHECK(opt.addend.dtype() == out, TypeError, op, ": argument 'addend' has dtype ", dtype_name(opt.addend.dtype()),
             ", expected c's dtype ", dtype_name(out));
    check_shape(opt.addend, op, "addend", expected);
    check_contiguous(opt.addend, op, "addend");
  }
  if (c.numel() == 0) return;
  MT_DISPATCH(a, gemm, a, b, c, opt);
}

Tensor gemm(const Tensor& a, const Tensor& b, const GemmOptions& opt, std::optional<DType> out_dtype) {
  check_defined(a, "gemm", "a");
  check_defined(b, "gemm", "b");
  MT_CHECK(a.dim() >= 2 && b.dim() >= 2, ValueError, "gemm: 'a' ", shape_str(a.shape()), " and 'b' ",
           shape_str(b.shape()), " must have at least 2 dims");
  Shape shape = {opt.trans_a ? a.size(-1) : a.size(-2), opt.trans_b ? b.size(-2) : b.size(-1)};
  if (a.dim() == 3 || b.dim() == 3) shape.insert(shape.begin(), a.dim() == 3 ? a.size(0) : b.size(0));
  Tensor c = Tensor::empty(shape, out_dtype.value_or(a.dtype()), a.device());
  gemm(a, b, c, opt);
  return c;
}

}  // namespace mambatron
