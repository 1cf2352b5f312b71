// The model's parameters: names, layout and weight-decay mask, MODELS.md's init
// statistics, determinism of init, load_parameters, and the errors of bad configs
// and bad inputs.
#include <cmath>
#include <map>

#include "mambatron/cuda.h"
#include "model_testing.h"

namespace mambatron::testing {
namespace {

struct Stats {
  double mean = 0, std = 0, min = INFINITY, max = -INFINITY;
  int64_t n = 0;
};

Stats stats(const Tensor& t) {
  Stats s;
  auto v = values(t);
  s.n = int64_t(v.size());
  for (double x : v) {
    s.mean += x;
    s.min = std::min(s.min, x);
    s.max = std::max(s.max, x);
  }
  s.mean /= double(s.n);
  for (double x : v) s.std += (x - s.mean) * (x - s.mean);
  s.std = std::sqrt(s.std / double(s.n));
  return s;
}

// Mean within 5 standard errors of 0 and std within 6% of `std`.
void expect_centred(const Model& m, const std::string& name, double std) {
  Stats s = stats(m.parameter(name));
  EXPECT_LT(std::fabs(s.mean), 5 * std / std::sqrt(double(s.n))) << name;
  EXPECT_NEAR(s.std, std, 0.06 * std) << name;
}

void expect_constant(const Model& m, const std::string& name, double value) {
  Stats s = stats(m.parameter(name));
  EXPECT_EQ(s.min, value) << name;
  EXPECT_EQ(s.max, value) << name;
}

// A model wide enough for statistics: d 64, V 512, 4 sublayers (one of each).
ModelConfig stats_config() {
  ModelConfig c = tiny_config("Mm*-");
  c.d_model = 64;
  c.vocab_size = 512;
  c.init_std = 0.02;
  c.mamba2.head_dim = 16;
  c.mamba2.d_state = 16;
  c.mamba1.d_state = 16;
  c.mamba1.dt_rank = 0;  // ceil(64 / 16) = 4
  c.attention.head_dim = 16;
  c.mlp.ffn_hidden = 256;
  return c;
}

TEST(ModelInit, StatisticsFollowModelsMd) {
  Model m(stats_config(), DType::f64);
  m.init(fresh_seed());
  const double std = 0.02, out_std = 0.02 / std::sqrt(2.0 * 4);
  for (const char* name : {"embedding.weight", "lm_head.weight", "layers.0.mixer.in_proj.weight",
                           "layers.1.mixer.in_proj.weight", "layers.1.mixer.x_proj.weight",
                           "layers.2.mixer.qkv_proj.weight", "layers.3.mixer.fc1.weight"})
    expect_centred(m, name, std);
  for (const char* name : {"layers.0.mixer.out_proj.weight", "layers.1.mixer.out_proj.weight",
                           "layers.2.mixer.o_proj.weight", "layers.3.mixer.fc2.weight"})
    expect_centred(m, name, out_std);
  // conv1d weight and bias: U(±1/√4) = U(±0.5), std 0.5/√3.
  for (const char* name : {"layers.0.mixer.conv1d.weight", "layers.1.mixer.conv1d.weight",
                           "layers.0.mixer.conv1d.bias", "layers.1.mixer.conv1d.bias"}) {
    Stats s = stats(m.parameter(name));
    EXPECT_GE(s.min, -0.5) << name;
    EXPECT_LE(s.max, 0.5) << name;
    EXPECT_GT(s.max - s.min, 0.8) << name;
    if (s.n > 1000) EXPECT_NEAR(s.std, 0.5 / std::sqrt(3.0), 0.03) << name;
  }
  // Mamba-1 dt_proj.weight: U(±dt_rank^−½) = U(±0.5).
  Stats dtw = stats(m.parameter("layers.1.mixer.dt_proj.weight"));
  EXPECT_GE(dtw.min, -0.5);
  EXPECT_LE(dtw.max, 0.5);
  EXPECT_NEAR(dtw.std, 0.5 / std::sqrt(3.0), 0.03);
  // dt biases: softplus(bias) = dt, log-uniform in [1e-3, 1e-1].
  for (const char* name : {"layers.0.mixer.dt_bias", "layers.1.mixer.dt_proj.bias"}) {
    auto v = values(m.parameter(name));
    double mean_log = 0;
    for (double x : v) {
      double dt = std::log1p(std::exp(x));
      EXPECT_GE(dt, 1e-3 * (1 - 1e-9)) << name;
      EXPECT_LE(dt, 1e-1 * (1 + 1e-9)) << name;
      mean_log += std::log(dt) / double(v.size());
    }
    // ln dt ~ U(ln 1e-3, ln 1e-1): mean ln 1e-2, std ln(100)/√12 = 1.33.
    EXPECT_NEAR(mean_log, std::log(1e-2), 5 * 1.33 / std::sqrt(double(v.size()))) << name;
  }
  // Mamba-2 A_log = ln U(1, 16); Mamba-1 A_log[c, k] = ln(k + 1).
  for (double a : values(m.parameter("layers.0.mixer.A_log"))) {
    EXPECT_GE(std::exp(a), 1.0 - 1e-12);
    EXPECT_LE(std::exp(a), 16.0 + 1e-12);
  }
  auto a1 = values(m.parameter("layers.1.mixer.A_log"));
  for (size_t i = 0; i < a1.size(); ++i) EXPECT_EQ(a1[i], std::log(double(i % 16 + 1)));
  for (const char* name : {"layers.0.mixer.D", "layers.1.mixer.D", "layers.0.mixer.norm.weight",
                           "layers.0.norm.weight", "layers.3.norm.weight", "norm_f.weight"})
    expect_constant(m, name, 1.0);
}

TEST(ModelInit, LayerNorm1pStartsAtZeroAndTiedHasNoHead) {
  ModelConfig c = tiny_config("*-");
  c.norm = NormKind::layernorm1p;
  c.tie_embeddings = true;
  Model m(c, DType::f32);
  m.init(3);
  for (const char* name : {"layers.0.norm.weight", "layers.0.norm.bias", "layers.1.norm.bias", "norm_f.weight",
                           "norm_f.bias"})
    expect_constant(m, name, 0.0);
  EXPECT_EQ(m.parameters().back().first, "norm_f.bias");
  EXPECT_THROW(m.parameter("lm_head.weight"), ValueError);
}

TEST(ModelInit, SameSeedSameWeightsAcrossDtypes) {
  ModelConfig c = tiny_config("Mm*-");
  Model a(c, DType::f64), b(c, DType::f64), c32(c, DType::f32);
  a.init(7);
  b.init(7);
  c32.init(7);
  EXPECT_EQ(values(a.flat_parameters()), values(b.flat_parameters()));
  EXPECT_EQ(values(c32.flat_parameters()), values(a.flat_parameters().to(DType::f32)));
  b.init(8);
  auto va = values(a.flat_parameters()), vb = values(b.flat_parameters());
  int64_t same = 0;
  for (size_t i = 0; i < va.size(); ++i) same += va[i] == vb[i];
  // Only the deterministic parameters (norms, D, Mamba-1 A_log) coincide.
  EXPECT_LT(same, int64_t(va.size()) / 10);
}

TEST(ModelLayout, NamesShapesOrderAndDecayMask) {
  ModelConfig c = tiny_config("Mm*-");
  Model m(c, DType::f32);
  std::vector<std::pair<std::string, Shape>> expected = {
      {"embedding.weight", {32, 16}},
      {"layers.0.norm.weight", {16}},
      {"layers.0.mixer.in_proj.weight", {2 * 32 + 2 * 2 * 8 + 4, 16}},
      {"layers.0.mixer.conv1d.weight", {64, 1, 4}},
      {"layers.0.mixer.conv1d.bias", {64}},
      {"layers.0.mixer.dt_bias", {4}},
      {"layers.0.mixer.A_log", {4}},
      {"layers.0.mixer.D", {4}},
      {"layers.0.mixer.norm.weight", {32}},
      {"layers.0.mixer.out_proj.weight", {16, 32}},
      {"layers.1.norm.weight", {16}},
      {"layers.1.mixer.in_proj.weight", {64, 16}},
      {"layers.1.mixer.conv1d.weight", {32, 1, 4}},
      {"layers.1.mixer.conv1d.bias", {32}},
      {"layers.1.mixer.x_proj.weight", {3 + 2 * 4, 32}},
      {"layers.1.mixer.dt_proj.weight", {32, 3}},
      {"layers.1.mixer.dt_proj.bias", {32}},
      {"layers.1.mixer.A_log", {32, 4}},
      {"layers.1.mixer.D", {32}},
      {"layers.1.mixer.out_proj.weight", {16, 32}},
      {"layers.2.norm.weight", {16}},
      {"layers.2.mixer.qkv_proj.weight", {(4 + 2 * 2) * 8, 16}},
      {"layers.2.mixer.o_proj.weight", {16, 32}},
      {"layers.3.norm.weight", {16}},
      {"layers.3.mixer.fc1.weight", {24, 16}},
      {"layers.3.mixer.fc2.weight", {16, 24}},
      {"norm_f.weight", {16}},
      {"lm_head.weight", {32, 16}},
  };
  ASSERT_EQ(m.parameters().size(), expected.size());
  int64_t total = 0, decayed = 0;
  auto mask = values(m.weight_decay_mask());
  for (size_t k = 0; k < expected.size(); ++k) {
    const auto& [name, p] = m.parameters()[k];
    EXPECT_EQ(name, expected[k].first);
    EXPECT_EQ(p.shape(), expected[k].second) << name;
    EXPECT_EQ(p.data_ptr(), static_cast<char*>(m.flat_parameters().data_ptr()) + total * 4) << name;
    EXPECT_EQ(m.gradients()[k].second.shape(), p.shape()) << name;
    bool matrix = p.dim() >= 2 && name.find("A_log") == std::string::npos;
    for (int64_t i = 0; i < p.numel(); ++i) EXPECT_EQ(mask[size_t(total + i)], matrix ? 1.0 : 0.0) << name;
    total += p.numel();
    decayed += matrix ? p.numel() : 0;
  }
  EXPECT_EQ(m.num_parameters(), total);
  EXPECT_EQ(m.flat_gradients().numel(), total);
  EXPECT_EQ(m.weight_decay_mask().dtype(), DType::u8);
  EXPECT_GT(decayed, 0);
}

TEST(ModelLayout, LoadParametersByName) {
  ModelConfig c = tiny_config("M*");
  Model a(c, DType::f64), b(c, DType::f32);
  a.init(11);
  b.load_parameters(a.parameters());
  EXPECT_EQ(values(b.flat_parameters()), values(a.flat_parameters().to(DType::f32)));

  Model::NamedTensors missing(a.parameters().begin(), a.parameters().end() - 1);
  Model::NamedTensors extra = a.parameters();
  extra.emplace_back("layers.9.norm.weight", Tensor::zeros({16}));
  Model::NamedTensors wrong = a.parameters();
  wrong[1].second = Tensor::zeros({17}, DType::f64);
  Model::NamedTensors twice = a.parameters();
  twice.back() = twice.front();
  auto expect_message = [&](const Model::NamedTensors& named, const char* text) {
    try {
      b.load_parameters(named);
      ADD_FAILURE() << "no error, expected one mentioning " << text;
    } catch (const ValueError& e) {
      EXPECT_NE(std::string(e.what()).find(text), std::string::npos) << e.what();
    }
  };
  expect_message(missing, "'lm_head.weight' is missing");
  expect_message(extra, "unexpected parameter 'layers.9.norm.weight'");
  expect_message(wrong, "has shape [17], expected [16]");
  expect_message(twice, "given twice");
  // A failed load leaves the parameters as they were.
  EXPECT_EQ(values(b.flat_parameters()), values(a.flat_parameters().to(DType::f32)));
}

// fn() must throw E with `text` in its message.
TEST(ModelErrors, BadConfigs) {
  auto bad = [](const std::string& pattern, std::function<void(ModelConfig&)> edit, const std::string& text) {
    ModelConfig c = tiny_config(pattern);
    edit(c);
    expect_error<ValueError>([&] { Model m(c); }, text);
  };
  bad("", [](ModelConfig&) {}, "pattern is empty");
  bad("M+m", [](ModelConfig&) {}, "has '+' at position 1");
  bad("M", [](ModelConfig& c) { c.d_model = 0; }, "d_model = 0");
  bad("M", [](ModelConfig& c) { c.mamba2.head_dim = 5; }, "mamba2.head_dim = 5 must divide");
  bad("M", [](ModelConfig& c) { c.mamba2.n_groups = 3; }, "mamba2.n_groups = 3 must divide");
  bad("M", [](ModelConfig& c) { c.mamba2.d_conv = 5; }, "mamba2.d_conv = 5");
  bad("m", [](ModelConfig& c) { c.mamba1.dt_max = 1e-4; }, "mamba1.dt_max");
  bad("*", [](ModelConfig& c) { c.attention.num_kv_heads = 3; }, "num_kv_heads = 3 must divide");
  bad("*", [](ModelConfig& c) { c.attention.rotary_fraction = 0.125; }, "rotary_fraction = 0.125 gives 1 rotary dims");
  bad("*", [](ModelConfig& c) { c.attention.rotary_fraction = 0.3; }, "even whole number");
  bad("*", [](ModelConfig& c) { c.attention.head_dim = 0; c.attention.num_heads = 3; }, "must divide d_model");
  bad("-", [](ModelConfig& c) { c.mlp.ffn_hidden = -1; }, "mlp.ffn_hidden = -1");
  bad("-", [](ModelConfig& c) { c.init_std = 0; }, "init_std");
  expect_error<ValueError>([] { activation_from_string("relu"); }, "mlp.activation = 'relu'");
  expect_error<ValueError>([] { norm_kind_from_string("layernorm"); }, "norm = 'layernorm'");
  expect_error<TypeError>([] { Model m(tiny_config("M"), DType::bf16); }, "dtype bf16");
  if (mambatron::built_with_cuda())
    expect_error<TypeError>([] { Model m(tiny_config("M"), DType::f64, Device::cuda(0)); }, "dtype f64");
  else
    expect_error<TypeError>([] { Model m(tiny_config("M"), DType::f32, Device::cuda(0)); }, "built without");
}

TEST(ModelErrors, BadInputs) {
  Model m(tiny_config("M*"), DType::f32);
  m.init(5);
  Tensor ok = random_tokens(2, 5, 32);
  expect_error<ValueError>([&] { m.loss(random_tokens(1, 10, 32).view({10})); }, "expected [batch, seq_len + 1]");
  expect_error<ValueError>([&] { m.forward_backward(random_tokens(2, 1, 32)); }, "seq_len + 1 >= 2");
  expect_error<TypeError>([&] { m.loss(Tensor::zeros({2, 5}, DType::f32)); }, "tokens have dtype f32");
  Tensor big = ok.clone();
  big.data<int32_t>()[7] = 32;
  expect_error<ValueError>([&] { m.forward_backward(big); }, "tokens[1, 2] = 32 is outside the vocabulary [0, 32)");
  Tensor neg = Tensor::full({2, 5}, -1, DType::i64);
  expect_error<ValueError>([&] { m.logits(neg); }, "= -1 is outside the vocabulary");
  expect_error<ValueError>([&] { m.loss(ok, Tensor::zeros({2, 5}, DType::f32)); }, "loss_mask has shape [2, 5]");
  expect_error<TypeError>([&] { m.loss(ok, Tensor(), Tensor::zeros({2, 4}, DType::i64)); }, "seq_idx has dtype i64");
  expect_error<ValueError>([&] { m.loss(ok, Tensor(), Tensor::zeros({2, 5}, DType::i32)); }, "seq_idx has shape");
  Tensor decreasing = Tensor::zeros({2, 4}, DType::i32);
  decreasing.data<int32_t>()[0] = 1;
  EXPECT_THROW(m.loss(ok, Tensor(), decreasing), ValueError);
  expect_error<ValueError>([&] { m.new_state(0, 4); }, "batch = 0");
  expect_error<ValueError>([&] { m.parameter("nope"); }, "no parameter named 'nope'");
}

}  // namespace
}  // namespace mambatron::testing
