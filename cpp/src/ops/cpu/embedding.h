// CPU embedding lookup and its gradient (see ops.h).
#pragma once
#include "mambatron/tensor.h"

namespace mambatron::cpu {

void embedding_forward(const Tensor& weight, const Tensor& tokens, Tensor& out);
void embedding_backward(const Tensor& dout, const Tensor& tokens, Tensor& dweight, bool accumulate);

}  // namespace mambatron::cpu
