// CUDA Mamba-1 selective scan (see ops.h). u, delta, B, C, z, y and their gradients
// are bf16 or f32 with one dtype; A, D, delta_bias and their gradients are f32; the
// states (initial_state, final_state, d_final_state, d_initial_state and the decode
// state) are f32. Arithmetic is f32; n is at most 64. The forward walks each row whole
// when b·d >= 8192 (and a group is a multiple of 64 channels, B and C rows 16-byte
// aligned); otherwise it runs over chunks of tokens in parallel and allocates scratch
// for the state entering each chunk, at most about 2^20·n floats. Backward recomputes
// the forward from checkpoints (walked like the forward) and runs a block per (row,
// span of segments, channel block); it allocates scratch: the state
// entering every 64th token, b·l·d·n/64 floats (every 32nd, b·l·d·n/32, for n > 32);
// the state gradient entering each chunk of a span, at most about 2^20·n floats;
// when a group has more channels than a block (64 for n <= 16, else 32), per-block
// dB/dC sums of about 2·b·l·d·n/64 floats (resp. /32); and per-(row, span) dA, dD,
// ddelta_bias sums, b·nspan·d·(n + 2) doubles, which spans of several segments keep
// below about 2^19·(n + 2) doubles for n <= 16 (2^18·(n + 2) above), or b·d·(n + 2)
// doubles when a row is one span. At the Mamba-1 8B shape (d 8192, n 16, one group)
// and 16K tokens that is about 0.5 GB, 32 KB per token. Parameter sums run in a fixed
// order: the same bits on every run (for a given shape). seq_idx is not checked for
// order (that would cost a wait): the state resets wherever the id changes.
#pragma once
#include "mambatron/ops.h"

namespace mambatron::cuda {

// The largest state size the CUDA kernels take.
constexpr int64_t kSelectiveScanMaxState = 64;

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

}  // namespace mambatron::cuda
