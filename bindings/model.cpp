// mambatron.Model for Python: built from the Python ModelConfig's to_dict() (or an
// equivalent dict); parameters and gradients are views of the flat buffers.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "convert.h"
#include "mambatron/model.h"

namespace mambatron::bind {

namespace {

// Python-only keys of ModelConfig.to_dict() that the native model does not use.
const char* const kIgnoredKeys[] = {"num_layers", "attention_ratio", "mlp_ratio", "dtype", "param_dtype", "name"};

bool ignored(const std::string& key) {
  for (const char* k : kIgnoredKeys)
    if (key == k) return true;
  return false;
}

// A field of a section dict: `set` is called with the value when present; None
// keeps the default ("auto" widths stay 0 and resolve in C++).
class Fields {
 public:
  Fields(py::handle dict, std::string section) : section_(std::move(section)) {
    if (dict.is_none()) return;
    MT_CHECK(py::isinstance<py::dict>(dict), ValueError, "Model: config section '", section_,
             "' must be a dict, got ", std::string(py::str(py::type::of(dict).attr("__name__"))));
    dict_ = py::reinterpret_borrow<py::dict>(dict);
    for (auto item : dict_) seen_.push_back(py::str(item.first));
  }
  template <class T>
  void get(const char* key, T& out) {
    if (!dict_ || !dict_.contains(key)) return;
    py::handle v = dict_[key];
    mark(key);
    if (v.is_none()) return;
    try {
      out = v.cast<T>();
    } catch (const py::cast_error&) {
      throw ValueError(detail::cat("Model: config ", prefix(), key, " = ", std::string(py::repr(v)),
                                   " has the wrong type"));
    }
  }
  void get_dt_rank(int64_t& out) {
    if (dict_ && dict_.contains("dt_rank") && py::isinstance<py::str>(dict_["dt_rank"])) {
      std::string s = py::str(dict_["dt_rank"]);
      MT_CHECK(s == "auto", ValueError, "Model: config mamba1.dt_rank = '", s, "' must be an integer or \"auto\"");
      mark("dt_rank");
      out = 0;
      return;
    }
    get("dt_rank", out);
  }
  void known(const char* key) { mark(key); }
  // Every key of the dict must have been read.
  void finish() const {
    for (const std::string& k : seen_)
      MT_CHECK(ignored(k) && section_.empty(), ValueError, "Model: unknown config key '", prefix(), k, "'");
  }

 private:
  std::string prefix() const { return section_.empty() ? "" : section_ + "."; }
  void mark(const char* key) {
    for (size_t i = 0; i < seen_.size(); ++i)
      if (seen_[i] == key) {
        seen_.erase(seen_.begin() + int64_t(i));
        return;
      }
  }
  std::string section_;
  py::dict dict_;
  std::vector<std::string> seen_;
};

ModelConfig config_from_python(py::handle obj) {
  py::object d;
  if (py::hasattr(obj, "to_dict") && py::hasattr(obj, "layers")) {
    d = obj.attr("to_dict")();
    d["pattern"] = obj.attr("layers");  // resolved from num_layers and ratios in Python
  } else {
    MT_CHECK(py::isinstance<py::dict>(obj), ValueError, "Model: config must be a ModelConfig, a preset name or a dict");
    d = py::reinterpret_borrow<py::object>(obj);
  }
  ModelConfig c;
  Fields top(d, "");
  py::dict dict = d.cast<py::dict>();
  MT_CHECK(dict.contains("pattern") && py::isinstance<py::str>(dict["pattern"]), ValueError,
           "Model: config needs a 'pattern' string (give a ModelConfig to resolve num_layers and ratios)");
  top.get("pattern", c.pattern);
  top.get("d_model", c.d_model);
  top.get("vocab_size", c.vocab_size);
  std::string norm = norm_kind_name(c.norm);
  top.get("norm", norm);
  c.norm = norm_kind_from_string(norm);
  top.get("norm_eps", c.norm_eps);
  top.get("tie_embeddings", c.tie_embeddings);
  top.get("init_std", c.init_std);
  for (const char* s : {"mamba2", "mamba1", "attention", "mlp"}) top.known(s);  // read below
  top.finish();

  auto section = [&](const char* name) {
    py::object value = dict.contains(name) ? py::object(dict[name]) : py::object(py::none());
    return Fields(value, name);
  };
  Fields m2 = section("mamba2");
  m2.get("expand", c.mamba2.expand);
  m2.get("head_dim", c.mamba2.head_dim);
  m2.get("d_state", c.mamba2.d_state);
  m2.get("n_groups", c.mamba2.n_groups);
  m2.get("d_conv", c.mamba2.d_conv);
  m2.get("chunk_size", c.mamba2.chunk_size);
  m2.get("dt_min", c.mamba2.dt_min);
  m2.get("dt_max", c.mamba2.dt_max);
  m2.get("dt_init_floor", c.mamba2.dt_init_floor);
  m2.get("A_init_min", c.mamba2.A_init_min);
  m2.get("A_init_max", c.mamba2.A_init_max);
  m2.finish();
  Fields m1 = section("mamba1");
  m1.get("expand", c.mamba1.expand);
  m1.get("d_state", c.mamba1.d_state);
  m1.get_dt_rank(c.mamba1.dt_rank);
  m1.get("d_conv", c.mamba1.d_conv);
  m1.get("dt_min", c.mamba1.dt_min);
  m1.get("dt_max", c.mamba1.dt_max);
  m1.get("dt_init_floor", c.mamba1.dt_init_floor);
  m1.finish();
  Fields at = section("attention");
  at.get("num_heads", c.attention.num_heads);
  at.get("num_kv_heads", c.attention.num_kv_heads);
  at.get("head_dim", c.attention.head_dim);
  at.get("rotary_fraction", c.attention.rotary_fraction);
  at.get("rope_base", c.attention.rope_base);
  at.finish();
  Fields mlp = section("mlp");
  mlp.get("ffn_hidden", c.mlp.ffn_hidden);
  std::string act = activation_name(c.mlp.activation);
  mlp.get("activation", act);
  c.mlp.activation = activation_from_string(act);
  mlp.finish();
  return c;
}

py::dict config_to_dict(const ModelConfig& c) {
  py::dict d, m2, m1, at, mlp;
  d["pattern"] = c.pattern;
  d["d_model"] = c.d_model;
  d["vocab_size"] = c.vocab_size;
  d["norm"] = norm_kind_name(c.norm);
  d["norm_eps"] = c.norm_eps;
  d["tie_embeddings"] = c.tie_embeddings;
  d["init_std"] = c.init_std;
  m2["expand"] = c.mamba2.expand, m2["head_dim"] = c.mamba2.head_dim, m2["d_state"] = c.mamba2.d_state;
  m2["n_groups"] = c.mamba2.n_groups, m2["d_conv"] = c.mamba2.d_conv, m2["chunk_size"] = c.mamba2.chunk_size;
  m2["dt_min"] = c.mamba2.dt_min, m2["dt_max"] = c.mamba2.dt_max, m2["dt_init_floor"] = c.mamba2.dt_init_floor;
  m2["A_init_min"] = c.mamba2.A_init_min, m2["A_init_max"] = c.mamba2.A_init_max;
  m1["expand"] = c.mamba1.expand, m1["d_state"] = c.mamba1.d_state, m1["dt_rank"] = c.mamba1.dt_rank;
  m1["d_conv"] = c.mamba1.d_conv, m1["dt_min"] = c.mamba1.dt_min, m1["dt_max"] = c.mamba1.dt_max;
  m1["dt_init_floor"] = c.mamba1.dt_init_floor;
  at["num_heads"] = c.attention.num_heads, at["num_kv_heads"] = c.attention.num_kv_heads;
  at["head_dim"] = c.attention.head_dim, at["rotary_fraction"] = c.attention.rotary_fraction;
  at["rope_base"] = c.attention.rope_base;
  mlp["ffn_hidden"] = c.mlp.ffn_hidden, mlp["activation"] = activation_name(c.mlp.activation);
  d["mamba2"] = m2, d["mamba1"] = m1, d["attention"] = at, d["mlp"] = mlp;
  return d;
}

py::dict named_dict(const Model::NamedTensors& named) {
  py::dict d;
  for (const auto& [name, t] : named) d[py::str(name)] = t;
  return d;
}

Tensor optional_tensor(py::handle h, const char* op, const char* name) {
  return h.is_none() ? Tensor() : as_tensor(h, op, name);
}

py::object layer_dict(const InferenceState::Layer& l) {
  py::dict d;
  auto put = [&](const char* k, const Tensor& t) {
    if (t.defined()) d[k] = t;
  };
  put("conv_state", l.conv_state);
  put("ssm_state", l.ssm_state);
  put("k_cache", l.k_cache);
  put("v_cache", l.v_cache);
  put("cache_lens", l.cache_lens);
  return d;
}

}  // namespace

void bind_model(py::module_& m) {
  py::class_<InferenceState>(m, "InferenceState", "Decoding state of a batch: per sublayer the conv and SSM "
                                                  "states or the KV cache, and the tokens consumed per sequence.")
      .def_readonly("batch", &InferenceState::batch)
      .def_readonly("max_len", &InferenceState::max_len)
      .def_readonly("lengths", &InferenceState::lengths, "int32 [batch]: tokens consumed by each sequence")
      .def_property_readonly(
          "layers",
          [](const InferenceState& s) {
            py::list out;
            for (const auto& l : s.layers) out.append(layer_dict(l));
            return out;
          },
          "Per sublayer a dict of its state tensors (views, not copies)");

  py::class_<Model>(m, "Model", R"(A language model of Mamba-2 (M), Mamba-1 (m), attention (*) and MLP (-)
sublayers (MODELS.md).

Model(config, dtype="f32", device="cpu"): config is a mambatron.ModelConfig or its to_dict().
dtype is the compute dtype: f32 or f64 on the CPU; bf16 (mixed precision: f32 master
weights, gradients and optimizer state, bf16 matrices and activations) or f32 on CUDA.
Parameters are allocated (zeros), not initialised: call init(seed) or load_parameters().)")
      .def(py::init([](py::handle config, py::handle dtype, py::handle device) {
             ModelConfig c = config_from_python(config);
             return std::make_unique<Model>(c, to_dtype(dtype), to_device(device));
           }),
           py::arg("config"), py::arg("dtype") = "f32", py::arg("device") = "cpu")
      .def_property_readonly("config", [](const Model& m) { return config_to_dict(m.config()); },
                             "The resolved native config (derived widths filled in) as a dict")
      .def_property_readonly("dtype", &Model::dtype, "The compute dtype")
      .def_property_readonly("parameter_dtype", &Model::parameter_dtype,
                             "The master weights' and gradients' dtype (f32 on CUDA)")
      .def_property_readonly("working_parameters", &Model::working_parameters,
                             "The flat working copy the forward reads (bf16 on a bf16 CUDA model)")
      .def("sync_working_copy", &Model::sync_working_copy, py::call_guard<py::gil_scoped_release>(),
           "Refresh the working copy after changing parameters in place (init, load_parameters and the "
           "optimizer do it themselves)")
      .def_property_readonly("device", &Model::device)
      .def("init", &Model::init, py::arg("seed"), py::call_guard<py::gil_scoped_release>(),
           "MODELS.md's initialisation; the same seed gives the same weights")
      .def("parameters", [](const Model& m) { return named_dict(m.parameters()); },
           "dict name -> Tensor, views of the flat parameter buffer in the order of parameter_shapes()")
      .def("gradients", [](const Model& m) { return named_dict(m.gradients()); },
           "dict name -> Tensor, views of the flat gradient buffer")
      .def_property_readonly("flat_parameters", &Model::flat_parameters)
      .def_property_readonly("flat_gradients", &Model::flat_gradients)
      .def_property_readonly("weight_decay_mask", &Model::weight_decay_mask,
                             "uint8 [num_parameters]: 1 for matrices (AdamW decays them), 0 for 1-D parameters")
      .def("num_parameters", &Model::num_parameters)
      .def(
          "load_parameters",
          [](Model& m, py::handle named) {
            Model::NamedTensors list;
            py::object items =
                py::hasattr(named, "items") ? named.attr("items")() : py::reinterpret_borrow<py::object>(named);
            for (py::handle item : items) {
              auto pair = item.cast<py::tuple>();
              std::string name = py::str(pair[0]);
              list.emplace_back(name, as_tensor(pair[1], "Model.load_parameters", name.c_str()));
            }
            py::gil_scoped_release release;
            m.load_parameters(list);
          },
          py::arg("parameters"),
          "Copies parameters by name from a dict (or pairs) of arrays; every name exactly once, exact shapes")
      .def_property("recompute", &Model::recompute, &Model::set_recompute,
                    R"(Activation recomputation (default False). When True, the forward keeps only the
residual stream and forward_backward recomputes each sublayer's forward just before its
backward: saved activations shrink to one sublayer's worth, for about one more forward of
compute. Losses and gradients are the same bits either way.)")
      .def(
          "forward_backward",
          [](Model& m, py::handle tokens, py::handle loss_mask, py::handle seq_idx, double grad_scale,
             bool accumulate) {
            const char* op = "Model.forward_backward";
            Tensor t = as_tensor(tokens, op, "tokens"), mk = optional_tensor(loss_mask, op, "loss_mask");
            Tensor s = optional_tensor(seq_idx, op, "seq_idx");
            py::gil_scoped_release release;
            return m.forward_backward(t, mk, s, grad_scale, accumulate);
          },
          py::arg("tokens"), py::arg("loss_mask") = py::none(), py::arg("seq_idx") = py::none(), py::kw_only(),
          py::arg("grad_scale") = 1.0, py::arg("accumulate") = false,
          R"(Mean loss of tokens [b, l+1] (inputs [:, :-1], targets [:, 1:]); writes the gradients of
grad_scale * loss into the gradient buffer (adds them with accumulate=True).
loss_mask: optional [b, l] uint8 or float weights; seq_idx: optional int32 [b, l] document ids.)")
      .def(
          "loss",
          [](Model& m, py::handle tokens, py::handle loss_mask, py::handle seq_idx) {
            const char* op = "Model.loss";
            Tensor t = as_tensor(tokens, op, "tokens"), mk = optional_tensor(loss_mask, op, "loss_mask");
            Tensor s = optional_tensor(seq_idx, op, "seq_idx");
            py::gil_scoped_release release;
            return m.loss(t, mk, s);
          },
          py::arg("tokens"), py::arg("loss_mask") = py::none(), py::arg("seq_idx") = py::none(),
          "The mean loss of forward_backward, without the backward")
      .def(
          "logits",
          [](Model& m, py::handle tokens, py::handle seq_idx) {
            Tensor t = as_tensor(tokens, "Model.logits", "tokens");
            Tensor s = optional_tensor(seq_idx, "Model.logits", "seq_idx");
            py::gil_scoped_release release;
            return m.logits(t, s);
          },
          py::arg("tokens"), py::arg("seq_idx") = py::none(), "tokens [b, l] -> logits [b, l, V]")
      .def("new_state", &Model::new_state, py::arg("batch"), py::arg("max_len"),
           "Empty decoding states for `batch` sequences of up to max_len tokens")
      .def(
          "prefill",
          [](Model& m, py::handle tokens, InferenceState& state) {
            Tensor t = as_tensor(tokens, "Model.prefill", "tokens");
            py::gil_scoped_release release;
            return m.prefill(t, state);
          },
          py::arg("tokens"), py::arg("state"),
          "Runs tokens [b, l] from empty states, fills `state`; returns the last position's logits [b, V]")
      .def(
          "step",
          [](Model& m, py::handle tokens, InferenceState& state) {
            Tensor t = as_tensor(tokens, "Model.step", "tokens");
            py::gil_scoped_release release;
            return m.step(t, state);
          },
          py::arg("tokens"), py::arg("state"), "One new token per sequence: tokens [b] -> logits [b, V]");
}

}  // namespace mambatron::bind
