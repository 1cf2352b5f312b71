// AdamW and the global gradient norm: argument checks and dispatch. CPU: ops/cpu/adamw.cpp;
// CUDA: ops/cuda/adamw.cu (f32 state, f32/bf16 gradients for the norm).
#include "cpu/adamw.h"

#include <cmath>
#include <string>

#include "backend.h"
#ifdef MAMBATRON_WITH_CUDA
#include "cuda/adamw.h"
#endif
#include "mambatron/check.h"
#include "mambatron/ops.h"

namespace mambatron {

namespace {

// f32 or f64 on the CPU; on CUDA f32, or also bf16 where `bf16_ok` (gradients for the norm).
void check_float(const Tensor& t, const char* op, const char* name, bool bf16_ok = false) {
  check_defined(t, op, name);
  if (t.is_cuda())
    MT_CHECK(t.dtype() == DType::f32 || (bf16_ok && t.dtype() == DType::bf16), TypeError, op, ": argument '", name,
             "' has dtype ", dtype_name(t.dtype()), bf16_ok ? ", expected f32 or bf16 on CUDA" : ", expected f32 on CUDA");
  else
    MT_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::f64, TypeError, op, ": argument '", name,
             "' has dtype ", dtype_name(t.dtype()), ", expected f32 or f64");
}

void check_like(const Tensor& t, const Tensor& ref, const char* op, const char* name, const char* ref_name) {
  check_same_dtype(t, ref, op, name, ref_name);
  check_same_device(t, ref, op, name, ref_name);
  check_shape(t, op, name, ref.shape());
  check_contiguous(t, op, name);
}

void check_grads(const std::vector<Tensor>& grads, const char* op) {
  for (size_t i = 0; i < grads.size(); ++i) {
    const std::string name = "grads[" + std::to_string(i) + "]";
    check_defined(grads[i], op, name.c_str());
    if (i > 0) check_same_device(grads[i], grads[0], op, name.c_str(), "grads[0]");  // first: the dtype rule is per device
    check_float(grads[i], op, name.c_str(), true);
    if (i > 0) check_same_dtype(grads[i], grads[0], op, name.c_str(), "grads[0]");
    check_contiguous(grads[i], op, name.c_str());
  }
}

void check_adamw(const Tensor& params, const Tensor& grads, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                 const Tensor& decay_mask, const AdamWOptions& opt) {
  const char* op = "adamw_update";
  check_float(params, op, "params");
  MT_CHECK(params.dim() == 1, ValueError, op, ": argument 'params' has shape ", shape_str(params.shape()),
           ", expected 1 dim [N] (a flat buffer)");
  check_contiguous(params, op, "params");
  check_like(grads, params, op, "grads", "params");
  check_like(exp_avg, params, op, "exp_avg", "params");
  check_like(exp_avg_sq, params, op, "exp_avg_sq", "params");
  if (decay_mask.defined()) {
    check_dtype(decay_mask, op, "decay_mask", DType::u8);
    check_same_device(decay_mask, params, op, "decay_mask", "params");
    check_shape(decay_mask, op, "decay_mask", params.shape());
    check_contiguous(decay_mask, op, "decay_mask");
  }
  MT_CHECK(opt.step >= 1, ValueError, op, ": step is ", opt.step, ", expected >= 1 (1-based)");
  MT_CHECK(std::isfinite(opt.lr) && opt.lr >= 0, ValueError, op, ": lr is ", opt.lr, ", expected finite and >= 0");
  MT_CHECK(opt.beta1 >= 0 && opt.beta1 < 1, ValueError, op, ": beta1 is ", opt.beta1, ", expected in [0, 1)");
  MT_CHECK(opt.beta2 >= 0 && opt.beta2 < 1, ValueError, op, ": beta2 is ", opt.beta2, ", expected in [0, 1)");
  MT_CHECK(std::isfinite(opt.eps) && opt.eps > 0, ValueError, op, ": eps is ", opt.eps, ", expected finite and > 0");
  MT_CHECK(std::isfinite(opt.weight_decay) && opt.weight_decay >= 0, ValueError, op, ": weight_decay is ",
           opt.weight_decay, ", expected finite and >= 0");
}

// One step on the tensors' device; `copy` (may be undefined) receives the new params.
void run_adamw(const Tensor& params, const Tensor& grads, const Tensor& exp_avg, const Tensor& exp_avg_sq,
               const Tensor& decay_mask, const AdamWOptions& opt, const Tensor& copy) {
  if (params.numel() == 0) return;
  if (params.is_cuda()) {
#ifdef MAMBATRON_WITH_CUDA
    return cuda::adamw_update(params, grads, exp_avg, exp_avg_sq, decay_mask, opt, copy);
#else
    throw TypeError("adamw_update: tensor on " + params.device().str() + ", but mambatron was built without CUDA");
#endif
  }
  cpu::adamw_update(params, grads, exp_avg, exp_avg_sq, decay_mask, opt);
  if (copy.defined()) {
    Tensor dst = copy;
    cpu::copy(params, dst);
  }
}

double dispatch_norm(const std::vector<Tensor>& grads) {
  if (grads.empty()) return 0.0;
  return MT_DISPATCH(grads[0], grad_norm, grads);
}

}  // namespace

void adamw_update(Tensor& params, const Tensor& grads, Tensor& exp_avg, Tensor& exp_avg_sq, const Tensor& decay_mask,
                  const AdamWOptions& opt) {
  check_adamw(params, grads, exp_avg, exp_avg_sq, decay_mask, opt);
  run_adamw(params, grads, exp_avg, exp_avg_sq, decay_mask, opt, Tensor());
}

void adamw_update(Tensor& params, const Tensor& grads, Tensor& exp_avg, Tensor& exp_avg_sq, const Tensor& decay_mask,
                  const AdamWOptions& opt, Tensor& params_copy) {
  const char* op = "adamw_update";
  check_adamw(params, grads, exp_avg, exp_avg_sq, decay_mask, opt);
  check_defined(params_copy, op, "params_copy");
  check_same_device(params_copy, params, op, "params_copy", "params");
  check_shape(params_copy, op, "params_copy", params.shape());
  check_contiguous(params_copy, op, "params_copy");
  if (params.is_cuda())
    MT_CHECK(params_copy.dtype() == DType::bf16 || params_copy.dtype() == DType::f32, TypeError, op,
             ": argument 'params_copy' has dtype ", dtype_name(params_copy.dtype()), ", expected bf16 or f32 on CUDA");
  else
    check_float(params_copy, op, "params_copy");
  run_adamw(params, grads, exp_avg, exp_avg_sq, decay_mask, opt, params_copy);
}

double grad_norm(const std::vector<Tensor>& grads) {
  check_grads(grads, "grad_norm");
  return dispatch_norm(grads);
}

double clip_grad_norm(const std::vector<Tensor>& grads, double max_norm) {
  const char* op = "clip_grad_norm";
  MT_CHECK(std::isfinite(max_norm) && max_norm > 0, ValueError, op, ": max_norm is ", max_norm,
           ", expected finite and > 0");
  check_grads(grads, op);
  const double norm = dispatch_norm(grads);
  if (std::isfinite(norm) && norm > max_norm) MT_DISPATCH(grads[0], scale_inplace, grads, max_norm / (norm + 1e-6));
  return norm;
}

}  // namespace mambatron
