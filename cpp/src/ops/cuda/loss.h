// Linear + cross-entropy on CUDA (see ops.h). h and dh are bf16 or f32 (one dtype);
// w and dw are bf16 or f32, each of its own dtype; targets i32 or i64; mask u8 or
// f32; losses f32. The logits come from cuBLASLt in blocks of chunk_size rows by
// vocab_chunk_size vocabulary rows (bf16 operands when h and w are both bf16, else
// f32), always with f32 output. Deterministic; one stream synchronisation reads the
// target/mask check back before any output is written, one more reads the loss.
#pragma once
#include "mambatron/ops.h"

namespace mambatron::cuda {

// Forward when dh and dw are null, else forward and gradients; losses may be null.
double linear_cross_entropy(const Tensor& h, const Tensor& w, const Tensor& targets, const Tensor& mask,
                            const LinearCrossEntropyOptions& opt, Tensor* dh, Tensor* dw, Tensor* losses,
                            const char* op);

}  // namespace mambatron::cuda
