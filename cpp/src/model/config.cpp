// ModelConfig: derived widths and validation, with the rules of
// python/mambatron/config.py (messages name the field, its value and the rule).
#include <cmath>

#include "mambatron/error.h"
#include "mambatron/model.h"

namespace mambatron {

NormKind norm_kind_from_string(const std::string& s) {
  if (s == "rmsnorm") return NormKind::rmsnorm;
  if (s == "layernorm1p") return NormKind::layernorm1p;
  throw ValueError("ModelConfig: norm = '" + s + "' is not one of rmsnorm, layernorm1p");
}

Activation activation_from_string(const std::string& s) {
  if (s == "gelu") return Activation::gelu;
  if (s == "squared_relu") return Activation::squared_relu;
  if (s == "swiglu") return Activation::swiglu;
  throw ValueError("ModelConfig: mlp.activation = '" + s + "' is not one of gelu, squared_relu, swiglu");
}

const char* norm_kind_name(NormKind k) { return k == NormKind::rmsnorm ? "rmsnorm" : "layernorm1p"; }

const char* activation_name(Activation a) {
  switch (a) {
    case Activation::gelu: return "gelu";
    case Activation::squared_relu: return "squared_relu";
    case Activation::swiglu: return "swiglu";
  }
  return "?";
}

ModelConfig ModelConfig::resolved() const {
  ModelConfig c = *this;
  if (c.mamba1.dt_rank == 0) c.mamba1.dt_rank = (d_model + 15) / 16;
  if (c.attention.num_kv_heads == 0) c.attention.num_kv_heads = c.attention.num_heads;
  if (c.attention.head_dim == 0 && c.attention.num_heads > 0) {
    MT_CHECK(pattern.find('*') == std::string::npos || d_model % c.attention.num_heads == 0, ValueError,
             "ModelConfig: attention.num_heads = ", c.attention.num_heads, " must divide d_model = ", d_model,
             " when attention.head_dim is not given");
    c.attention.head_dim = d_model / c.attention.num_heads;
  }
  if (c.mlp.ffn_hidden == 0) c.mlp.ffn_hidden = 4 * d_model;
  return c;
}

namespace {
void check_min(const char* name, int64_t v, int64_t minimum) {
  MT_CHECK(v >= minimum, ValueError, "ModelConfig: ", name, " = ", v, " must be an integer >= ", minimum);
}
void check_conv(const char* name, int64_t v) {
  MT_CHECK(v >= 2 && v <= 4, ValueError, "ModelConfig: ", name, " = ", v, " must be 2, 3 or 4 (conv1d widths)");
}
void check_positive(const char* name, double v) {
  MT_CHECK(v > 0 && std::isfinite(v), ValueError, "ModelConfig: ", name, " = ", v,
           " must be a positive finite number");
}
void check_dt_range(const char* section, double dt_min, double dt_max, double floor) {
  std::string s = section;
  check_positive((s + ".dt_min").c_str(), dt_min);
  check_positive((s + ".dt_max").c_str(), dt_max);
  check_positive((s + ".dt_init_floor").c_str(), floor);
  MT_CHECK(dt_max >= dt_min, ValueError, "ModelConfig: ", s, ".dt_max = ", dt_max, " must be at least ", s,
           ".dt_min = ", dt_min);
}
}  // namespace

const ModelConfig& ModelConfig::validate() const {
  MT_CHECK(!pattern.empty(), ValueError, "ModelConfig: pattern is empty; give one symbol per sublayer ",
           "(M Mamba-2, m Mamba-1, * attention, - MLP)");
  bool has[128] = {};
  for (size_t i = 0; i < pattern.size(); ++i) {
    char c = pattern[i];
    MT_CHECK(c == 'M' || c == 'm' || c == '*' || c == '-', ValueError, "ModelConfig: pattern '", pattern,
             "' has '", c, "' at position ", i, "; allowed are M (Mamba-2), m (Mamba-1), * (attention), - (MLP)");
    has[int(c)] = true;
  }
  check_min("d_model", d_model, 1);
  check_min("vocab_size", vocab_size, 1);
  check_positive("norm_eps", norm_eps);
  check_positive("init_std", init_std);
  if (has[int('M')]) {
    const Mamba2Options& c = mamba2;
    check_min("mamba2.expand", c.expand, 1);
    check_min("mamba2.head_dim", c.head_dim, 1);
    check_min("mamba2.d_state", c.d_state, 1);
    check_min("mamba2.n_groups", c.n_groups, 1);
    check_conv("mamba2.d_conv", c.d_conv);
    check_min("mamba2.chunk_size", c.chunk_size, 1);
    MT_CHECK(mamba2_d_inner() % c.head_dim == 0, ValueError, "ModelConfig: mamba2.head_dim = ", c.head_dim,
             " must divide the Mamba-2 inner width ", mamba2_d_inner(), " (d_model ", d_model, " x expand ",
             c.expand, ")");
    MT_CHECK(mamba2_num_heads() % c.n_groups == 0, ValueError, "ModelConfig: mamba2.n_groups = ", c.n_groups,
             " must divide the Mamba-2 head count ", mamba2_num_heads());
    check_dt_range("mamba2", c.dt_min, c.dt_max, c.dt_init_floor);
    check_positive("mamba2.A_init_min", c.A_init_min);
    MT_CHECK(c.A_init_max >= c.A_init_min, ValueError, "ModelConfig: mamba2.A_init_max = ", c.A_init_max,
             " must be at least mamba2.A_init_min = ", c.A_init_min);
  }
  if (has[int('m')]) {
    const Mamba1Options& c = mamba1;
    check_min("mamba1.expand", c.expand, 1);
    check_min("mamba1.d_state", c.d_state, 1);
    check_min("mamba1.dt_rank", c.dt_rank, 1);
    check_conv("mamba1.d_conv", c.d_conv);
    check_dt_range("mamba1", c.dt_min, c.dt_max, c.dt_init_floor);
  }
  if (has[int('*')]) {
    const AttentionOptions& a = attention;
    check_min("attention.num_heads", a.num_heads, 1);
    check_min("attention.num_kv_heads", a.num_kv_heads, 1);
    check_min("attention.head_dim", a.head_dim, 1);
    MT_CHECK(a.num_heads % a.num_kv_heads == 0, ValueError, "ModelConfig: attention.num_kv_heads = ",
             a.num_kv_heads, " must divide attention.num_heads = ", a.num_heads);
    MT_CHECK(a.rotary_fraction >= 0 && a.rotary_fraction <= 1, ValueError, "ModelConfig: attention.rotary_fraction = ",
             a.rotary_fraction, " must lie in [0, 1] (0 = no RoPE)");
    double dims = a.rotary_fraction * double(a.head_dim);
    MT_CHECK(dims == std::floor(dims) && int64_t(dims) % 2 == 0, ValueError,
             "ModelConfig: attention.rotary_fraction = ", a.rotary_fraction, " gives ", dims,
             " rotary dims of head_dim ", a.head_dim, "; it must be an even whole number");
    check_positive("attention.rope_base", a.rope_base);
  }
  if (has[int('-')]) check_min("mlp.ffn_hidden", mlp.ffn_hidden, 1);
  return *this;
}

}  // namespace mambatron
