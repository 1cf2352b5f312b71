// Tiny model configurations and helpers shared by the model tests.
#pragma once
#include <string>

#include "testing.h"

namespace mambatron::testing {

// d 16, vocab 32; Mamba-2 with 4 heads of 8 in 2 groups and 4-token chunks (so a
// dozen tokens span several chunks, the last one partial); Mamba-1 with n 4; GQA
// attention 4 q heads over 2 kv heads of 8 with RoPE on half of each head; MLP 24.
inline ModelConfig tiny_config(const std::string& pattern) {
  ModelConfig c;
  c.pattern = pattern;
  c.d_model = 16;
  c.vocab_size = 32;
  c.init_std = 0.2;  // larger than the default so that every path carries signal
  c.mamba2.head_dim = 8;
  c.mamba2.d_state = 8;
  c.mamba2.n_groups = 2;
  c.mamba2.chunk_size = 4;
  c.mamba1.d_state = 4;
  c.mamba1.dt_rank = 3;
  c.attention.num_heads = 4;
  c.attention.num_kv_heads = 2;
  c.attention.head_dim = 8;
  c.attention.rotary_fraction = 0.5;
  c.mlp.ffn_hidden = 24;
  return c;
}

// Random ids in [0, vocab) as i32 [b, l].
inline Tensor random_tokens(int64_t b, int64_t l, int64_t vocab) {
  Tensor u = uniform({b, l}, 0.0, double(vocab));
  Tensor t = Tensor::empty({b, l}, DType::i32);
  const double* pu = u.data<double>();
  int32_t* pt = t.data<int32_t>();
  for (int64_t i = 0; i < t.numel(); ++i) pt[i] = int32_t(pu[i]);
  return t;
}

// Moves every parameter off its tidy init value (norm weights 1, D 1, LayerNorm-1p
// 0, ...) by a small random amount, so that no gradient path is degenerate.
inline void perturb_parameters(Model& m, double scale = 0.05) {
  Tensor noise = randn({m.num_parameters()}, m.parameter_dtype(), scale);
  Tensor flat = m.flat_parameters();
  Tensor sum = flat.to(Device::cpu(), DType::f64).clone();
  auto n = values(noise);
  double* p = sum.data<double>();
  for (size_t i = 0; i < n.size(); ++i) p[i] += n[i];
  flat.copy_(sum);
  m.sync_working_copy();
}

// Columns [start, start + len) of an i32 [b, l] tensor, as a new contiguous tensor.
inline Tensor columns(const Tensor& t, int64_t start, int64_t len) { return t.narrow(1, start, len).contiguous(); }

}  // namespace mambatron::testing
