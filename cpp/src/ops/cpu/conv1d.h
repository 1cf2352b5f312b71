// Causal depthwise conv1d on the CPU. The public entry points (ops/conv1d.cpp)
// check the arguments; these assume they are valid.
#pragma once
#include "mambatron/ops.h"

namespace mambatron::cpu {

void conv1d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& initial_state,
                    const Tensor& seq_idx, Tensor& out, Tensor& final_state, const Conv1dOptions& opt);
void conv1d_backward(const Tensor& dout, const Tensor& d_final_state, const Tensor& x, const Tensor& weight,
                     const Tensor& bias, const Tensor& initial_state, const Tensor& seq_idx, Tensor& dx,
                     Tensor& dweight, Tensor& dbias, Tensor& d_initial_state, const Conv1dOptions& opt);
void conv1d_step(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& conv_state, Tensor& out,
                 const Conv1dOptions& opt);

}  // namespace mambatron::cpu
