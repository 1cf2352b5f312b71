// The SSD (Mamba-2 scan) ops for Python. Optional inputs are None when absent;
// outputs that are not given are allocated with the shapes the op expects.
#include <pybind11/pybind11.h>

#include "convert.h"
#include "mambatron/ops.h"

namespace mambatron::bind {

namespace {

Tensor optional_tensor(py::handle h, const char* op, const char* name) {
  return h.is_none() ? Tensor() : as_tensor(h, op, name);
}

// `given` as a tensor, or a new one of `shape` like `like` (dtype, device).
Tensor out_or_new(py::handle given, const char* op, const char* name, const Shape& shape, const Tensor& like) {
  if (!given.is_none()) return as_tensor(given, op, name);
  return Tensor::empty(shape, like.dtype(), like.device());
}

// The dtype of states and per-head parameter gradients: x's on the CPU, f32 on CUDA.
DType state_dtype(const Tensor& x) { return x.is_cuda() ? DType::f32 : x.dtype(); }

// `given`, or a new state-like tensor of `shape` on x's device.
Tensor state_or_new(py::handle given, const char* op, const char* name, const Shape& shape, const Tensor& x) {
  if (!given.is_none()) return as_tensor(given, op, name);
  return Tensor::empty(shape, state_dtype(x), x.device());
}

// [b, h, p, n] from x [b, l, h, p] (or [b, h, p]) and B [..., g, n]; any shape when
// they are malformed, since the op then reports x or B before looking at the state.
Shape state_shape(const Tensor& x, const Tensor& B) {
  if (x.dim() == 4 && B.dim() >= 1) return {x.size(0), x.size(2), x.size(3), B.size(-1)};
  if (x.dim() == 3 && B.dim() >= 1) return {x.size(0), x.size(1), x.size(2), B.size(-1)};
  return {0};
}

SsdOptions make_options(int64_t chunk_size, bool dt_softplus, py::handle dt_min, py::handle dt_max) {
  SsdOptions o;
  o.chunk_size = chunk_size;
  o.dt_softplus = dt_softplus;
  if (!dt_min.is_none()) o.dt_min = dt_min.cast<double>();
  if (!dt_max.is_none()) o.dt_max = dt_max.cast<double>();
  return o;
}

py::object none_if_undefined(const Tensor& t) { return t.defined() ? py::cast(t) : py::none(); }

// The inputs shared by forward and backward.
struct Inputs {
  Tensor x, dt, A, B, C, D, dt_bias, initial_state, seq_idx;
  Inputs(const char* op, py::handle x_, py::handle dt_, py::handle A_, py::handle B_, py::handle C_, py::handle D_,
         py::handle dt_bias_, py::handle initial_state_, py::handle seq_idx_)
      : x(as_tensor(x_, op, "x")),
        dt(as_tensor(dt_, op, "dt")),
        A(as_tensor(A_, op, "A")),
        B(as_tensor(B_, op, "B")),
        C(as_tensor(C_, op, "C")),
        D(optional_tensor(D_, op, "D")),
        dt_bias(optional_tensor(dt_bias_, op, "dt_bias")),
        initial_state(optional_tensor(initial_state_, op, "initial_state")),
        seq_idx(optional_tensor(seq_idx_, op, "seq_idx")) {}
};

constexpr const char* kForwardDoc = R"(Mamba-2 SSD scan: returns (y, final_state).

Per batch row and head j of group γ = j // (h // g):
  Δ_t = clamp(softplus?(dt_t + dt_bias_j), dt_min, dt_max)
  H_t = exp(Δ_t·A_j)·H_{t−1} + Δ_t·x_t ⊗ B_t[γ]     (H_{−1} = initial_state or 0)
  y_t = H_t·C_t[γ] + D_j·x_t
x: [b, l, h, p]; dt: [b, l, h]; A: [h] (negative); B, C: [b, l, g, n] (g divides h);
D, dt_bias: [h] or None; initial_state: [b, h, p, n] or None; seq_idx: int32 [b, l]
document ids, non-decreasing per row (the state resets where it changes), or None.
chunk_size 0 runs the sequential recurrence, Q > 0 the chunked SSD form (any l).
dt_min / dt_max clamp Δ when given. CPU: f32 or f64, one dtype for all float arguments.
CUDA: x, dt, B, C bf16 or f32 (one dtype); A, D, dt_bias and the states f32; chunk_size
0 runs the default chunk length there, and chunks above 128 tokens run as 128.
Returns y [b, l, h, p] and final_state [b, h, p, n] (into out / final_state when given).)";

constexpr const char* kBackwardDoc = R"(Gradients of ssd_forward (same inputs and options).

dy: [b, l, h, p]; d_final_state: [b, h, p, n] or None.
Returns (dx, ddt, dA, dB, dC, dD, ddt_bias, d_initial_state) with the shapes of their
inputs; dD, ddt_bias and d_initial_state are None when their input is None and no
output tensor is given for them (given one, it receives the gradient at zero).
ddt is the gradient with respect to dt itself (through dt_bias, softplus and clamp).
On CUDA dA, dD, ddt_bias and d_initial_state are f32 like their inputs.)";

constexpr const char* kStepDoc = R"(One decode token of the SSD scan: advances state in place, returns y.

x: [b, h, p]; dt: [b, h]; A: [h]; B, C: [b, g, n]; state: [b, h, p, n] (updated in
place: pass a mambatron tensor or a writable array); D, dt_bias: [h] or None.
Returns y [b, h, p] (into out when given). Same Δ options as ssd_forward.
On CUDA: x, dt, B, C bf16 or f32; A, D, dt_bias and state f32.)";

}  // namespace

void bind_ssd_ops(py::module_& m) {
  m.def(
      "ssd_forward",
      [](py::handle x, py::handle dt, py::handle A, py::handle B, py::handle C, py::handle D, py::handle dt_bias,
         py::handle initial_state, py::handle seq_idx, int64_t chunk_size, bool dt_softplus, py::handle dt_min,
         py::handle dt_max, py::handle out, py::handle final_state) {
        const char* op = "ssd_forward";
        Inputs in(op, x, dt, A, B, C, D, dt_bias, initial_state, seq_idx);
        SsdOptions opt = make_options(chunk_size, dt_softplus, dt_min, dt_max);
        Tensor y = out_or_new(out, op, "out", in.x.shape(), in.x);
        Tensor fs = state_or_new(final_state, op, "final_state", state_shape(in.x, in.B), in.x);
        {
          py::gil_scoped_release release;
          ssd_forward(in.x, in.dt, in.A, in.B, in.C, in.D, in.dt_bias, in.initial_state, in.seq_idx, y, fs, opt);
        }
        return py::make_tuple(y, fs);
      },
      py::arg("x"), py::arg("dt"), py::arg("A"), py::arg("B"), py::arg("C"), py::arg("D") = py::none(),
      py::arg("dt_bias") = py::none(), py::kw_only(), py::arg("initial_state") = py::none(),
      py::arg("seq_idx") = py::none(), py::arg("chunk_size") = 0, py::arg("dt_softplus") = false,
      py::arg("dt_min") = py::none(), py::arg("dt_max") = py::none(), py::arg("out") = py::none(),
      py::arg("final_state") = py::none(), kForwardDoc);

  m.def(
      "ssd_backward",
      [](py::handle dy, py::handle x, py::handle dt, py::handle A, py::handle B, py::handle C, py::handle D,
         py::handle dt_bias, py::handle initial_state, py::handle seq_idx, py::handle d_final_state,
         int64_t chunk_size, bool dt_softplus, py::handle dt_min, py::handle dt_max, py::handle dx, py::handle ddt,
         py::handle dA, py::handle dB, py::handle dC, py::handle dD, py::handle ddt_bias,
         py::handle d_initial_state) {
        const char* op = "ssd_backward";
        Inputs in(op, x, dt, A, B, C, D, dt_bias, initial_state, seq_idx);
        Tensor tdy = as_tensor(dy, op, "dy"), tdf = optional_tensor(d_final_state, op, "d_final_state");
        SsdOptions opt = make_options(chunk_size, dt_softplus, dt_min, dt_max);
        const Tensor& x0 = in.x;
        Tensor gx = out_or_new(dx, op, "dx", x0.shape(), x0), gdt = out_or_new(ddt, op, "ddt", in.dt.shape(), x0),
               gA = state_or_new(dA, op, "dA", in.A.shape(), x0), gB = out_or_new(dB, op, "dB", in.B.shape(), x0),
               gC = out_or_new(dC, op, "dC", in.C.shape(), x0);
        // The optional gradients: wanted when their input is given or an output is passed.
        auto optional_out = [&](py::handle given, const Tensor& input, const char* name, const Shape& shape) {
          if (!given.is_none()) return as_tensor(given, op, name);
          return input.defined() ? Tensor::empty(shape, state_dtype(x0), x0.device()) : Tensor();
        };
        Tensor gD = optional_out(dD, in.D, "dD", in.A.shape());
        Tensor gbias = optional_out(ddt_bias, in.dt_bias, "ddt_bias", in.A.shape());
        Tensor ginit = optional_out(d_initial_state, in.initial_state, "d_initial_state", state_shape(x0, in.B));
        {
          py::gil_scoped_release release;
          ssd_backward(tdy, tdf, in.x, in.dt, in.A, in.B, in.C, in.D, in.dt_bias, in.initial_state, in.seq_idx, gx,
                       gdt, gA, gB, gC, gD, gbias, ginit, opt);
        }
        return py::make_tuple(gx, gdt, gA, gB, gC, none_if_undefined(gD), none_if_undefined(gbias),
                              none_if_undefined(ginit));
      },
      py::arg("dy"), py::arg("x"), py::arg("dt"), py::arg("A"), py::arg("B"), py::arg("C"),
      py::arg("D") = py::none(), py::arg("dt_bias") = py::none(), py::kw_only(),
      py::arg("initial_state") = py::none(), py::arg("seq_idx") = py::none(), py::arg("d_final_state") = py::none(),
      py::arg("chunk_size") = 0, py::arg("dt_softplus") = false, py::arg("dt_min") = py::none(),
      py::arg("dt_max") = py::none(), py::arg("dx") = py::none(), py::arg("ddt") = py::none(),
      py::arg("dA") = py::none(), py::arg("dB") = py::none(), py::arg("dC") = py::none(), py::arg("dD") = py::none(),
      py::arg("ddt_bias") = py::none(), py::arg("d_initial_state") = py::none(), kBackwardDoc);

  m.def(
      "ssd_step",
      [](py::handle x, py::handle dt, py::handle A, py::handle B, py::handle C, py::handle state, py::handle D,
         py::handle dt_bias, bool dt_softplus, py::handle dt_min, py::handle dt_max, py::handle out) {
        const char* op = "ssd_step";
        Tensor tx = as_tensor(x, op, "x"), tdt = as_tensor(dt, op, "dt"), tA = as_tensor(A, op, "A"),
               tB = as_tensor(B, op, "B"), tC = as_tensor(C, op, "C"), ts = as_tensor(state, op, "state");
        Tensor tD = optional_tensor(D, op, "D"), tbias = optional_tensor(dt_bias, op, "dt_bias");
        SsdOptions opt = make_options(0, dt_softplus, dt_min, dt_max);
        Tensor y = out_or_new(out, op, "out", tx.shape(), tx);
        {
          py::gil_scoped_release release;
          ssd_step(tx, tdt, tA, tB, tC, tD, tbias, ts, y, opt);
        }
        return y;
      },
      py::arg("x"), py::arg("dt"), py::arg("A"), py::arg("B"), py::arg("C"), py::arg("state"),
      py::arg("D") = py::none(), py::arg("dt_bias") = py::none(), py::kw_only(), py::arg("dt_softplus") = false,
      py::arg("dt_min") = py::none(), py::arg("dt_max") = py::none(), py::arg("out") = py::none(), kStepDoc);
}

}  // namespace mambatron::bind
