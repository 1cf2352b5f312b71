// The ops of ops.h for Python. Every tensor argument may be a mambatron.Tensor or
// any DLPack array (numpy, PyTorch, JAX, CuPy); results are mambatron.Tensors.
#include <pybind11/pybind11.h>

#include "convert.h"
#include "mambatron/ops.h"

namespace mambatron::bind {

void bind_ops(py::module_& m) {
  // Each family's ops (bindings/ops_FAMILY.cpp) register here, after gemm below.
  m.def(
      "gemm",
      [](py::handle a, py::handle b, bool trans_a, bool trans_b, float alpha, float beta, py::handle out,
         py::handle out_dtype, py::handle addend) {
        Tensor ta = as_tensor(a, "gemm", "a"), tb = as_tensor(b, "gemm", "b");
        GemmOptions opt{trans_a, trans_b, alpha, beta};
        if (!addend.is_none()) opt.addend = as_tensor(addend, "gemm", "addend");
        if (!out.is_none()) {
          Tensor c = as_tensor(out, "gemm", "out");
          py::gil_scoped_release release;
          gemm(ta, tb, c, opt);
          return c;
        }
        std::optional<DType> dt;
        if (!out_dtype.is_none()) dt = to_dtype(out_dtype);
        else if (opt.addend.defined()) dt = opt.addend.dtype();
        py::gil_scoped_release release;
        return gemm(ta, tb, opt, dt);
      },
      py::arg("a"), py::arg("b"), py::kw_only(), py::arg("trans_a") = false, py::arg("trans_b") = false,
      py::arg("alpha") = 1.0f, py::arg("beta") = 0.0f, py::arg("out") = py::none(), py::arg("out_dtype") = py::none(),
      py::arg("addend") = py::none(),
      R"(alpha · op(a) @ op(b) + beta · out, op = transpose of the last two dims when asked.
With addend (the result's shape and dtype): alpha · op(a) @ op(b) + beta · addend in one
pass (the residual add of a projection); out's old contents are then not read.

a: [m, k] or [batch, m, k]; b: [k, n] or [batch, k, n] (a 2-D operand is shared by the batch).
CPU: f32, f64, bf16, f16 (16-bit computed in f32). CUDA: bf16/f16 in, bf16/f16/f32 out, or f32;
fp32 accumulation. out_dtype picks the result's dtype when out is not given (default: addend's,
else a's).)");
  bind_attention_ops(m);
  bind_embedding_ops(m);
  bind_norm_ops(m);
  bind_activation_ops(m);
  bind_arith_ops(m);
  bind_loss_ops(m);
  bind_adamw_ops(m);
  bind_conv1d_ops(m);
  bind_selective_scan_ops(m);
  bind_ssd_ops(m);
}

}  // namespace mambatron::bind
