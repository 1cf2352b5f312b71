// CUDA whole-tensor arithmetic (see ops.h): bf16 or f32, f32 math, one rounding.
#pragma once
#include "mambatron/tensor.h"

namespace mambatron::cuda {

void add(const Tensor& a, const Tensor& b, Tensor& out);
void mul(const Tensor& a, const Tensor& b, Tensor& out);
void neg_exp(const Tensor& x, Tensor& out);

}  // namespace mambatron::cuda
