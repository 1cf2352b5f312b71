// Linear + cross-entropy for Python.
#include <pybind11/pybind11.h>

#include "convert.h"
#include "mambatron/ops.h"

namespace mambatron::bind {

namespace {

Tensor optional_tensor(py::handle h, const char* op, const char* name) {
  return h.is_none() ? Tensor() : as_tensor(h, op, name);
}

// Rows of h, or 0 when h has no dims (the op then reports the shape of h).
int64_t rows_of(const Tensor& h) { return h.dim() >= 1 ? h.size(0) : 0; }

// Per-token losses: h's dtype on the CPU, f32 on CUDA.
DType losses_dtype(const Tensor& h) { return h.is_cuda() ? DType::f32 : h.dtype(); }

}  // namespace

void bind_loss_ops(py::module_& m) {
  m.def(
      "linear_cross_entropy_forward",
      [](py::handle h, py::handle w, py::handle targets, py::handle mask, int64_t ignore_index, int64_t chunk_size,
         int64_t vocab_chunk_size, bool return_losses, py::handle losses) -> py::object {
        const char* op = "linear_cross_entropy_forward";
        Tensor th = as_tensor(h, op, "h"), tw = as_tensor(w, op, "w"), tt = as_tensor(targets, op, "targets");
        Tensor tm = optional_tensor(mask, op, "mask");
        LinearCrossEntropyOptions opt{ignore_index, chunk_size, vocab_chunk_size, 1.0};
        const bool want = return_losses || !losses.is_none();
        Tensor tl;
        if (!losses.is_none()) tl = as_tensor(losses, op, "losses");
        else if (want) tl = Tensor::empty({rows_of(th)}, losses_dtype(th), th.device());
        double loss;
        {
          py::gil_scoped_release release;
          loss = linear_cross_entropy_forward(th, tw, tt, tm, opt, want ? &tl : nullptr);
        }
        if (want) return py::make_tuple(loss, tl);
        return py::float_(loss);
      },
      py::arg("h"), py::arg("w"), py::arg("targets"), py::arg("mask") = py::none(), py::kw_only(),
      py::arg("ignore_index") = -100, py::arg("chunk_size") = 4096, py::arg("vocab_chunk_size") = 32768,
      py::arg("return_losses") = false, py::arg("losses") = py::none(),
      R"(Mean cross-entropy of the logits h @ w.T against targets, without holding all logits.

h: [n, d] f32/f64; w: [V, d] like h; targets: [n] int32/int64; mask: optional [n] uint8
(nonzero includes) or f32/f64 weights (0 excludes); on CUDA h is bf16/f32, w bf16/f32 of its
own, the mask uint8/f32 and losses f32. Positions whose target equals ignore_index are
excluded. loss = sum(m_i * l_i) / sum(m_i) over included positions, where
l_i = logsumexp(logits_i) - logits_i[target_i]; 0 when none is included. Rows go chunk_size
at a time and the vocabulary vocab_chunk_size at a time (0: all of it).
Returns the loss (a float), or (loss, losses) when return_losses is set or `losses` [n] is
given: losses holds l_i at included positions and 0 elsewhere.)");

  m.def(
      "linear_cross_entropy_backward",
      [](py::handle h, py::handle w, py::handle targets, py::handle mask, int64_t ignore_index, int64_t chunk_size,
         int64_t vocab_chunk_size, double grad_scale, py::handle dh, py::handle dw, bool accumulate_dw,
         bool return_losses, py::handle losses) -> py::tuple {
        const char* op = "linear_cross_entropy_backward";
        Tensor th = as_tensor(h, op, "h"), tw = as_tensor(w, op, "w"), tt = as_tensor(targets, op, "targets");
        Tensor tm = optional_tensor(mask, op, "mask");
        LinearCrossEntropyOptions opt{ignore_index, chunk_size, vocab_chunk_size, grad_scale, accumulate_dw};
        MT_CHECK(!accumulate_dw || !dw.is_none(), ValueError, op, ": accumulate_dw needs 'dw' to add into");
        Tensor tdh = dh.is_none() ? Tensor::empty(th.shape(), th.dtype(), th.device()) : as_tensor(dh, op, "dh");
        Tensor tdw = dw.is_none() ? Tensor::empty(tw.shape(), tw.dtype(), tw.device()) : as_tensor(dw, op, "dw");
        const bool want = return_losses || !losses.is_none();
        Tensor tl;
        if (!losses.is_none()) tl = as_tensor(losses, op, "losses");
        else if (want) tl = Tensor::empty({rows_of(th)}, losses_dtype(th), th.device());
        double loss;
        {
          py::gil_scoped_release release;
          loss = linear_cross_entropy_backward(th, tw, tt, tm, tdh, tdw, opt, want ? &tl : nullptr);
        }
        if (want) return py::make_tuple(loss, tdh, tdw, tl);
        return py::make_tuple(loss, tdh, tdw);
      },
      py::arg("h"), py::arg("w"), py::arg("targets"), py::arg("mask") = py::none(), py::kw_only(),
      py::arg("ignore_index") = -100, py::arg("chunk_size") = 4096, py::arg("vocab_chunk_size") = 32768,
      py::arg("grad_scale") = 1.0, py::arg("dh") = py::none(), py::arg("dw") = py::none(),
      py::arg("accumulate_dw") = false, py::arg("return_losses") = false, py::arg("losses") = py::none(),
      R"(The loss of linear_cross_entropy_forward and its gradients, in one pass.

Same arguments as the forward. Returns (loss, dh [n, d], dw [V, d]) where dh and dw are the
gradients of grad_scale * loss (overwritten when given; rows of dh at excluded positions are
0), and (loss, dh, dw, losses) when return_losses is set or `losses` [n] is given. dh has h's
dtype; dw, when not given, w's (on CUDA it may be given as f32 for a bf16 w). accumulate_dw:
add the weight gradient into the given dw (f32 on CUDA) instead of overwriting it.)");
}

}  // namespace mambatron::bind
