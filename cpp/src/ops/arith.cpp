// Whole-tensor arithmetic: argument checks and dispatch. CPU: ops/cpu/arith.cpp;
// CUDA: ops/cuda/arith.cu.
#include "backend.h"
#include "cpu/arith.h"
#ifdef MAMBATRON_WITH_CUDA
#include "cuda/arith.h"
#endif
#include "dense_checks.h"
#include "mambatron/ops.h"

namespace mambatron {

using dense::check_float_like;
using dense::check_float_ref;

void add(const Tensor& a, const Tensor& b, Tensor& out) {
  check_float_ref(a, "add", "a");
  check_float_like(b, a, "add", "b", "a", a.shape());
  check_float_like(out, a, "add", "out", "a", a.shape());
  MT_DISPATCH(a, add, a, b, out);
}

void mul(const Tensor& a, const Tensor& b, Tensor& out) {
  check_float_ref(a, "mul", "a");
  check_float_like(b, a, "mul", "b", "a", a.shape());
  check_float_like(out, a, "mul", "out", "a", a.shape());
  MT_DISPATCH(a, mul, a, b, out);
}

void neg_exp(const Tensor& x, Tensor& out) {
  check_float_ref(x, "neg_exp", "x");
  check_float_like(out, x, "neg_exp", "out", "x", x.shape());
  MT_DISPATCH(x, neg_exp, x, out);
}

}  // namespace mambatron
