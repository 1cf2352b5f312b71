// CUDA activations (see ops.h). On CUDA every tensor of one call is bf16 or f32
// (one dtype); the math runs in f32 and each output is rounded once.
#pragma once
#include "mambatron/tensor.h"

namespace mambatron::cuda {

void gelu_forward(const Tensor& x, Tensor& out);
void gelu_backward(const Tensor& dout, const Tensor& x, Tensor& dx);
void squared_relu_forward(const Tensor& x, Tensor& out);
void squared_relu_backward(const Tensor& dout, const Tensor& x, Tensor& dx);
void silu_forward(const Tensor& x, Tensor& out);
void silu_backward(const Tensor& dout, const Tensor& x, Tensor& dx);
void swiglu_forward(const Tensor& x, Tensor& out);
void swiglu_backward(const Tensor& dout, const Tensor& x, Tensor& dx);

}  // namespace mambatron::cuda
