// Mamba-1 selective scan on the CPU. The public entry points
// (ops/selective_scan.cpp) check the arguments; these assume they are valid.
#pragma once
#include "mambatron/ops.h"

namespace mambatron::cpu {

void selective_scan_forward(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
                            const Tensor& D, const Tensor& z, const Tensor& delta_bias, const Tensor& initial_state,
                            const Tensor& seq_idx, Tensor& y, Tensor& final_state, const SelectiveScanOptions& opt);
void selective_scan_backward(const Tensor& dy, const Tensor& d_final_state, const Tensor& u, const Tensor& delta,
                             const Tensor& A, const Tensor& B, const Tensor& C, const Tensor& D, const Tensor& z,
                             const Tensor& delta_bias, const Tensor& initial_state, const Tensor& seq_idx,
                             Tensor& du, Tensor& ddelta, Tensor& dA, Tensor& dB, Tensor& dC, Tensor& dD, Tensor& dz,
                             Tensor& ddelta_bias, Tensor& d_initial_state, const SelectiveScanOptions& opt);
void selective_scan_step(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
                         const Tensor& D, const Tensor& z, const Tensor& delta_bias, Tensor& state, Tensor& y,
                         const SelectiveScanOptions& opt);

}  // namespace mambatron::cpu
