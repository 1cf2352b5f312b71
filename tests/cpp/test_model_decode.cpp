// Decoding: prefill a prefix, then one token at a time, reproduces the full
// forward's logits for every family (f64 within 1e-9, f32 within 1e-4).
#include "model_testing.h"

namespace mambatron::testing {
namespace {

struct DecodeCase {
  const char* name;
  std::string pattern;
  NormKind norm;
  Activation act;
};

class ModelDecode : public ::testing::TestWithParam<std::tuple<DecodeCase, DType>> {};

TEST_P(ModelDecode, PrefillThenStepsEqualFullForward) {
  auto [c, dtype] = GetParam();
  ModelConfig cfg = tiny_config(c.pattern);
  cfg.norm = c.norm;
  cfg.mlp.activation = c.act;
  Model m(cfg, dtype);
  m.init(fresh_seed());
  perturb_parameters(m);
  const double tol = dtype == DType::f64 ? 1e-9 : 1e-4;
  const int64_t b = 2, l = 13, prefix = 6;
  Tensor tokens = random_tokens(b, l, cfg.vocab_size);
  Tensor full = m.logits(tokens);

  InferenceState st = m.new_state(b, 16);
  Tensor first = m.prefill(columns(tokens, 0, prefix), st);
  EXPECT_CLOSE(first, full.select(1, prefix - 1), tol) << "prefill";
  for (int64_t t = prefix; t < l; ++t) {
    Tensor step = m.step(tokens.select(1, t).contiguous(), st);
    EXPECT_CLOSE(step, full.select(1, t), tol) << "step at position " << t;
  }
  EXPECT_EQ(values(st.lengths), std::vector<double>(size_t(b), double(l)));

  // Decoding from an empty state without a prefill, and a prefill of one token.
  InferenceState fresh = m.new_state(b, l);
  for (int64_t t = 0; t < 4; ++t)
    EXPECT_CLOSE(m.step(tokens.select(1, t).contiguous(), fresh), full.select(1, t), tol) << "fresh step " << t;
  EXPECT_CLOSE(m.prefill(columns(tokens, 0, 1), fresh), full.select(1, 0), tol) << "prefill restarts the state";
}

std::vector<DecodeCase> decode_cases() {
  return {
      {"mamba2", "MM", NormKind::rmsnorm, Activation::gelu},
      {"mamba1", "mm", NormKind::rmsnorm, Activation::gelu},
      {"transformer", "*-*-", NormKind::layernorm1p, Activation::squared_relu},
      {"hybrid", "Mm*-", NormKind::rmsnorm, Activation::swiglu},
  };
}

INSTANTIATE_TEST_SUITE_P(ModelFamilies, ModelDecode,
                         ::testing::Combine(::testing::ValuesIn(decode_cases()),
                                            ::testing::Values(DType::f64, DType::f32)),
                         [](const auto& i) {
                           return std::string(std::get<0>(i.param).name) + "_" +
                                  dtype_name(std::get<1>(i.param));
                         });

TEST(ModelDecodeState, ShapesAndFullCache) {
  ModelConfig cfg = tiny_config("Mm*-");
  Model m(cfg, DType::f32);
  m.init(1);
  InferenceState st = m.new_state(3, 5);
  ASSERT_EQ(st.layers.size(), 4u);
  EXPECT_EQ(st.layers[0].conv_state.shape(), Shape({3, 32 + 2 * 2 * 8, 3}));
  EXPECT_EQ(st.layers[0].ssm_state.shape(), Shape({3, 4, 8, 8}));
  EXPECT_EQ(st.layers[1].conv_state.shape(), Shape({3, 32, 3}));
  EXPECT_EQ(st.layers[1].ssm_state.shape(), Shape({3, 32, 4}));
  EXPECT_EQ(st.layers[2].k_cache.shape(), Shape({3, 5, 2, 8}));
  EXPECT_FALSE(st.layers[3].conv_state.defined());
  Tensor tokens = random_tokens(3, 5, cfg.vocab_size);
  m.prefill(tokens, st);
  EXPECT_THROW(
      {
        try {
          m.step(tokens.select(1, 0).contiguous(), st);
        } catch (const ValueError& e) {
          EXPECT_NE(std::string(e.what()).find("KV cache is full"), std::string::npos) << e.what();
          throw;
        }
      },
      ValueError);
  EXPECT_THROW(m.prefill(random_tokens(3, 6, cfg.vocab_size), st), ValueError);  // longer than max_len
  EXPECT_THROW(m.prefill(random_tokens(2, 3, cfg.vocab_size), st), ValueError);  // wrong batch
  EXPECT_THROW(m.step(random_tokens(2, 1, cfg.vocab_size), st), ValueError);     // not [b]
  Model other(tiny_config("MM"), DType::f32);
  EXPECT_THROW(other.step(tokens.select(1, 0).contiguous(), st), ValueError);    // another model's state
}

}  // namespace
}  // namespace mambatron::testing
