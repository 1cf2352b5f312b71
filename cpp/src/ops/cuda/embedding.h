// CUDA embedding (see ops.h). weight and dweight are f32 or bf16, out and dout
// bf16 or f32, each chosen independently; tokens i32 or i64. Both directions
// check the ids and report the first bad one like the CPU op, which costs one
// stream synchronisation per call (the forward reads a flag back; the backward
// orders the positions by id on the host).
#pragma once
#include "mambatron/tensor.h"

namespace mambatron::cuda {

void embedding_forward(const Tensor& weight, const Tensor& tokens, Tensor& out);
void embedding_backward(const Tensor& dout, const Tensor& tokens, Tensor& dweight, bool accumulate);

}  // namespace mambatron::cuda
