// Embedding: argument checks and dispatch. CPU: ops/cpu/embedding.cpp; CUDA:
// ops/cuda/embedding.cu (the table and the activations each bf16 or f32).
#include "backend.h"
#include "cpu/embedding.h"
#ifdef MAMBATRON_WITH_CUDA
#include "cuda/embedding.h"
#endif
#include "dense_checks.h"
#include "mambatron/ops.h"

namespace mambatron {

namespace {
// tokens: [b, l], i32 or i64, contiguous, on the device of `ref`.
void check_tokens(const Tensor& tokens, const Tensor& ref, const char* op, const char* ref_name) {
  check_defined(tokens, op, "tokens");
  check_same_device(tokens, ref, op, "tokens", ref_name);
  MT_CHECK(tokens.dtype() == DType::i32 || tokens.dtype() == DType::i64, TypeError, op,
           ": argument 'tokens' has dtype ", dtype_name(tokens.dtype()), ", expected i32 or i64");
  MT_CHECK(tokens.dim() == 2, ValueError, op, ": argument 'tokens' has shape ", shape_str(tokens.shape()),
           ", expected 2 dims [b, l]");
  check_contiguous(tokens, op, "tokens");
}
}  // namespace

void embedding_forward(const Tensor& weight, const Tensor& tokens, Tensor& out) {
  const char* op = "embedding_forward";
  dense::check_float_ref(weight, op, "weight");
  MT_CHECK(weight.dim() == 2, ValueError, op, ": argument 'weight' has shape ", shape_str(weight.shape()),
           ", expected 2 dims [V, d]");
  check_tokens(tokens, weight, op, "weight");
  dense::check_float_own_dtype(out, weight, op, "out", "weight", {tokens.size(0), tokens.size(1), weight.size(1)});
  MT_DISPATCH(weight, embedding_forward, weight, tokens, out);
}

void embedding_backward(const Tensor& dout, const Tensor& tokens, Tensor& dweight, bool accumulate) {
  const char* op = "embedding_backward";
  dense::check_float_ref(dout, op, "dout");
  MT_CHECK(dout.dim() == 3, ValueError, op, ": argument 'dout' has shape ", shape_str(dout.shape()),
           ", expected 3 dims [b, l, d]");
  check_tokens(tokens, dout, op, "dout");
  check_shape(tokens, op, "tokens", {dout.size(0), dout.size(1)});
  check_same_device(dweight, dout, op, "dweight", "dout");
  MT_CHECK(dweight.dim() == 2 && dweight.size(1) == dout.size(2), ValueError, op, ": argument 'dweight' has shape ",
           shape_str(dweight.shape()), ", expected [V, ", dout.size(2), "] (d from 'dout')");
  dense::check_float_own_dtype(dweight, dout, op, "dweight", "dout", dweight.shape());
  MT_DISPATCH(dout, embedding_backward, dout, tokens, dweight, accumulate);
}

}  // namespace mambatron
