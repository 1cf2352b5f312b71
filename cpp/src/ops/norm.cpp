// Norms: argument checks and dispatch. CPU: ops/cpu/norm.cpp; CUDA: ops/cuda/norm.cu
// (dtypes: dense_checks.h).
#include <cmath>

#include "backend.h"
#include "cpu/norm.h"
#ifdef MAMBATRON_WITH_CUDA
#include "cuda/norm.h"
#endif
#include "dense_checks.h"
#include "mambatron/ops.h"

namespace mambatron {

using dense::check_float_like;
using dense::check_float_ref;
using dense::check_param_like;
using dense::check_stat;
using dense::leading_shape;

namespace {
// x: f32/f64, [..., d] with d ≥ 1. Returns d.
int64_t check_rows_input(const Tensor& x, const char* op, const char* name) {
  check_float_ref(x, op, name);
  MT_CHECK(x.dim() >= 1 && x.size(-1) >= 1, ValueError, op, ": argument '", name, "' has shape ",
           shape_str(x.shape()), ", expected [..., d] with d >= 1");
  return x.size(-1);
}
void check_eps(double eps, const char* op) {
  MT_CHECK(std::isfinite(eps) && eps >= 0, ValueError, op, ": eps is ", eps, ", expected a finite value >= 0");
}
void check_groups(int64_t groups, int64_t d, const char* op) {
  MT_CHECK(groups >= 1 && d % groups == 0, ValueError, op, ": groups is ", groups,
           ", expected a divisor of the channel count d = ", d);
}
}  // namespace

void rmsnorm_forward(const Tensor& x, const Tensor& weight, double eps, Tensor& out, Tensor& rstd) {
  const char* op = "rmsnorm_forward";
  int64_t d = check_rows_input(x, op, "x");
  check_param_like(weight, x, weight, op, "weight", "x", "weight", {d});
  check_float_like(out, x, op, "out", "x", x.shape());
  check_stat(rstd, x, op, "rstd", "x", leading_shape(x.shape()));
  check_eps(eps, op);
  MT_DISPATCH(x, rmsnorm_forward, x, weight, eps, out, rstd);
}

void rmsnorm_backward(const Tensor& dout, const Tensor& x, const Tensor& weight, const Tensor& rstd, Tensor& dx,
                      Tensor& dweight, const Tensor& dresidual) {
  const char* op = "rmsnorm_backward";
  int64_t d = check_rows_input(x, op, "x");
  check_float_like(dout, x, op, "dout", "x", x.shape());
  check_param_like(weight, x, weight, op, "weight", "x", "weight", {d});
  check_stat(rstd, x, op, "rstd", "x", leading_shape(x.shape()));
  check_float_like(dx, x, op, "dx", "x", x.shape());
  check_param_like(dweight, x, weight, op, "dweight", "x", "weight", {d});
  if (dresidual.defined()) check_float_like(dresidual, x, op, "dresidual", "x", x.shape());
  MT_DISPATCH(x, rmsnorm_backward, dout, x, weight, rstd, dx, dweight, dresidual);
}

void layernorm1p_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps, Tensor& out,
                         Tensor& mean, Tensor& rstd) {
  const char* op = "layernorm1p_forward";
  int64_t d = check_rows_input(x, op, "x");
  check_param_like(gamma, x, gamma, op, "gamma", "x", "gamma", {d});
  check_param_like(beta, x, gamma, op, "beta", "x", "gamma", {d});
  check_float_like(out, x, op, "out", "x", x.shape());
  check_stat(mean, x, op, "mean", "x", leading_shape(x.shape()));
  check_stat(rstd, x, op, "rstd", "x", leading_shape(x.shape()));
  check_eps(eps, op);
  MT_DISPATCH(x, layernorm1p_forward, x, gamma, beta, eps, out, mean, rstd);
}

void layernorm1p_backward(const Tensor& dout, const Tensor& x, const Tensor& gamma, const Tensor& mean,
                          const Tensor& rstd, Tensor& dx, Tensor& dgamma, Tensor& dbeta, const Tensor& dresidual) {
  const char* op = "layernorm1p_backward";
  int64_t d = check_rows_input(x, op, "x");
  check_float_like(dout, x, op, "dout", "x", x.shape());
  check_param_like(gamma, x, gamma, op, "gamma", "x", "gamma", {d});
  check_stat(mean, x, op, "mean", "x", leading_shape(x.shape()));
  check_stat(rstd, x, op, "rstd", "x", leading_shape(x.shape()));
  check_float_like(dx, x, op, "dx", "x", x.shape());
  check_param_like(dgamma, x, gamma, op, "dgamma", "x", "gamma", {d});
  check_param_like(dbeta, x, gamma, op, "dbeta", "x", "gamma", {d});
  if (dresidual.defined()) check_float_like(dresidual, x, op, "dresidual", "x", x.shape());
  MT_DISPATCH(x, layernorm1p_backward, dout, x, gamma, mean, rstd, dx, dgamma, dbeta, dresidual);
}

void gated_rmsnorm_forward(const Tensor& y, const Tensor& z, const Tensor& weight, int64_t groups, double eps,
                           Tensor& out, Tensor& rstd) {
  const char* op = "gated_rmsnorm_forward";
  int64_t d = check_rows_input(y, op, "y");
  check_float_like(z, y, op, "z", "y", y.shape());
  check_param_like(weight, y, weight, op, "weight", "y", "weight", {d});
  check_groups(groups, d, op);
  check_float_like(out, y, op, "out", "y", y.shape());
  check_stat(rstd, y, op, "rstd", "y", dense::with_last(y.shape(), groups));
  check_eps(eps, op);
  MT_DISPATCH(y, gated_rmsnorm_forward, y, z, weight, groups, eps, out, rstd);
}

void gated_rmsnorm_backward(const Tensor& dout, const Tensor& y, const Tensor& z, const Tensor& weight,
                            const Tensor& rstd, int64_t groups, Tensor& dy, Tensor& dz, Tensor& dweight) {
  const char* op = "gated_rmsnorm_backward";
  int64_t d = check_rows_input(y, op, "y");
  check_float_like(dout, y, op, "dout", "y", y.shape());
  check_float_like(z, y, op, "z", "y", y.shape());
  check_param_like(weight, y, weight, op, "weight", "y", "weight", {d});
  check_groups(groups, d, op);
  check_stat(rstd, y, op, "rstd", "y", dense::with_last(y.shape(), groups));
  check_float_like(dy, y, op, "dy", "y", y.shape());
  check_float_like(dz, y, op, "dz", "y", y.shape());
  check_param_like(dweight, y, weight, op, "dweight", "y", "weight", {d});
  MT_DISPATCH(y, gated_rmsnorm_backward, dout, y, z, weight, rstd, groups, dy, dz, dweight);
}

}  // namespace mambatron
