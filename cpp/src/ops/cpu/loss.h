// Linear + cross-entropy on the CPU (internal; arguments already checked by ops/loss.cpp).
#pragma once
#include "mambatron/ops.h"

namespace mambatron::cpu {

// Forward when dh and dw are null, else forward and gradients. losses may be null.
// `op` names the public op in the messages of the value checks done here (targets, mask).
double linear_cross_entropy(const Tensor& h, const Tensor& w, const Tensor& targets, const Tensor& mask,
                            const LinearCrossEntropyOptions& opt, Tensor* dh, Tensor* dw, Tensor* losses,
                            const char* op);

}  // namespace mambatron::cpu
