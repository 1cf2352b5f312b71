// CUDA SSD (Mamba-2 scan, see ops.h). Activations (x, dt, B, C, y and their
// gradients) are bf16 or f32 with one dtype; A, D, dt_bias and their gradients are
// f32; the recurrent states (initial/final state, their gradients, the decode state)
// are f32. Forward and backward always run the chunked form: opt.chunk_size picks the
// chunk length Q (0: kDefaultChunk; above kMaxChunk the chunks are kMaxChunk long,
// the same numbers up to rounding). seq_idx is not checked for order on the device.
//
// Scratch from the caching allocator: forward b·h·l·12 bytes of per-token scalars and
// the states entering each chunk, b·h·⌈l/Q⌉·p·n·4 bytes; backward twice that state
// memory (states and their gradients) plus b·h·⌈l/Q⌉·24 bytes of partial sums; both
// also C·Bᵀ of each chunk and group, b·g·⌈l/Q⌉·T²·4 bytes (T = 64 for Q ≤ 64, else 128).
// Bits repeat run after run: every sum runs in a fixed order, without atomics.
#pragma once
#include <cstdint>

#include "mambatron/ops.h"

namespace mambatron::cuda {

constexpr int64_t kSsdDefaultChunk = 128;
constexpr int64_t kSsdMaxChunk = 128;

void ssd_forward(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B, const Tensor& C,
                 const Tensor& D, const Tensor& dt_bias, const Tensor& initial_state, const Tensor& seq_idx,
                 Tensor& y, Tensor& final_state, const SsdOptions& opt);
void ssd_backward(const Tensor& dy, const Tensor& d_final_state, const Tensor& x, const Tensor& dt, const Tensor& A,
                  const Tensor& B, const Tensor& C, const Tensor& D, const Tensor& dt_bias,
                  const Tensor& initial_state, const Tensor& seq_idx, Tensor& dx, Tensor& ddt, Tensor& dA, Tensor& dB,
                  Tensor& dC, Tensor& dD, Tensor& ddt_bias, Tensor& d_initial_state, const SsdOptions& opt);
void ssd_step(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B, const Tensor& C, const Tensor& D,
              const Tensor& dt_bias, Tensor& state, Tensor& y, const SsdOptions& opt);

}  // namespace mambatron::cuda
