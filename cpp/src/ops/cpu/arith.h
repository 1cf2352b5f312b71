// CPU whole-tensor arithmetic (see ops.h): contiguous f32/f64 loops.
#pragma once
#include "mambatron/tensor.h"

namespace mambatron::cpu {

void add(const Tensor& a, const Tensor& b, Tensor& out);
void mul(const Tensor& a, const Tensor& b, Tensor& out);
void neg_exp(const Tensor& x, Tensor& out);

}  // namespace mambatron::cpu
