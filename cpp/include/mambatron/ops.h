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

}  // namespace mambatron
