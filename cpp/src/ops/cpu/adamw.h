// AdamW and the global gradient norm on the CPU (internal; arguments checked by ops/adamw.cpp).
#pragma once
#include <vector>

#include "mambatron/ops.h"

namespace mambatron::cpu {

void adamw_update(const Tensor& params, const Tensor& grads, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                  const Tensor& decay_mask, const AdamWOptions& opt);
// sqrt(Σ x²) over every element of every tensor, in a fixed order; inf/nan when any element is.
double grad_norm(const std::vector<Tensor>& grads);
// x *= scale for every element, in the tensors' dtype.
void scale_inplace(const std::vector<Tensor>& grads, double scale);

}  // namespace mambatron::cpu
