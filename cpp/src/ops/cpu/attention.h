// CPU reference of the attention family (attention.cpp, rope.cpp). The public
// functions in ops/attention.cpp check the arguments; these assume them valid
// (contiguous, f32 or f64, shapes as in ops.h, softmax scale resolved).
#pragma once
#include "mambatron/ops.h"
#include "mambatron/tensor.h"

namespace mambatron::cpu {

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, Tensor& lse,
                       const Tensor& seq_idx, double scale);
void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& seq_idx, double scale);
void kv_cache_append(const Tensor& k, const Tensor& v, Tensor& k_cache, Tensor& v_cache, Tensor& cache_lens);
void attention_decode(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& cache_lens,
                      Tensor& out, double scale);

// inverse = false: the rotation of rope_forward; true: its transpose (rope_backward).
void rope_apply(const Tensor& x, Tensor& out, const Tensor& positions, int64_t rotary_dim, double base, bool inverse);

}  // namespace mambatron::cpu
