// Every op of the engine, declared once. Each dispatches on its tensors' device
// to the CPU reference (cpp/src/ops/cpu/NAME.cpp) or the CUDA version
// (cpp/src/ops/cuda/NAME.cu). Ops write into outputs the caller allocated; the
// forms that return a tensor allocate it.
#pragma once
#include <optional>

#include "mambatron/tensor.h"

namespace mambatron {

// ---------------------------------------------------------------- gemm
// c = alpha · op(a) @ op(b) + beta · c, op(x) = x or xᵀ over the last two dims.
// a: [m, k] (or [k, m] when trans_a), optionally with a leading batch dim;
// b likewise [k, n]; a 2-D operand is broadcast over the other's batch.
// CPU: f32 and f64, bf16/f16 computed in f32. CUDA: bf16 or f16 inputs with
// bf16, f16 or f32 output, or f32 throughout; fp32 accumulation always.
struct GemmOptions {
  bool trans_a = false;
  bool trans_b = false;
  float alpha = 1.0f;
  float beta = 0.0f;
};
void gemm(const Tensor& a, const Tensor& b, Tensor& c, const GemmOptions& opt = {});
Tensor gemm(const Tensor& a, const Tensor& b, const GemmOptions& opt = {},
            std::optional<DType> out_dtype = std::nullopt);

}  // namespace mambatron

namespace mambatron {

// ---------------------------------------------------------------- embedding

// ---------------------------------------------------------------- norms

// ---------------------------------------------------------------- activations

// ---------------------------------------------------------------- loss (linear + cross-entropy)

// ---------------------------------------------------------------- optimizer (AdamW, gradient norm)

// ---------------------------------------------------------------- conv1d

// ---------------------------------------------------------------- selective scan (Mamba-1)

// ---------------------------------------------------------------- ssd (Mamba-2)

// ---------------------------------------------------------------- attention
// Causal softmax attention with grouped-query sharing and optional packed documents.
// q: [b, l, hq, p]; k, v: [b, l, hkv, p] with hq a multiple of hkv (query head j
// uses kv head j / (hq / hkv)); any head dim p. seq_idx: optional int32 [b, l]
// document ids, non-decreasing within a row: token i attends to tokens j <= i
// with seq_idx[j] == seq_idx[i]. softmax_scale defaults to 1/sqrt(p).
// Writes out [b, l, hq, p] and lse [b, hq, l] = log Σ_j exp(scale·q_i·k_j),
// the log-sum-exp that backward uses. f32 or f64, all the same dtype.
void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, Tensor& lse,
                       const Tensor& seq_idx = Tensor(), std::optional<double> softmax_scale = std::nullopt);
// Gradients of attention_forward: dout, q, k, v, out, lse as above (out and lse from
// the forward) -> dq [b, l, hq, p], dk and dv [b, l, hkv, p] (overwritten; for GQA
// each kv head's gradient sums its query heads in a fixed order).
void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& seq_idx = Tensor(),
                        std::optional<double> softmax_scale = std::nullopt);

// Rotary position embedding, rotate-half convention, on the first
// rotary_dim = rotary_fraction · p dims of every head (rotary_dim must be an even
// integer); the other dims pass through. With r = rotary_dim, for i < r/2:
//   θ = pos · base^(−2i/r), out[i] = x[i]·cos θ − x[i+r/2]·sin θ,
//   out[i+r/2] = x[i+r/2]·cos θ + x[i]·sin θ.
// x, out: [b, l, h, p] (out may be x itself). positions: optional int32 [b, l],
// default 0..l−1 in every row (packed documents pass positions restarting at 0).
struct RopeOptions {
  double rotary_fraction = 1.0;
  double base = 10000.0;
};
void rope_forward(const Tensor& x, Tensor& out, const Tensor& positions = Tensor(), const RopeOptions& opt = {});
// The gradient of rope_forward: the inverse rotation of dout into dx (dx may be dout).
void rope_backward(const Tensor& dout, Tensor& dx, const Tensor& positions = Tensor(), const RopeOptions& opt = {});

// KV cache for decoding: k_cache, v_cache [b, max_len, hkv, p]; cache_lens int32 [b]
// holds the number of valid entries of each sequence (prompts of different lengths
// share one cache). Writes one token's k, v [b, hkv, p] at position cache_lens[i]
// of each sequence i and adds 1 to cache_lens[i]; a full cache is an error.
void kv_cache_append(const Tensor& k, const Tensor& v, Tensor& k_cache, Tensor& v_cache, Tensor& cache_lens);
// One decode token: q [b, hq, p] attends to the first cache_lens[i] (>= 1) entries of
// its sequence's cache (grouped-query as in attention_forward) -> out [b, hq, p].
// After kv_cache_append the new token attends to itself.
void attention_decode(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& cache_lens,
                      Tensor& out, std::optional<double> softmax_scale = std::nullopt);


}  // namespace mambatron
