// Whole-tensor arithmetic (add, mul, neg_exp) for Python.
#include <pybind11/pybind11.h>

#include "convert.h"
#include "mambatron/ops.h"

namespace mambatron::bind {

namespace {
using Binary = void (*)(const Tensor&, const Tensor&, Tensor&);

void bind_binary(py::module_& m, const char* name, Binary f, const char* what) {
  m.def(
      name,
      [f, name](py::handle a, py::handle b, py::handle out) {
        Tensor ta = as_tensor(a, name, "a"), tb = as_tensor(b, name, "b");
        Tensor to = out.is_none() ? Tensor::empty(ta.shape(), ta.dtype(), ta.device()) : as_tensor(out, name, "out");
        py::gil_scoped_release release;
        f(ta, tb, to);
        return to;
      },
      py::arg("a"), py::arg("b"), py::kw_only(), py::arg("out") = py::none(),
      (std::string(what) + ". a, b, out: one shape, dtype and device, contiguous; f32/f64 (bf16/f32 on CUDA). "
                           "Returns out (`out` may be a or b).")
          .c_str());
}
}  // namespace

void bind_arith_ops(py::module_& m) {
  bind_binary(m, "add", add, "out = a + b");
  bind_binary(m, "mul", mul, "out = a ⊙ b");
  m.def(
      "neg_exp",
      [](py::handle x, py::handle out) {
        Tensor tx = as_tensor(x, "neg_exp", "x");
        Tensor to = out.is_none() ? Tensor::empty(tx.shape(), tx.dtype(), tx.device()) : as_tensor(out, "neg_exp", "out");
        py::gil_scoped_release release;
        neg_exp(tx, to);
        return to;
      },
      py::arg("x"), py::kw_only(), py::arg("out") = py::none(),
      "out = −exp(x) (Mamba's A = −exp(A_log)). x, out: one shape, dtype and device. Returns out.");
}

}  // namespace mambatron::bind
