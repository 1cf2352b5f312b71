// CUDA AdamW and the global gradient norm (see ops.h). AdamW runs on f32 buffers
// (master weights and state) and may write a rounded working copy of the new
// parameters (bf16 or f32) in the same pass. The gradient norm and clipping take
// f32 or bf16 gradients; the norm is a two-pass f64 reduction in a fixed order.
#pragma once
#include <vector>

#include "mambatron/ops.h"

namespace mambatron::cuda {

// params_copy: undefined, or [N] bf16/f32 on the same device, set to the new params.
void adamw_update(const Tensor& params, const Tensor& grads, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                  const Tensor& decay_mask, const AdamWOptions& opt, const Tensor& params_copy);
double grad_norm(const std::vector<Tensor>& grads);
void scale_inplace(const std::vector<Tensor>& grads, double scale);

}  // namespace mambatron::cuda
