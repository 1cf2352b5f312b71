// The attention family for Python: causal attention forward/backward, RoPE,
// KV-cache append and one-token decode attention. Outputs not given are allocated.
#include <pybind11/pybind11.h>

#include <optional>
#include <string>

#include "convert.h"
#include "mambatron/ops.h"

namespace mambatron::bind {

namespace {

Tensor optional_tensor(py::handle h, const char* op, const char* name) {
  return h.is_none() ? Tensor() : as_tensor(h, op, name);
}

// The given output, or a new tensor of `shape` like `ref` (dtype and device).
Tensor output(py::handle h, const char* op, const char* name, const Shape& shape, const Tensor& ref) {
  return h.is_none() ? Tensor::empty(shape, ref.dtype(), ref.device()) : as_tensor(h, op, name);
}

// lse: the given one, or a new one with q's dtype on the CPU and f32 on CUDA.
Tensor lse_output(py::handle h, const char* op, const Shape& shape, const Tensor& q) {
  if (!h.is_none()) return as_tensor(h, op, "lse");
  return Tensor::empty(shape, q.defined() && q.is_cuda() ? DType::f32 : q.dtype(), q.device());
}

std::optional<double> optional_scale(py::handle h) {
  if (h.is_none()) return std::nullopt;
  return h.cast<double>();
}

// Shapes for allocating outputs; the op itself checks them and reports mistakes.
Shape shape_or_empty(const Tensor& t) { return t.defined() ? t.shape() : Shape{}; }
int64_t size_or_zero(const Tensor& t, int d) { return t.defined() && t.dim() > d ? t.size(d) : 0; }

}  // namespace

void bind_attention_ops(py::module_& m) {
  m.def(
      "set_attention_engine",
      [](const std::string& name) {
        if (name == "auto") return set_attention_engine(AttentionEngine::Auto);
        if (name == "cudnn") return set_attention_engine(AttentionEngine::Cudnn);
        if (name == "builtin") return set_attention_engine(AttentionEngine::Builtin);
        throw ValueError("set_attention_engine: engine is '" + name + "', expected 'auto', 'cudnn' or 'builtin'");
      },
      py::arg("engine"),
      R"(Chooses what runs attention_forward/attention_backward on CUDA, process-wide.

'auto' (the default): cuDNN's fused attention where it loads and takes the call
(bf16, no seq_idx, head dim a multiple of 8 up to 256), else the built-in kernels.
'cudnn': cuDNN only; a call it cannot take raises, naming the reason, and choosing
it where cuDNN is not usable raises at once (see cudnn_version). 'builtin': the
built-in kernels only. The environment variable MAMBATRON_ATTENTION_ENGINE sets the
starting value. Either engine gives the same bits on every run.)");
  m.def(
      "attention_engine",
      [] {
        switch (attention_engine()) {
          case AttentionEngine::Cudnn: return "cudnn";
          case AttentionEngine::Builtin: return "builtin";
          default: return "auto";
        }
      },
      "The attention engine in use: 'auto', 'cudnn' or 'builtin' (see set_attention_engine).");
  m.def(
      "cudnn_version",
      [](bool reason) -> py::object {
        std::string why;
        const int64_t v = cudnn_version(&why);
        if (reason) return py::make_tuple(v, why);
        return py::int_(v);
      },
      py::kw_only(), py::arg("reason") = false,
      R"(The cuDNN version attention can use (e.g. 91900 for 9.19.0), or 0 when none can be:
no CUDA device, a build without the cuDNN engine (pip install nvidia-cudnn-frontend,
then rebuild with MAMBATRON_CUDNN=ON), or no libcudnn 9 to open. With reason=True, returns (version, why_not).)");
  m.def(
      "attention_forward",
      [](py::handle q, py::handle k, py::handle v, py::handle seq_idx, py::handle softmax_scale, py::handle out,
         py::handle lse) {
        const char* op = "attention_forward";
        Tensor tq = as_tensor(q, op, "q"), tk = as_tensor(k, op, "k"), tv = as_tensor(v, op, "v");
        Tensor ts = optional_tensor(seq_idx, op, "seq_idx");
        Tensor to = output(out, op, "out", shape_or_empty(tq), tq);
        Tensor tl = lse_output(lse, op, {size_or_zero(tq, 0), size_or_zero(tq, 2), size_or_zero(tq, 1)}, tq);
        auto scale = optional_scale(softmax_scale);
        {
          py::gil_scoped_release release;
          attention_forward(tq, tk, tv, to, tl, ts, scale);
        }
        return py::make_tuple(to, tl);
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::kw_only(), py::arg("seq_idx") = py::none(),
      py::arg("softmax_scale") = py::none(), py::arg("out") = py::none(), py::arg("lse") = py::none(),
      R"(Causal softmax attention with grouped-query sharing. Returns (out, lse).

q: [b, l, hq, p]; k, v: [b, l, hkv, p], hq a multiple of hkv (query head j uses kv head
j // (hq // hkv)); f32 or f64 (on CUDA bf16 or f32, and lse f32). seq_idx: optional int32
[b, l] document ids, non-decreasing in each row; a token attends only to earlier tokens of
its own document.
softmax_scale: default 1/sqrt(p). out: [b, l, hq, p]; lse: [b, hq, l], the log-sum-exp of
each query's scaled scores, needed by attention_backward.)");

  m.def(
      "attention_backward",
      [](py::handle dout, py::handle q, py::handle k, py::handle v, py::handle out, py::handle lse,
         py::handle seq_idx, py::handle softmax_scale, py::handle dq, py::handle dk, py::handle dv) {
        const char* op = "attention_backward";
        Tensor tdo = as_tensor(dout, op, "dout"), tq = as_tensor(q, op, "q"), tk = as_tensor(k, op, "k");
        Tensor tv = as_tensor(v, op, "v"), to = as_tensor(out, op, "out"), tl = as_tensor(lse, op, "lse");
        Tensor ts = optional_tensor(seq_idx, op, "seq_idx");
        Tensor tdq = output(dq, op, "dq", shape_or_empty(tq), tq);
        Tensor tdk = output(dk, op, "dk", shape_or_empty(tk), tq);
        Tensor tdv = output(dv, op, "dv", shape_or_empty(tv), tq);
        auto scale = optional_scale(softmax_scale);
        {
          py::gil_scoped_release release;
          attention_backward(tdo, tq, tk, tv, to, tl, tdq, tdk, tdv, ts, scale);
        }
        return py::make_tuple(tdq, tdk, tdv);
      },
      py::arg("dout"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("lse"), py::kw_only(),
      py::arg("seq_idx") = py::none(), py::arg("softmax_scale") = py::none(), py::arg("dq") = py::none(),
      py::arg("dk") = py::none(), py::arg("dv") = py::none(),
      R"(Gradients of attention_forward. Returns (dq, dk, dv).

dout, out: [b, l, hq, p]; q, k, v as in attention_forward; lse: [b, hq, l] from the forward;
seq_idx and softmax_scale as given to the forward. dq: [b, l, hq, p]; dk, dv: [b, l, hkv, p]
(each kv head's gradient sums over its query heads). Gradients are overwritten.)");

  m.def(
      "rope_forward",
      [](py::handle x, py::handle positions, double rotary_fraction, double base, py::handle out) {
        const char* op = "rope_forward";
        Tensor tx = as_tensor(x, op, "x"), tp = optional_tensor(positions, op, "positions");
        Tensor to = output(out, op, "out", shape_or_empty(tx), tx);
        {
          py::gil_scoped_release release;
          rope_forward(tx, to, tp, RopeOptions{rotary_fraction, base});
        }
        return to;
      },
      py::arg("x"), py::kw_only(), py::arg("positions") = py::none(), py::arg("rotary_fraction") = 1.0,
      py::arg("base") = 10000.0, py::arg("out") = py::none(),
      R"(Rotary position embedding (rotate-half) on the first rotary_fraction·p dims of each head.

x: [b, l, h, p], f32 or f64 (bf16 or f32 on CUDA; q and k are rotated by separate calls).
positions: optional int32 [b, l], default 0..l-1 in every row. rotary_fraction·p must be an
even integer. With r that number and i < r/2: θ = pos·base^(-2i/r),
out[i] = x[i]cosθ − x[i+r/2]sinθ, out[i+r/2] = x[i+r/2]cosθ + x[i]sinθ; other dims are
copied. out may be x (in place).)");

  m.def(
      "rope_backward",
      [](py::handle dout, py::handle positions, double rotary_fraction, double base, py::handle dx) {
        const char* op = "rope_backward";
        Tensor td = as_tensor(dout, op, "dout"), tp = optional_tensor(positions, op, "positions");
        Tensor tdx = output(dx, op, "dx", shape_or_empty(td), td);
        {
          py::gil_scoped_release release;
          rope_backward(td, tdx, tp, RopeOptions{rotary_fraction, base});
        }
        return tdx;
      },
      py::arg("dout"), py::kw_only(), py::arg("positions") = py::none(), py::arg("rotary_fraction") = 1.0,
      py::arg("base") = 10000.0, py::arg("dx") = py::none(),
      R"(Gradient of rope_forward: the inverse rotation of dout [b, l, h, p] into dx (same shape).)");

  m.def(
      "kv_cache_append",
      [](py::handle k, py::handle v, py::handle k_cache, py::handle v_cache, py::handle cache_lens,
         bool check_lengths) {
        const char* op = "kv_cache_append";
        Tensor tk = as_tensor(k, op, "k"), tv = as_tensor(v, op, "v");
        Tensor tkc = as_tensor(k_cache, op, "k_cache"), tvc = as_tensor(v_cache, op, "v_cache");
        Tensor tl = as_tensor(cache_lens, op, "cache_lens");
        py::gil_scoped_release release;
        kv_cache_append(tk, tv, tkc, tvc, tl, check_lengths);
      },
      py::arg("k"), py::arg("v"), py::arg("k_cache"), py::arg("v_cache"), py::arg("cache_lens"), py::kw_only(),
      py::arg("check_lengths") = true,
      R"(Appends one token's k, v [b, hkv, p] to the caches in place.

k_cache, v_cache: [b, max_len, hkv, p]; cache_lens: int32 [b], the valid entries of each
sequence. Writes at position cache_lens[i] of sequence i, then adds 1 to cache_lens[i]
(also in place); a full cache raises ValueError and changes nothing (on CUDA the lengths are
copied to the host for this check). check_lengths=False: the caller vouches for the lengths;
CUDA skips the copy and its wait and leaves an out-of-range sequence unchanged.)");

  m.def(
      "attention_decode",
      [](py::handle q, py::handle k_cache, py::handle v_cache, py::handle cache_lens, py::handle softmax_scale,
         py::handle out) {
        const char* op = "attention_decode";
        Tensor tq = as_tensor(q, op, "q");
        Tensor tkc = as_tensor(k_cache, op, "k_cache"), tvc = as_tensor(v_cache, op, "v_cache");
        Tensor tl = as_tensor(cache_lens, op, "cache_lens");
        Tensor to = output(out, op, "out", shape_or_empty(tq), tq);
        auto scale = optional_scale(softmax_scale);
        {
          py::gil_scoped_release release;
          attention_decode(tq, tkc, tvc, tl, to, scale);
        }
        return to;
      },
      py::arg("q"), py::arg("k_cache"), py::arg("v_cache"), py::arg("cache_lens"), py::kw_only(),
      py::arg("softmax_scale") = py::none(), py::arg("out") = py::none(),
      R"(Attention of one new token per sequence over its KV cache. Returns out [b, hq, p].

q: [b, hq, p]; k_cache, v_cache: [b, max_len, hkv, p] with hq a multiple of hkv;
cache_lens: int32 [b], 1 <= cache_lens[i] <= max_len: sequence i attends to its first
cache_lens[i] entries (append the token's own k, v first). softmax_scale: default 1/sqrt(p).
On CUDA cache_lens is not checked (no wait on the device): lengths are clamped to
[0, max_len] and a sequence with none gets zeros.)");
}

}  // namespace mambatron::bind
