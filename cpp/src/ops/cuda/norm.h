// CUDA norms (see ops.h). Activations (x, out, dout, dx; y, z, dy, dz) are bf16 or
// f32 with one dtype; parameters and their gradients are f32 or bf16 with one dtype
// of their own; saved statistics (mean, rstd) are f32. Row statistics are f32 sums
// in a fixed tree; parameter gradients are f64 column sums over fixed row chunks,
// then added chunk by chunk in order: no atomics, the same bits on every run.
#pragma once
#include <cstdint>

#include "mambatron/tensor.h"

namespace mambatron::cuda {

void rmsnorm_forward(const Tensor& x, const Tensor& weight, double eps, Tensor& out, Tensor& rstd);
void rmsnorm_backward(const Tensor& dout, const Tensor& x, const Tensor& weight, const Tensor& rstd, Tensor& dx,
                      Tensor& dweight, const Tensor& dresidual);
void layernorm1p_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps, Tensor& out,
                         Tensor& mean, Tensor& rstd);
void layernorm1p_backward(const Tensor& dout, const Tensor& x, const Tensor& gamma, const Tensor& mean,
                          const Tensor& rstd, Tensor& dx, Tensor& dgamma, Tensor& dbeta, const Tensor& dresidual);
void gated_rmsnorm_forward(const Tensor& y, const Tensor& z, const Tensor& weight, int64_t groups, double eps,
                           Tensor& out, Tensor& rstd);
void gated_rmsnorm_backward(const Tensor& dout, const Tensor& y, const Tensor& z, const Tensor& weight,
                            const Tensor& rstd, int64_t groups, Tensor& dy, Tensor& dz, Tensor& dweight);

}  // namespace mambatron::cuda
