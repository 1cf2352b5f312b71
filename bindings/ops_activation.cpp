// GeLU, squared ReLU, SiLU and SwiGLU for Python.
#include <pybind11/pybind11.h>

#include "convert.h"
#include "mambatron/ops.h"

namespace mambatron::bind {

namespace {
using Forward = void (*)(const Tensor&, Tensor&);
using Backward = void (*)(const Tensor&, const Tensor&, Tensor&);

// The unary ops: forward(x, out=None) -> out, backward(dout, x, dx=None) -> dx.
void bind_unary(py::module_& m, const char* name, Forward fwd, Backward bwd, const char* what) {
  std::string fname = std::string(name) + "_forward", bname = std::string(name) + "_backward";
  m.def(
      fname.c_str(),
      [fwd, fname](py::handle x, py::handle out) {
        Tensor tx = as_tensor(x, fname.c_str(), "x");
        Tensor to = out.is_none() ? Tensor::empty(tx.shape(), tx.dtype(), tx.device()) : as_tensor(out, fname.c_str(), "out");
        py::gil_scoped_release release;
        fwd(tx, to);
        return to;
      },
      py::arg("x"), py::kw_only(), py::arg("out") = py::none(),
      (std::string(what) + ", elementwise. x: any shape, f32/f64 (bf16/f32 on CUDA). Returns out like x (`out` may be x).").c_str());
  m.def(
      bname.c_str(),
      [bwd, bname](py::handle dout, py::handle x, py::handle dx) {
        Tensor tg = as_tensor(dout, bname.c_str(), "dout"), tx = as_tensor(x, bname.c_str(), "x");
        Tensor td = dx.is_none() ? Tensor::empty(tx.shape(), tx.dtype(), tx.device()) : as_tensor(dx, bname.c_str(), "dx");
        py::gil_scoped_release release;
        bwd(tg, tx, td);
        return td;
      },
      py::arg("dout"), py::arg("x"), py::kw_only(), py::arg("dx") = py::none(),
      (std::string("Gradient of ") + what + ": dx = dout · act'(x). dout, x: same shape. Returns dx (`dx` may be dout).")
          .c_str());
}
}  // namespace

void bind_activation_ops(py::module_& m) {
  bind_unary(m, "gelu", gelu_forward, gelu_backward, "GeLU (erf form): x · Φ(x)");
  bind_unary(m, "squared_relu", squared_relu_forward, squared_relu_backward, "Squared ReLU: max(x, 0)²");
  bind_unary(m, "silu", silu_forward, silu_backward, "SiLU: x · sigmoid(x)");

  m.def(
      "swiglu_forward",
      [](py::handle x, py::handle out) {
        const char* op = "swiglu_forward";
        Tensor tx = as_tensor(x, op, "x");
        Tensor to;
        if (!out.is_none()) to = as_tensor(out, op, "out");
        else {
          Shape s = tx.shape();
          if (!s.empty()) s.back() /= 2;  // an odd or missing last dim is reported by the op
          to = Tensor::empty(s, tx.dtype(), tx.device());
        }
        py::gil_scoped_release release;
        swiglu_forward(tx, to);
        return to;
      },
      py::arg("x"), py::kw_only(), py::arg("out") = py::none(),
      R"(SwiGLU: x [..., 2f] = [a | b] -> out [..., f] = silu(a) · b. f32/f64 (bf16/f32 on CUDA).)");
  m.def(
      "swiglu_backward",
      [](py::handle dout, py::handle x, py::handle dx) {
        const char* op = "swiglu_backward";
        Tensor tg = as_tensor(dout, op, "dout"), tx = as_tensor(x, op, "x");
        Tensor td = dx.is_none() ? Tensor::empty(tx.shape(), tx.dtype(), tx.device()) : as_tensor(dx, op, "dx");
        py::gil_scoped_release release;
        swiglu_backward(tg, tx, td);
        return td;
      },
      py::arg("dout"), py::arg("x"), py::kw_only(), py::arg("dx") = py::none(),
      R"(Gradient of SwiGLU. dout: [..., f]; x: [..., 2f]. Returns dx [..., 2f] = [da | db].)");
}

}  // namespace mambatron::bind
