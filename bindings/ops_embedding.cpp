// Embedding lookup and its gradient for Python.
#include <pybind11/pybind11.h>

#include "convert.h"
#include "mambatron/ops.h"

namespace mambatron::bind {

void bind_embedding_ops(py::module_& m) {
  m.def(
      "embedding_forward",
      [](py::handle weight, py::handle tokens, py::handle out) {
        const char* op = "embedding_forward";
        Tensor w = as_tensor(weight, op, "weight"), t = as_tensor(tokens, op, "tokens");
        Tensor o;
        if (!out.is_none()) o = as_tensor(out, op, "out");
        else if (w.dim() == 2 && t.dim() == 2) o = Tensor::empty({t.size(0), t.size(1), w.size(1)}, w.dtype(), w.device());
        py::gil_scoped_release release;
        embedding_forward(w, t, o);
        return o;
      },
      py::arg("weight"), py::arg("tokens"), py::kw_only(), py::arg("out") = py::none(),
      R"(Embedding lookup: out[i, t] = weight[tokens[i, t]].

weight: [V, d] f32/f64 (on CUDA f32/bf16, and `out` may be bf16); tokens: [b, l] i32/i64 with ids in [0, V) (else ValueError).
Returns out [b, l, d] (written into `out` when given).)");

  m.def(
      "embedding_backward",
      [](py::handle dout, py::handle tokens, int64_t vocab_size, py::handle dweight, bool accumulate) {
        const char* op = "embedding_backward";
        Tensor g = as_tensor(dout, op, "dout"), t = as_tensor(tokens, op, "tokens");
        Tensor dw;
        if (!dweight.is_none()) dw = as_tensor(dweight, op, "dweight");
        else if (g.dim() == 3) {
          MT_CHECK(vocab_size >= 0, ValueError, op, ": give 'dweight' [V, d] or vocab_size = V");
          dw = Tensor::empty({vocab_size, g.size(2)}, g.dtype(), g.device());
        }
        py::gil_scoped_release release;
        embedding_backward(g, t, dw, accumulate);
        return dw;
      },
      py::arg("dout"), py::arg("tokens"), py::arg("vocab_size") = -1, py::kw_only(), py::arg("dweight") = py::none(),
      py::arg("accumulate") = false,
      R"(Gradient of the embedding table: dweight[v] = sum of dout[i, t] over positions with tokens[i, t] == v.

dout: [b, l, d]; tokens: [b, l] i32/i64. Returns dweight [V, d], overwritten (rows no token
names are 0); give `dweight` or `vocab_size`. accumulate=True adds into `dweight` instead
(rows no token names are left as they are). Deterministic for any thread count.)");
}

}  // namespace mambatron::bind
