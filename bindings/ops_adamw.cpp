// AdamW and the global gradient norm for Python.
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "convert.h"
#include "mambatron/ops.h"

namespace mambatron::bind {

namespace {

// One array, or a list/tuple of arrays, as tensors named grads[i] in errors.
std::vector<Tensor> tensor_list(py::handle h, const char* op) {
  std::vector<Tensor> out;
  if (py::isinstance<py::list>(h) || py::isinstance<py::tuple>(h)) {
    size_t i = 0;
    for (py::handle item : h) {
      std::string name = "grads[" + std::to_string(i++) + "]";
      out.push_back(as_tensor(item, op, name.c_str()));
    }
  } else {
    out.push_back(as_tensor(h, op, "grads"));
  }
  return out;
}

}  // namespace

void bind_adamw_ops(py::module_& m) {
  m.def(
      "adamw_update",
      [](py::handle params, py::handle grads, py::handle exp_avg, py::handle exp_avg_sq, py::handle decay_mask,
         double lr, int64_t step, double beta1, double beta2, double eps, double weight_decay, py::handle params_copy) {
        const char* op = "adamw_update";
        Tensor p = as_tensor(params, op, "params"), g = as_tensor(grads, op, "grads");
        Tensor ma = as_tensor(exp_avg, op, "exp_avg"), va = as_tensor(exp_avg_sq, op, "exp_avg_sq");
        Tensor mask = decay_mask.is_none() ? Tensor() : as_tensor(decay_mask, op, "decay_mask");
        Tensor copy = params_copy.is_none() ? Tensor() : as_tensor(params_copy, op, "params_copy");
        AdamWOptions opt{lr, beta1, beta2, eps, weight_decay, step};
        {
          py::gil_scoped_release release;
          if (copy.defined()) adamw_update(p, g, ma, va, mask, opt, copy);
          else adamw_update(p, g, ma, va, mask, opt);
        }
        return py::make_tuple(p, ma, va);
      },
      py::arg("params"), py::arg("grads"), py::arg("exp_avg"), py::arg("exp_avg_sq"),
      py::arg("decay_mask") = py::none(), py::kw_only(), py::arg("lr"), py::arg("step"), py::arg("beta1") = 0.9,
      py::arg("beta2") = 0.95, py::arg("eps") = 1e-8, py::arg("weight_decay") = 0.1,
      py::arg("params_copy") = py::none(),
      R"(One AdamW step on flat buffers, in place. Returns (params, exp_avg, exp_avg_sq).

params, grads, exp_avg (m), exp_avg_sq (v): [N], one dtype f32/f64 (f32 on CUDA);
params_copy: optional [N] array that receives the new params in its own dtype (bf16 or
f32 on CUDA, written in the same pass: a working copy for the forward); decay_mask: optional
uint8 [N] (nonzero decays; None: everything decays); step t is 1-based. Per element:
m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2; m_hat = m/(1-b1^t); v_hat = v/(1-b2^t);
p -= lr*wd*p where decayed; p -= lr*m_hat/(sqrt(v_hat) + eps).)");

  m.def(
      "grad_norm",
      [](py::handle grads) {
        std::vector<Tensor> ts = tensor_list(grads, "grad_norm");
        py::gil_scoped_release release;
        return grad_norm(ts);
      },
      py::arg("grads"),
      R"(Global L2 norm sqrt(sum g^2) of one array or a list of arrays (any shapes, one dtype:
f32/f64 on the CPU, f32/bf16 on CUDA).

Deterministic (f64 accumulation in a fixed order, whatever the thread count). Returns nan if
any element is nan, else inf if any is infinite.)");

  m.def(
      "clip_grad_norm",
      [](py::handle grads, double max_norm) {
        std::vector<Tensor> ts = tensor_list(grads, "clip_grad_norm");
        py::gil_scoped_release release;
        return clip_grad_norm(ts, max_norm);
      },
      py::arg("grads"), py::arg("max_norm"),
      R"(Scales the gradients in place by max_norm / (norm + 1e-6) when norm > max_norm.

grads: one array or a list of arrays, as for grad_norm. Returns the norm before clipping.
A non-finite norm (inf/nan) is returned and the gradients are left untouched.)");
}

}  // namespace mambatron::bind
