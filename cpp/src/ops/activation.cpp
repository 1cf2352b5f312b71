// Activations: argument checks and dispatch. CPU: ops/cpu/activation.cpp; CUDA:
// ops/cuda/activation.cu (bf16 or f32).
#include "backend.h"
#include "cpu/activation.h"
#ifdef MAMBATRON_WITH_CUDA
#include "cuda/activation.h"
#endif
#include "dense_checks.h"
#include "mambatron/ops.h"

namespace mambatron {

using dense::check_float_like;
using dense::check_float_ref;

namespace {
// x any shape; out (or dx, with dout) of the same shape.
void check_unary(const char* op, const Tensor& x, const Tensor& out, const char* out_name) {
  check_float_ref(x, op, "x");
  check_float_like(out, x, op, out_name, "x", x.shape());
}
void check_unary_grad(const char* op, const Tensor& dout, const Tensor& x, const Tensor& dx) {
  check_float_ref(x, op, "x");
  check_float_like(dout, x, op, "dout", "x", x.shape());
  check_float_like(dx, x, op, "dx", "x", x.shape());
}
// x [..., 2f]; returns the shape [..., f] of out and dout.
Shape check_swiglu_input(const char* op, const Tensor& x) {
  check_float_ref(x, op, "x");
  MT_CHECK(x.dim() >= 1 && x.size(-1) % 2 == 0, ValueError, op, ": argument 'x' has shape ", shape_str(x.shape()),
           ", expected [..., 2f] (the last dim holds a then b, so it must be even)");
  return dense::with_last(x.shape(), x.size(-1) / 2);
}
}  // namespace

void gelu_forward(const Tensor& x, Tensor& out) {
  check_unary("gelu_forward", x, out, "out");
  MT_DISPATCH(x, gelu_forward, x, out);
}
void gelu_backward(const Tensor& dout, const Tensor& x, Tensor& dx) {
  check_unary_grad("gelu_backward", dout, x, dx);
  MT_DISPATCH(x, gelu_backward, dout, x, dx);
}

void squared_relu_forward(const Tensor& x, Tensor& out) {
  check_unary("squared_relu_forward", x, out, "out");
  MT_DISPATCH(x, squared_relu_forward, x, out);
}
void squared_relu_backward(const Tensor& dout, const Tensor& x, Tensor& dx) {
  check_unary_grad("squared_relu_backward", dout, x, dx);
  MT_DISPATCH(x, squared_relu_backward, dout, x, dx);
}

void silu_forward(const Tensor& x, Tensor& out) {
  check_unary("silu_forward", x, out, "out");
  MT_DISPATCH(x, silu_forward, x, out);
}
void silu_backward(const Tensor& dout, const Tensor& x, Tensor& dx) {
  check_unary_grad("silu_backward", dout, x, dx);
  MT_DISPATCH(x, silu_backward, dout, x, dx);
}

void swiglu_forward(const Tensor& x, Tensor& out) {
  const char* op = "swiglu_forward";
  Shape half = check_swiglu_input(op, x);
  check_float_like(out, x, op, "out", "x", half);
  MT_DISPATCH(x, swiglu_forward, x, out);
}
void swiglu_backward(const Tensor& dout, const Tensor& x, Tensor& dx) {
  const char* op = "swiglu_backward";
  Shape half = check_swiglu_input(op, x);
  check_float_like(dout, x, op, "dout", "x", half);
  check_float_like(dx, x, op, "dx", "x", x.shape());
  MT_DISPATCH(x, swiglu_backward, dout, x, dx);
}

}  // namespace mambatron
