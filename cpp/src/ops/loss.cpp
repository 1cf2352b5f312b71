// Linear + cross-entropy: argument checks and dispatch. CPU: ops/cpu/loss.cpp; CUDA:
// ops/cuda/loss.cu. On the CPU every float tensor has h's dtype (f32 or f64) and the
// mask is u8, f32 or f64; on CUDA h and dh are bf16 or f32, w and dw bf16 or f32 each
// of its own dtype, the mask u8 or f32 and losses f32.
#include <cmath>

#include "backend.h"
#include "cpu/loss.h"
#ifdef MAMBATRON_WITH_CUDA
#include "cuda/loss.h"
#endif
#include "dense_checks.h"
#include "mambatron/check.h"
#include "mambatron/ops.h"

namespace mambatron {

namespace {

// Checks what forward and backward share; returns nothing, throws on the first problem.
void check_inputs(const Tensor& h, const Tensor& w, const Tensor& targets, const Tensor& mask,
                  const LinearCrossEntropyOptions& opt, const Tensor* losses, const char* op) {
  dense::check_float_ref(h, op, "h");
  MT_CHECK(h.dim() == 2, ValueError, op, ": argument 'h' has shape ", shape_str(h.shape()),
           ", expected 2 dims [n, d]");
  const int64_t n = h.size(0), d = h.size(1);
  check_defined(w, op, "w");
  check_same_device(w, h, op, "w", "h");
  if (h.is_cuda())
    MT_CHECK(w.dtype() == DType::f32 || w.dtype() == DType::bf16, TypeError, op, ": argument 'w' has dtype ",
             dtype_name(w.dtype()), ", expected bf16 or f32 on CUDA");
  else
    check_same_dtype(w, h, op, "w", "h");
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
    if (h.is_cuda())
      MT_CHECK(m == DType::u8 || m == DType::f32, TypeError, op, ": argument 'mask' has dtype ", dtype_name(m),
               ", expected u8 or f32 on CUDA");
    else
      MT_CHECK(m == DType::u8 || m == DType::f32 || m == DType::f64, TypeError, op, ": argument 'mask' has dtype ",
               dtype_name(m), ", expected u8, f32 or f64");
    check_shape(mask, op, "mask", {n});
    check_contiguous(mask, op, "mask");
  }
  if (losses) dense::check_stat(*losses, h, op, "losses", "h", {n});
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
  return MT_DISPATCH(h, linear_cross_entropy, h, w, targets, mask, opt, nullptr, nullptr, losses, op);
}

double linear_cross_entropy_backward(const Tensor& h, const Tensor& w, const Tensor& targets, const Tensor& mask,
                                     Tensor& dh, Tensor& dw, const LinearCrossEntropyOptions& opt,
                                     Tensor* losses) {
  const char* op = "linear_cross_entropy_backward";
  check_inputs(h, w, targets, mask, opt, losses, op);
  dense::check_float_like(dh, h, op, "dh", "h", h.shape());
  dense::check_float_own_dtype(dw, h, op, "dw", "h", w.shape());
  MT_CHECK(std::isfinite(opt.grad_scale), ValueError, op, ": grad_scale is ", opt.grad_scale, ", expected finite");
  MT_CHECK(!opt.accumulate_dw || !dw.is_cuda() || dw.dtype() == DType::f32, TypeError, op,
           ": argument 'dw' has dtype ", dtype_name(dw.dtype()), ", expected f32 to accumulate into on CUDA");
  return MT_DISPATCH(h, linear_cross_entropy, h, w, targets, mask, opt, &dh, &dw, losses, op);
}

}  // namespace mambatron
