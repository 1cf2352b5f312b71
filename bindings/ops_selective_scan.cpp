// The Mamba-1 selective scan for Python. Outputs that are not given are allocated
// with the shapes the op expects; optional inputs are None when absent.
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
py::object or_none(const Tensor& t) { return t.defined() ? py::cast(t) : py::none(); }
// A, D, delta_bias, their gradients and the states: like u on the CPU, f32 on CUDA.
Tensor f32_out_or_new(py::handle given, const char* op, const char* name, bool known, const Shape& shape,
                      const Tensor& u) {
  if (!given.is_none()) return as_tensor(given, op, name);
  return known ? Tensor::empty(shape, u.is_cuda() ? DType::f32 : u.dtype(), u.device()) : Tensor();
}

// The sizes the outputs need: u [b, (l,) d], A [d, n], B [b, (l,) g, n].
struct Sizes {
  bool ok;
  Shape state, A, B;
};
Sizes sizes(const Tensor& u, const Tensor& A, const Tensor& B, int u_dims) {
  Sizes s{u.dim() == u_dims && A.dim() == 2 && B.dim() == u_dims + 1, {}, {}, {}};
  if (s.ok) {
    s.state = {u.size(0), u.size(-1), A.size(1)};
    s.A = A.shape();
    s.B = B.shape();
  }
  return s;
}

struct ScanInputs {
  Tensor u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx;
};
ScanInputs scan_inputs(const char* op, py::handle u, py::handle delta, py::handle A, py::handle B, py::handle C,
                       py::handle D, py::handle z, py::handle delta_bias, py::handle initial_state,
                       py::handle seq_idx) {
  return {as_tensor(u, op, "u"),           as_tensor(delta, op, "delta"),
          as_tensor(A, op, "A"),           as_tensor(B, op, "B"),
          as_tensor(C, op, "C"),           optional(D, op, "D"),
          optional(z, op, "z"),            optional(delta_bias, op, "delta_bias"),
          optional(initial_state, op, "initial_state"), optional(seq_idx, op, "seq_idx")};
}
}  // namespace

void bind_selective_scan_ops(py::module_& m) {
  m.def(
      "selective_scan_forward",
      [](py::handle u, py::handle delta, py::handle A, py::handle B, py::handle C, py::handle D, py::handle z,
         py::handle delta_bias, bool delta_softplus, py::handle initial_state, py::handle seq_idx,
         bool return_final_state, py::handle out, py::handle final_state) -> py::object {
        const char* op = "selective_scan_forward";
        ScanInputs in = scan_inputs(op, u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx);
        Sizes s = sizes(in.u, in.A, in.B, 3);
        Tensor ty = out_or_new(out, op, "y", s.ok, in.u.shape(), in.u);
        bool want_final = return_final_state || !final_state.is_none();
        Tensor tf = want_final ? f32_out_or_new(final_state, op, "final_state", s.ok, s.state, in.u) : Tensor();
        {
          py::gil_scoped_release release;
          selective_scan_forward(in.u, in.delta, in.A, in.B, in.C, in.D, in.z, in.delta_bias, in.initial_state,
                                 in.seq_idx, ty, tf, {delta_softplus});
        }
        if (want_final) return py::make_tuple(ty, tf);
        return py::cast(ty);
      },
      py::arg("u"), py::arg("delta"), py::arg("A"), py::arg("B"), py::arg("C"), py::arg("D") = py::none(),
      py::arg("z") = py::none(), py::arg("delta_bias") = py::none(), py::kw_only(),
      py::arg("delta_softplus") = false, py::arg("initial_state") = py::none(), py::arg("seq_idx") = py::none(),
      py::arg("return_final_state") = false, py::arg("out") = py::none(), py::arg("final_state") = py::none(),
      R"(Mamba-1 selective scan, per channel c of group γ = c / (d/g):
Δ_t = softplus?(delta_t + delta_bias); h_t = exp(Δ_t·A[c]) ⊙ h_{t−1} + Δ_t·u_t·B_t[γ];
y_t = (h_t·C_t[γ] + D·u_t) · SiLU(z_t) (the gate only with z).

u, delta, z: [b, l, d] f32/f64; A: [d, n]; B, C: [b, l, g, n] (g divides d); D, delta_bias: [d].
On CUDA: u, delta, B, C, z bf16/f32 (one dtype); A, D, delta_bias and the states f32; n <= 64.
initial_state: [b, d, n] or None (zeros). seq_idx: int32 [b, l] document ids, non-decreasing along
each row: the state resets to 0 where the id changes.
Returns y [b, l, d], or (y, final_state [b, d, n]) when return_final_state is set or final_state
is given.)");

  m.def(
      "selective_scan_backward",
      [](py::handle dy, py::handle u, py::handle delta, py::handle A, py::handle B, py::handle C, py::handle D,
         py::handle z, py::handle delta_bias, bool delta_softplus, py::handle initial_state, py::handle seq_idx,
         py::handle d_final_state, py::handle du, py::handle ddelta, py::handle dA, py::handle dB, py::handle dC,
         py::handle dD, py::handle dz, py::handle ddelta_bias, py::handle d_initial_state) {
        const char* op = "selective_scan_backward";
        ScanInputs in = scan_inputs(op, u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx);
        Tensor tdy = as_tensor(dy, op, "dy"), tdf = optional(d_final_state, op, "d_final_state");
        Sizes s = sizes(in.u, in.A, in.B, 3);
        const Tensor& r = in.u;
        Tensor gu = out_or_new(du, op, "du", s.ok, r.shape(), r);
        Tensor gdelta = out_or_new(ddelta, op, "ddelta", s.ok, r.shape(), r);
        Tensor gA = f32_out_or_new(dA, op, "dA", s.ok, s.A, r);
        Tensor gB = out_or_new(dB, op, "dB", s.ok, s.B, r), gC = out_or_new(dC, op, "dC", s.ok, s.B, r);
        auto when = [&](bool wanted, py::handle given, const char* name, const Shape& shape, bool f32) {
          if (!wanted && given.is_none()) return Tensor();
          return f32 ? f32_out_or_new(given, op, name, s.ok, shape, r) : out_or_new(given, op, name, s.ok, shape, r);
        };
        Shape width = {s.ok ? r.size(2) : 0};
        Tensor gD = when(in.D.defined(), dD, "dD", width, true);
        Tensor gz = when(in.z.defined(), dz, "dz", r.shape(), false);
        Tensor gbias = when(in.delta_bias.defined(), ddelta_bias, "ddelta_bias", width, true);
        Tensor ginit = when(in.initial_state.defined(), d_initial_state, "d_initial_state", s.state, true);
        {
          py::gil_scoped_release release;
          selective_scan_backward(tdy, tdf, in.u, in.delta, in.A, in.B, in.C, in.D, in.z, in.delta_bias,
                                  in.initial_state, in.seq_idx, gu, gdelta, gA, gB, gC, gD, gz, gbias, ginit,
                                  {delta_softplus});
        }
        return py::make_tuple(gu, gdelta, gA, gB, gC, or_none(gD), or_none(gz), or_none(gbias), or_none(ginit));
      },
      py::arg("dy"), py::arg("u"), py::arg("delta"), py::arg("A"), py::arg("B"), py::arg("C"),
      py::arg("D") = py::none(), py::arg("z") = py::none(), py::arg("delta_bias") = py::none(), py::kw_only(),
      py::arg("delta_softplus") = false, py::arg("initial_state") = py::none(), py::arg("seq_idx") = py::none(),
      py::arg("d_final_state") = py::none(), py::arg("du") = py::none(), py::arg("ddelta") = py::none(),
      py::arg("dA") = py::none(), py::arg("dB") = py::none(), py::arg("dC") = py::none(), py::arg("dD") = py::none(),
      py::arg("dz") = py::none(), py::arg("ddelta_bias") = py::none(), py::arg("d_initial_state") = py::none(),
      R"(Gradients of selective_scan_forward (same inputs and options) given dy [b, l, d] and optionally
d_final_state [b, d, n]. Returns (du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, d_initial_state)
shaped like their inputs; dD, dz, ddelta_bias, d_initial_state are None when the input (and the
output buffer) is absent. ddelta is the gradient with respect to delta itself. Given buffers are
overwritten. On CUDA dA, dD, ddelta_bias and d_initial_state are f32.)");

  m.def(
      "selective_scan_step",
      [](py::handle u, py::handle delta, py::handle A, py::handle B, py::handle C, py::handle state, py::handle D,
         py::handle z, py::handle delta_bias, bool delta_softplus, py::handle out) {
        const char* op = "selective_scan_step";
        ScanInputs in = scan_inputs(op, u, delta, A, B, C, D, z, delta_bias, py::none(), py::none());
        Tensor tst = as_tensor(state, op, "state");
        Tensor ty = out_or_new(out, op, "y", true, in.u.shape(), in.u);
        py::gil_scoped_release release;
        selective_scan_step(in.u, in.delta, in.A, in.B, in.C, in.D, in.z, in.delta_bias, tst, ty, {delta_softplus});
        return ty;
      },
      py::arg("u"), py::arg("delta"), py::arg("A"), py::arg("B"), py::arg("C"), py::arg("state"),
      py::arg("D") = py::none(), py::arg("z") = py::none(), py::arg("delta_bias") = py::none(), py::kw_only(),
      py::arg("delta_softplus") = false, py::arg("out") = py::none(),
      R"(One decode token of selective_scan_forward. u, delta, z: [b, d]; A: [d, n]; B, C: [b, g, n];
state: [b, d, n], advanced in place; D, delta_bias: [d] or None. Returns y [b, d].)");
}

}  // namespace mambatron::bind
