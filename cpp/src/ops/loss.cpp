// Linear + cross-entropy: argument checks and dispatch. CPU: ops/cpu/loss.cpp.
#include "cpu/loss.h"

#include <cmath>

#include "backend.h"
#include "mambatron/check.h"
#include "mambatron/ops.h"

namespace mambatron {

namespace {

void check_float(const Tensor& t, const char* op, const char* name) {
  check_defined(t, op, name);
  MT_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::f64, TypeError, op, ": argument '", name,
           "' has dtype ", dtype_name(t.dtype()), ", expected f32 or f64");
}

// Checks what forward and backward share; returns nothing, throws on the first problem.
void check_inputs(const Tensor& h, const Tensor& w, const Tensor& targets, const Tensor& mask,
                  const LinearCrossEntropyOptions& opt, const Tensor* losses, const char* op) {
  check_float(h, op, "h");
  MT_CHECK(h.dim() == 2, ValueError, op, ": argument 'h' has shape ", shape_str(h.shape()),
           ", expected 2 dims [n, d]");
  const int64_t n = h.size(0), d = h.size(1);
  check_same_dtype(w, h, op, "w", "h");
  check_same_device(w, h, op, "w", "h");
  MT_CHECK(w.dim() == 2 && w.size(1) == d && w.size(0) >= 1, ValueError, op, ": argument 'w' has shape ",
           shape_str(w.shape()), ", expected [V, ", d, "] with V >= 1 (d from 'h' ", shape_str(h.shape()), ")");
  check_defined(targets, op, "targets");
  check_same_device(targets, h, op, "targets", "h");
  MT_CHECK(targets.dtype() == DType::i32 || targets.dtype() == DType::i64, TypeError, op,
           ": argument 'targets' has dtype ", dtype_name(targets.dtype()), ", expected i32 or i64");
  check_shape(targets, op, "targets", {n});
  if (mask.defined()) {
    check_same_device(mask, h, op, "mask", "h");
    DType m = mask.dtype();
    MT_CHECK(m == DType::u8 || m == DType::f32 || m == DType::f64, TypeError, op, ": argument 'mask' has dtype ",
             dtype_name(m), ", expected u8, f32 or f64");
    check_shape(mask, op, "mask", {n});
    check_contiguous(mask, op, "mask");
  }
  if (losses) {
    check_same_dtype(*losses, h, op, "losses", "h");
    check_same_device(*losses, h, op, "losses", "h");
    check_shape(*losses, op, "losses", {n});
    check_contiguous(*losses, op, "losses");
  }
  check_contiguous(h, op, "h");
  check_contiguous(w, op, "w");
  check_contiguous(targets, op, "targets");
  MT_CHECK(opt.chunk_size >= 1, ValueError, op, ": chunk_size is ", opt.chunk_size, ", expected >= 1");
  MT_CHECK(opt.vocab_chunk_size >= 0, ValueError, op, ": vocab_chunk_size is ", opt.vocab_chunk_size,
           ", expected >= 0 (0: the whole vocabulary at once)");
}

}  // namespace

double linear_cross_entropy_forward(const Tensor& h, const Tensor& w, const Tensor& targets, const Tensor& mask,
                                    const LinearCrossEntropyOptions& opt, Tensor* losses) {
  const char* op = "linear_cross_entropy_forward";
  check_inputs(h, w, targets, mask, opt, losses, op);
  require_cpu(h, op);
  return cpu::linear_cross_entropy(h, w, targets, mask, opt, nullptr, nullptr, losses, op);
}

double linear_cross_entropy_backward(const Tensor& h, const Tensor& w, const Tensor& targets, const Tensor& mask,
                                     Tensor& dh, Tensor& dw, const LinearCrossEntropyOptions& opt,
                                     Tensor* losses) {
  const char* op = "linear_cross_entropy_backward";
  check_inputs(h, w, targets, mask, opt, losses, op);
  check_same_dtype(dh, h, op, "dh", "h");
  check_same_device(dh, h, op, "dh", "h");
  check_shape(dh, op, "dh", h.shape());
  check_contiguous(dh, op, "dh");
  check_same_dtype(dw, h, op, "dw", "h");
  check_same_device(dw, h, op, "dw", "h");
  check_shape(dw, op, "dw", w.shape());
  check_contiguous(dw, op, "dw");
  MT_CHECK(std::isfinite(opt.grad_scale), ValueError, op, ": grad_scale is ", opt.grad_scale, ", expected finite");
  require_cpu(h, op);
  return cpu::linear_cross_entropy(h, w, targets, mask, opt, &dh, &dw, losses, op);
}

}  // namespace mambatron
