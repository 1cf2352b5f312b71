// CUDA attention family (see ops.h). q, k, v, out, dout, dq, dk, dv, the RoPE
// input and output, the KV caches and the decode q/out share one activation dtype,
// bf16 or f32; lse is f32 [b, hq, l]; seq_idx, positions and cache_lens are int32
// on the device. All arithmetic is f32. The public entry points (ops/attention.cpp)
// check the arguments; these assume them valid and the softmax scale resolved.
//
// Forward and backward first offer the call to cuDNN's fused attention
// (attention_cudnn.h), as the attention engine setting allows; otherwise they run
// the built-in flash-style tiled kernels: no l × l matrix is stored,
// causal tiles above the diagonal and tiles of other documents are skipped. The
// backward writes dk and dv per key tile (its query heads summed in order) and dq
// per query tile, each in its own pass: no atomics, the same bits on every run.
// Scratch from the caching allocator: 4·b·hq·l bytes in the backward (D = rowsum
// of dout ⊙ out); 4·b·hq·splits·(p + 2) bytes in the decode (split-K partials).
#pragma once
#include "mambatron/tensor.h"

namespace mambatron::cuda {

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, Tensor& lse,
                       const Tensor& seq_idx, double scale);
void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& seq_idx, double scale);
// cache_lens must have been checked against max_len by the caller (on the host).
void kv_cache_append(const Tensor& k, const Tensor& v, Tensor& k_cache, Tensor& v_cache, Tensor& cache_lens);
// cache_lens is read on the device only (no synchronisation): a length outside
// [0, max_len] is clamped to it, and a sequence with no entries gets zeros.
void attention_decode(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& cache_lens,
                      Tensor& out, double scale);
void rope_apply(const Tensor& x, Tensor& out, const Tensor& positions, int64_t rotary_dim, double base, bool inverse);

}  // namespace mambatron::cuda
