// RMSNorm, LayerNorm-1p and the gated grouped RMSNorm for Python. Outputs that
// are not given are allocated with the shapes the op expects.
#include <pybind11/pybind11.h>

#include <tuple>
#include <utility>

#include "convert.h"
#include "mambatron/ops.h"

namespace mambatron::bind {

namespace {
// `given` as a tensor, or a new one of `shape` like `like` (dtype, device); parameter
// gradients are made like their parameter.
Tensor out_or_new(py::handle given, const char* op, const char* name, const Shape& shape, const Tensor& like) {
  if (!given.is_none()) return as_tensor(given, op, name);
  return Tensor::empty(shape, like.dtype(), like.device());
}
// A saved statistic: x's dtype on the CPU, f32 on CUDA (the dtypes the ops expect).
Tensor stat_or_new(py::handle given, const char* op, const char* name, const Shape& shape, const Tensor& x) {
  if (!given.is_none()) return as_tensor(given, op, name);
  return Tensor::empty(shape, x.is_cuda() ? DType::f32 : x.dtype(), x.device());
}
// The shape of x without its last dim, and x's shape with the last dim set to k
// (x's own shape when it has no dims: the op then reports x).
Shape rows_of(const Tensor& x) { return x.dim() ? Shape(x.shape().begin(), x.shape().end() - 1) : Shape{}; }
Shape last_to(const Tensor& x, int64_t k) {
  Shape s = x.shape();
  if (!s.empty()) s.back() = k;
  return s;
}
Shape width_of(const Tensor& x) { return {x.dim() ? x.size(-1) : 0}; }
}  // namespace

void bind_norm_ops(py::module_& m) {
  m.def(
      "rmsnorm_forward",
      [](py::handle x, py::handle weight, double eps, py::handle out, py::handle rstd) {
        const char* op = "rmsnorm_forward";
        Tensor tx = as_tensor(x, op, "x"), tw = as_tensor(weight, op, "weight");
        Tensor to = out_or_new(out, op, "out", tx.shape(), tx), tr = stat_or_new(rstd, op, "rstd", rows_of(tx), tx);
        py::gil_scoped_release release;
        rmsnorm_forward(tx, tw, eps, to, tr);
        return std::make_pair(to, tr);
      },
      py::arg("x"), py::arg("weight"), py::arg("eps") = 1e-5, py::kw_only(), py::arg("out") = py::none(),
      py::arg("rstd") = py::none(),
      R"(RMSNorm: out = x / sqrt(mean(x²) + eps) · weight over the last dim.

x: [..., d] f32/f64; weight: [d]. Returns (out [..., d], rstd [...]); rstd is saved for the backward.
On CUDA: x bf16/f32, weight f32/bf16, rstd f32 (and gradients like their parameter).)");

  m.def(
      "rmsnorm_backward",
      [](py::handle dout, py::handle x, py::handle weight, py::handle rstd, py::handle dx, py::handle dweight,
         py::handle dresidual) {
        const char* op = "rmsnorm_backward";
        Tensor tg = as_tensor(dout, op, "dout"), tx = as_tensor(x, op, "x"), tw = as_tensor(weight, op, "weight"),
               tr = as_tensor(rstd, op, "rstd");
        Tensor gx = out_or_new(dx, op, "dx", tx.shape(), tx), gw = out_or_new(dweight, op, "dweight", width_of(tx), tw);
        Tensor res = dresidual.is_none() ? Tensor() : as_tensor(dresidual, op, "dresidual");
        py::gil_scoped_release release;
        rmsnorm_backward(tg, tx, tw, tr, gx, gw, res);
        return std::make_pair(gx, gw);
      },
      py::arg("dout"), py::arg("x"), py::arg("weight"), py::arg("rstd"), py::kw_only(), py::arg("dx") = py::none(),
      py::arg("dweight") = py::none(), py::arg("dresidual") = py::none(),
      R"(Gradients of RMSNorm. dout, x: [..., d]; weight: [d]; rstd: [...] from the forward.
Returns (dx [..., d], dweight [d]), both overwritten when given. dresidual (like x): the
gradient reaching x along the residual stream, added into dx in the same pass (may be dx).)");

  m.def(
      "layernorm1p_forward",
      [](py::handle x, py::handle gamma, py::handle beta, double eps, py::handle out, py::handle mean,
         py::handle rstd) {
        const char* op = "layernorm1p_forward";
        Tensor tx = as_tensor(x, op, "x"), tga = as_tensor(gamma, op, "gamma"), tbe = as_tensor(beta, op, "beta");
        Tensor to = out_or_new(out, op, "out", tx.shape(), tx), tm = stat_or_new(mean, op, "mean", rows_of(tx), tx),
               tr = stat_or_new(rstd, op, "rstd", rows_of(tx), tx);
        py::gil_scoped_release release;
        layernorm1p_forward(tx, tga, tbe, eps, to, tm, tr);
        return std::make_tuple(to, tm, tr);
      },
      py::arg("x"), py::arg("gamma"), py::arg("beta"), py::arg("eps") = 1e-5, py::kw_only(),
      py::arg("out") = py::none(), py::arg("mean") = py::none(), py::arg("rstd") = py::none(),
      R"(LayerNorm with zero-centred gain: out = (x − mean) / sqrt(var + eps) · (1 + gamma) + beta.

x: [..., d] f32/f64; gamma, beta: [d]. Returns (out [..., d], mean [...], rstd [...]).
On CUDA: x bf16/f32, gamma and beta f32/bf16, mean and rstd f32.)");

  m.def(
      "layernorm1p_backward",
      [](py::handle dout, py::handle x, py::handle gamma, py::handle mean, py::handle rstd, py::handle dx,
         py::handle dgamma, py::handle dbeta, py::handle dresidual) {
        const char* op = "layernorm1p_backward";
        Tensor tg = as_tensor(dout, op, "dout"), tx = as_tensor(x, op, "x"), tga = as_tensor(gamma, op, "gamma"),
               tm = as_tensor(mean, op, "mean"), tr = as_tensor(rstd, op, "rstd");
        Tensor gx = out_or_new(dx, op, "dx", tx.shape(), tx),
               gg = out_or_new(dgamma, op, "dgamma", width_of(tx), tga),
               gb = out_or_new(dbeta, op, "dbeta", width_of(tx), tga);
        Tensor res = dresidual.is_none() ? Tensor() : as_tensor(dresidual, op, "dresidual");
        py::gil_scoped_release release;
        layernorm1p_backward(tg, tx, tga, tm, tr, gx, gg, gb, res);
        return std::make_tuple(gx, gg, gb);
      },
      py::arg("dout"), py::arg("x"), py::arg("gamma"), py::arg("mean"), py::arg("rstd"), py::kw_only(),
      py::arg("dx") = py::none(), py::arg("dgamma") = py::none(), py::arg("dbeta") = py::none(),
      py::arg("dresidual") = py::none(),
      R"(Gradients of LayerNorm-1p. dout, x: [..., d]; gamma: [d]; mean, rstd: [...] from the forward.
Returns (dx [..., d], dgamma [d], dbeta [d]); dresidual as in rmsnorm_backward.)");

  m.def(
      "gated_rmsnorm_forward",
      [](py::handle y, py::handle z, py::handle weight, int64_t groups, double eps, py::handle out,
         py::handle rstd) {
        const char* op = "gated_rmsnorm_forward";
        Tensor ty = as_tensor(y, op, "y"), tz = as_tensor(z, op, "z"), tw = as_tensor(weight, op, "weight");
        Tensor to = out_or_new(out, op, "out", ty.shape(), ty),
               tr = stat_or_new(rstd, op, "rstd", last_to(ty, std::max<int64_t>(groups, 0)), ty);
        py::gil_scoped_release release;
        gated_rmsnorm_forward(ty, tz, tw, groups, eps, to, tr);
        return std::make_pair(to, tr);
      },
      py::arg("y"), py::arg("z"), py::arg("weight"), py::arg("groups") = 1, py::arg("eps") = 1e-5, py::kw_only(),
      py::arg("out") = py::none(), py::arg("rstd") = py::none(),
      R"(Gated grouped RMSNorm (Mamba-2): u = y · silu(z), each of `groups` groups of d / groups
consecutive channels RMS-normalised on its own, then · weight.

y, z: [..., d] f32/f64; weight: [d]. Returns (out [..., d], rstd [..., groups]).
On CUDA: y, z bf16/f32, weight f32/bf16, rstd f32.)");

  m.def(
      "gated_rmsnorm_backward",
      [](py::handle dout, py::handle y, py::handle z, py::handle weight, py::handle rstd, int64_t groups,
         py::handle dy, py::handle dz, py::handle dweight) {
        const char* op = "gated_rmsnorm_backward";
        Tensor tg = as_tensor(dout, op, "dout"), ty = as_tensor(y, op, "y"), tz = as_tensor(z, op, "z"),
               tw = as_tensor(weight, op, "weight"), tr = as_tensor(rstd, op, "rstd");
        Tensor gy = out_or_new(dy, op, "dy", ty.shape(), ty), gz = out_or_new(dz, op, "dz", ty.shape(), ty),
               gw = out_or_new(dweight, op, "dweight", width_of(ty), tw);
        py::gil_scoped_release release;
        gated_rmsnorm_backward(tg, ty, tz, tw, tr, groups, gy, gz, gw);
        return std::make_tuple(gy, gz, gw);
      },
      py::arg("dout"), py::arg("y"), py::arg("z"), py::arg("weight"), py::arg("rstd"), py::arg("groups") = 1,
      py::kw_only(), py::arg("dy") = py::none(), py::arg("dz") = py::none(), py::arg("dweight") = py::none(),
      R"(Gradients of the gated grouped RMSNorm. dout, y, z: [..., d]; weight: [d];
rstd: [..., groups] from the forward. Returns (dy [..., d], dz [..., d], dweight [d]).)");
}

}  // namespace mambatron::bind
