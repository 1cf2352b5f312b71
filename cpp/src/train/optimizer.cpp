// AdamW over flat buffers: the moments live here, the update is ops.h's adamw_update.
#include <cmath>

#include "mambatron/error.h"
#include "mambatron/ops.h"
#include "mambatron/train.h"

namespace mambatron {

AdamW::AdamW(Tensor params, Tensor grads, Tensor decay_mask, const AdamWHyper& hyper, Tensor params_copy)
    : params_(std::move(params)),
      grads_(std::move(grads)),
      mask_(std::move(decay_mask)),
      copy_(std::move(params_copy)),
      hyper_(hyper) {
  MT_CHECK(params_.defined() && params_.dim() == 1 && params_.is_contiguous(), ValueError,
           "AdamW: params must be a contiguous 1-D (flat) buffer");
  MT_CHECK(params_.dtype() == DType::f32 || params_.dtype() == DType::f64, TypeError, "AdamW: params have dtype ",
           dtype_name(params_.dtype()), ", expected f32 or f64");
  MT_CHECK(grads_.defined() && grads_.shape() == params_.shape() && grads_.dtype() == params_.dtype(), ValueError,
           "AdamW: grads must match params (", shape_str(params_.shape()), ", ", dtype_name(params_.dtype()), ")");
  MT_CHECK(!mask_.defined() || (mask_.dtype() == DType::u8 && mask_.numel() == params_.numel()), ValueError,
           "AdamW: decay_mask must be u8 with ", params_.numel(), " elements");
  MT_CHECK(hyper_.beta1 >= 0 && hyper_.beta1 < 1 && hyper_.beta2 >= 0 && hyper_.beta2 < 1, ValueError,
           "AdamW: betas (", hyper_.beta1, ", ", hyper_.beta2, ") must lie in [0, 1)");
  MT_CHECK(hyper_.eps > 0 && hyper_.weight_decay >= 0, ValueError, "AdamW: eps = ", hyper_.eps,
           " must be > 0 and weight_decay = ", hyper_.weight_decay, " >= 0");
  MT_CHECK(!copy_.defined() || (copy_.shape() == params_.shape() && copy_.device() == params_.device()), ValueError,
           "AdamW: params_copy must have the params' shape ", shape_str(params_.shape()), " and device ",
           params_.device().str());
  m_ = Tensor::zeros(params_.shape(), params_.dtype(), params_.device());
  v_ = Tensor::zeros(params_.shape(), params_.dtype(), params_.device());
}

void AdamW::step(double lr) {
  MT_CHECK(std::isfinite(lr) && lr >= 0, ValueError, "AdamW.step: lr = ", lr, " must be finite and >= 0");
  AdamWOptions o;
  o.lr = lr;
  o.beta1 = hyper_.beta1;
  o.beta2 = hyper_.beta2;
  o.eps = hyper_.eps;
  o.weight_decay = hyper_.weight_decay;
  o.step = step_ + 1;
  if (copy_.defined())
    adamw_update(params_, grads_, m_, v_, mask_, o, copy_);
  else
    adamw_update(params_, grads_, m_, v_, mask_, o);
  step_ = o.step;  // only after a successful update
}

void AdamW::load_state(const Tensor& exp_avg, const Tensor& exp_avg_sq, int64_t step_count) {
  MT_CHECK(step_count >= 0, ValueError, "AdamW.load_state: step_count = ", step_count, " must be >= 0");
  for (const Tensor* t : {&exp_avg, &exp_avg_sq})
    MT_CHECK(t->defined() && t->numel() == params_.numel(), ValueError, "AdamW.load_state: a moment has ",
             t->defined() ? t->numel() : 0, " elements, expected ", params_.numel());
  // Both are checked before either is copied.
  m_.copy_(exp_avg.reshape(params_.shape()));
  v_.copy_(exp_avg_sq.reshape(params_.shape()));
  step_ = step_count;
}

}  // namespace mambatron
