// Causal depthwise conv1d for Python. Outputs that are not given are allocated with
// the shapes the op expects; optional inputs are None when absent.
#include <pybind11/pybind11.h>

#include "convert.h"
#include "mambatron/ops.h"

namespace mambatron::bind {

namespace {
Tensor optional(py::handle h, const char* op, const char* name) {
  return h.is_none() ? Tensor() : as_tensor(h, op, name);
}
// `given` as a tensor, or a new one of `shape` like `like`; undefined when the shape
// cannot be known (an input of the wrong rank: the op then names that input).
Tensor out_or_new(py::handle given, const char* op, const char* name, bool known, const Shape& shape,
                  const Tensor& like) {
  if (!given.is_none()) return as_tensor(given, op, name);
  return known ? Tensor::empty(shape, like.dtype(), like.device()) : Tensor();
}
bool ranks_ok(const Tensor& x, int x_dims, const Tensor& weight) {
  return x.dim() == x_dims && weight.defined() && weight.dim() == 2;
}
Shape state_shape(const Tensor& x, const Tensor& weight) { return {x.size(0), x.size(-1), weight.size(1) - 1}; }
py::object or_none(const Tensor& t) { return t.defined() ? py::cast(t) : py::none(); }
}  // namespace

void bind_conv1d_ops(py::module_& m) {
  m.def(
      "conv1d_forward",
      [](py::handle x, py::handle weight, py::handle bias, py::handle initial_state, py::handle seq_idx, bool silu,
         bool return_final_state, py::handle out, py::handle final_state) -> py::object {
        const char* op = "conv1d_forward";
        Tensor tx = as_tensor(x, op, "x"), tw = as_tensor(weight, op, "weight");
        Tensor tb = optional(bias, op, "bias"), ti = optional(initial_state, op, "initial_state"),
               ts = optional(seq_idx, op, "seq_idx");
        bool ok = ranks_ok(tx, 3, tw);
        Tensor to = out_or_new(out, op, "out", ok, tx.shape(), tx);
        bool want_final = return_final_state || !final_state.is_none();
        Tensor tf = want_final ? out_or_new(final_state, op, "final_state", ok, ok ? state_shape(tx, tw) : Shape{}, tx)
                               : Tensor();
        {
          py::gil_scoped_release release;
          conv1d_forward(tx, tw, tb, ti, ts, to, tf, {silu});
        }
        if (want_final) return py::make_tuple(to, tf);
        return py::cast(to);
      },
      py::arg("x"), py::arg("weight"), py::arg("bias") = py::none(), py::kw_only(),
      py::arg("initial_state") = py::none(), py::arg("seq_idx") = py::none(), py::arg("silu") = false,
      py::arg("return_final_state") = false, py::arg("out") = py::none(), py::arg("final_state") = py::none(),
      R"(Causal depthwise conv1d: out[t, c] = (SiLU of) bias[c] + Σ_k weight[c, k] · x[t − (w−1) + k, c].

x: [b, l, c] f32/f64 (token-major); weight: [c, w] with w in 2..4; bias: [c] or None.
On CUDA: x and the states bf16/f32, weight and bias bf16/f32 of their own.
initial_state: [b, c, w−1] (the w−1 inputs before position 0, oldest first) or None (zeros).
seq_idx: int32 [b, l] document ids, non-decreasing along each row, or None: taps never cross a
document boundary (the initial state feeds the row's first document only).
Returns out [b, l, c], or (out, final_state [b, c, w−1]) when return_final_state is set or
final_state is given; final_state holds the last w−1 inputs of the last document.)");

  m.def(
      "conv1d_backward",
      [](py::handle dout, py::handle x, py::handle weight, py::handle bias, py::handle initial_state,
         py::handle seq_idx, py::handle d_final_state, bool silu, py::handle dx, py::handle dweight, py::handle dbias,
         py::handle d_initial_state) {
        const char* op = "conv1d_backward";
        Tensor tg = as_tensor(dout, op, "dout"), tx = as_tensor(x, op, "x"), tw = as_tensor(weight, op, "weight");
        Tensor tb = optional(bias, op, "bias"), ti = optional(initial_state, op, "initial_state"),
               ts = optional(seq_idx, op, "seq_idx"), tdf = optional(d_final_state, op, "d_final_state");
        bool ok = ranks_ok(tx, 3, tw);
        Tensor gx = out_or_new(dx, op, "dx", ok, tx.shape(), tx);
        // Parameter gradients like their parameter (on the CPU that is x's dtype).
        Tensor gw = out_or_new(dweight, op, "dweight", ok, ok ? tw.shape() : Shape{}, tw);
        Tensor gb = tb.defined() || !dbias.is_none() ? out_or_new(dbias, op, "dbias", ok, {ok ? tx.size(2) : 0}, tw)
                                                     : Tensor();
        Tensor gi = ti.defined() || !d_initial_state.is_none()
                        ? out_or_new(d_initial_state, op, "d_initial_state", ok, ok ? state_shape(tx, tw) : Shape{}, tx)
                        : Tensor();
        {
          py::gil_scoped_release release;
          conv1d_backward(tg, tdf, tx, tw, tb, ti, ts, gx, gw, gb, gi, {silu});
        }
        return py::make_tuple(gx, gw, or_none(gb), or_none(gi));
      },
      py::arg("dout"), py::arg("x"), py::arg("weight"), py::arg("bias") = py::none(), py::kw_only(),
      py::arg("initial_state") = py::none(), py::arg("seq_idx") = py::none(), py::arg("d_final_state") = py::none(),
      py::arg("silu") = false, py::arg("dx") = py::none(), py::arg("dweight") = py::none(),
      py::arg("dbias") = py::none(), py::arg("d_initial_state") = py::none(),
      R"(Gradients of conv1d_forward (same inputs and options) given dout [b, l, c] and optionally
d_final_state [b, c, w−1]. Returns (dx [b, l, c], dweight [c, w], dbias [c] or None,
d_initial_state [b, c, w−1] or None); dbias / d_initial_state are computed when bias /
initial_state (or the output buffer) is given. Given buffers are overwritten. dweight and dbias
are allocated like weight (on CUDA bf16 or f32, the dtype of their own).)");

  m.def(
      "conv1d_step",
      [](py::handle x, py::handle conv_state, py::handle weight, py::handle bias, bool silu, py::handle out) {
        const char* op = "conv1d_step";
        Tensor tx = as_tensor(x, op, "x"), tst = as_tensor(conv_state, op, "conv_state"),
               tw = as_tensor(weight, op, "weight"), tb = optional(bias, op, "bias");
        Tensor to = out_or_new(out, op, "out", true, tx.shape(), tx);
        py::gil_scoped_release release;
        conv1d_step(tx, tw, tb, tst, to, {silu});
        return to;
      },
      py::arg("x"), py::arg("conv_state"), py::arg("weight"), py::arg("bias") = py::none(), py::kw_only(),
      py::arg("silu") = false, py::arg("out") = py::none(),
      R"(One decode token of conv1d_forward. x: [b, c]; conv_state: [b, c, w−1] (the last w−1 inputs,
oldest first), shifted in place to take x; weight: [c, w]; bias: [c] or None.
Returns out [b, c].)");
}

}  // namespace mambatron::bind
