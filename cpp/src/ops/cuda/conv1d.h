// CUDA causal depthwise conv1d (see ops.h). x, out, dout, dx and every state
// (initial_state, final_state, conv_state, d_final_state, d_initial_state) are bf16
// or f32 with one dtype; weight and bias are bf16 or f32 with one dtype of their own;
// dweight and dbias likewise (their own dtype again). Arithmetic is f32. dweight and
// dbias are summed in f32 per unit of 4 segments of up to 256 tokens (fewer for small
// tensors; the count depends on the shape only), then over units in order in f64,
// through a scratch of units × (w + 1) × c floats: no atomics, the same bits on every
// run. seq_idx is not checked for order (that would cost a wait): a tap counts when
// its document id equals the token's.
#pragma once
#include "mambatron/ops.h"

namespace mambatron::cuda {

void conv1d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& initial_state,
                    const Tensor& seq_idx, Tensor& out, Tensor& final_state, const Conv1dOptions& opt);
void conv1d_backward(const Tensor& dout, const Tensor& d_final_state, const Tensor& x, const Tensor& weight,
                     const Tensor& bias, const Tensor& initial_state, const Tensor& seq_idx, Tensor& dx,
                     Tensor& dweight, Tensor& dbias, Tensor& d_initial_state, const Conv1dOptions& opt);
void conv1d_step(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& conv_state, Tensor& out,
                 const Conv1dOptions& opt);

}  // namespace mambatron::cuda
