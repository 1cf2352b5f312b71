// conv1d: argument checks and dispatch. CPU: ops/cpu/conv1d.cpp (one dtype, f32 or
// f64); CUDA: ops/cuda/conv1d.cu (x and the states bf16 or f32; weight and bias, and
// dweight and dbias, each pair bf16 or f32 of its own).
#include "backend.h"
#include "cpu/conv1d.h"
#ifdef MAMBATRON_WITH_CUDA
#include "cuda/conv1d.h"
#endif
#include "dense_checks.h"
#include "mambatron/check.h"
#include "mambatron/ops.h"

namespace mambatron {

namespace {

// A float tensor of the op: the dtype of `ref` (x), on ref's device, of exactly `shape`, contiguous.
void check_float(const Tensor& t, const Tensor& ref, const char* op, const char* name, const char* ref_name,
                 const Shape& shape) {
  check_defined(t, op, name);
  check_same_dtype(t, ref, op, name, ref_name);
  check_same_device(t, ref, op, name, ref_name);
  check_shape(t, op, name, shape);
  check_contiguous(t, op, name);
}
void check_optional(const Tensor& t, const Tensor& ref, const char* op, const char* name, const Shape& shape) {
  if (t.defined()) check_float(t, ref, op, name, "x", shape);
}
void check_seq_idx(const Tensor& seq_idx, const Tensor& x, const char* op, const Shape& shape) {
  if (!seq_idx.defined()) return;
  check_dtype(seq_idx, op, "seq_idx", DType::i32);
  check_same_device(seq_idx, x, op, "seq_idx", "x");
  check_shape(seq_idx, op, "seq_idx", shape);
  check_contiguous(seq_idx, op, "seq_idx");
}
// x: f32/f64 on the CPU, bf16/f32 on CUDA.
void check_x(const Tensor& x, const char* op, const char* name, int dims, const char* layout) {
  dense::check_float_ref(x, op, name);
  MT_CHECK(x.dim() == dims, ValueError, op, ": argument '", name, "' has shape ", shape_str(x.shape()),
           ", expected ", dims, " dims ", layout);
}
// Checks weight [c, w] against c and returns w. On CUDA its dtype is its own.
int64_t check_weight(const Tensor& weight, const Tensor& x, int64_t c, const char* op) {
  check_defined(weight, op, "weight");
  MT_CHECK(weight.dim() == 2, ValueError, op, ": argument 'weight' has shape ", shape_str(weight.shape()),
           ", expected 2 dims [c, width] with c = ", c);
  int64_t w = weight.size(1);
  MT_CHECK(w >= 2 && w <= 4, ValueError, op, ": argument 'weight' has shape ", shape_str(weight.shape()),
           ", expected width (dim 1) between 2 and 4");
  dense::check_param_like(weight, x, weight, op, "weight", "x", "weight", {c, w});
  return w;
}
// bias: like weight on CUDA (like x on the CPU); dbias likewise like dweight.
void check_optional_param(const Tensor& t, const Tensor& x, const Tensor& dtype_ref, const char* op,
                          const char* name, const char* ref_name, const Shape& shape) {
  if (t.defined()) dense::check_param_like(t, x, dtype_ref, op, name, "x", ref_name, shape);
}

}  // namespace

void conv1d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& initial_state,
                    const Tensor& seq_idx, Tensor& out, Tensor& final_state, const Conv1dOptions& opt) {
  const char* op = "conv1d_forward";
  check_x(x, op, "x", 3, "[b, l, c]");
  int64_t b = x.size(0), l = x.size(1), c = x.size(2);
  int64_t w = check_weight(weight, x, c, op);
  check_optional_param(bias, x, weight, op, "bias", "weight", {c});
  check_optional(initial_state, x, op, "initial_state", {b, c, w - 1});
  check_seq_idx(seq_idx, x, op, {b, l});
  check_float(out, x, op, "out", "x", {b, l, c});
  check_optional(final_state, x, op, "final_state", {b, c, w - 1});
  MT_DISPATCH(x, conv1d_forward, x, weight, bias, initial_state, seq_idx, out, final_state, opt);
}

void conv1d_backward(const Tensor& dout, const Tensor& d_final_state, const Tensor& x, const Tensor& weight,
                     const Tensor& bias, const Tensor& initial_state, const Tensor& seq_idx, Tensor& dx,
                     Tensor& dweight, Tensor& dbias, Tensor& d_initial_state, const Conv1dOptions& opt) {
  const char* op = "conv1d_backward";
  check_x(x, op, "x", 3, "[b, l, c]");
  int64_t b = x.size(0), l = x.size(1), c = x.size(2);
  int64_t w = check_weight(weight, x, c, op);
  check_optional_param(bias, x, weight, op, "bias", "weight", {c});
  check_optional(initial_state, x, op, "initial_state", {b, c, w - 1});
  check_seq_idx(seq_idx, x, op, {b, l});
  check_float(dout, x, op, "dout", "x", {b, l, c});
  check_optional(d_final_state, x, op, "d_final_state", {b, c, w - 1});
  check_float(dx, x, op, "dx", "x", {b, l, c});
  dense::check_param_like(dweight, x, dweight, op, "dweight", "x", "dweight", {c, w});
  check_optional_param(dbias, x, dweight, op, "dbias", "dweight", {c});
  check_optional(d_initial_state, x, op, "d_initial_state", {b, c, w - 1});
  MT_DISPATCH(x, conv1d_backward, dout, d_final_state, x, weight, bias, initial_state, seq_idx, dx, dweight, dbias,
              d_initial_state, opt);
}

void conv1d_step(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& conv_state, Tensor& out,
                 const Conv1dOptions& opt) {
  const char* op = "conv1d_step";
  check_x(x, op, "x", 2, "[b, c]");
  int64_t b = x.size(0), c = x.size(1);
  int64_t w = check_weight(weight, x, c, op);
  check_optional_param(bias, x, weight, op, "bias", "weight", {c});
  check_float(conv_state, x, op, "conv_state", "x", {b, c, w - 1});
  check_float(out, x, op, "out", "x", {b, c});
  MT_DISPATCH(x, conv1d_step, x, weight, bias, conv_state, out, opt);
}

}  // namespace mambatron
