// The model's training path: whole-model gradients against central finite
// differences in f64 for every family, the loss against a naive computation from
// the full logits, packed documents against separate runs, gradient accumulation.
#include <cmath>
#include <functional>

#include "model_testing.h"

namespace mambatron::testing {
namespace {

struct Case {
  const char* name;
  std::string pattern;
  std::function<void(ModelConfig&)> adjust;
  bool packed;  // seq_idx with several documents per row
  bool masked;  // an f64 loss mask with zeros and fractional weights
};

std::vector<Case> cases() {
  return {
      {"mamba2", "MM", [](ModelConfig&) {}, false, false},
      {"mamba1", "mm", [](ModelConfig&) {}, false, true},
      {"transformer_rope_gqa", "*-*-", [](ModelConfig&) {}, false, false},
      {"hybrid_packed", "Mm*-", [](ModelConfig&) {}, true, true},
      {"layernorm1p_squared_relu", "*-", [](ModelConfig& c) {
         c.norm = NormKind::layernorm1p;
         c.mlp.activation = Activation::squared_relu;
         c.attention.rotary_fraction = 0.0;
       }, true, false},
      {"swiglu_tied", "M-", [](ModelConfig& c) {
         c.mlp.activation = Activation::swiglu;
         c.tie_embeddings = true;
       }, false, false},
  };
}

// Document ids of two rows of 10 inputs: [0 0 0 0 1 1 1 1 1 1] and [0 0 1 1 1 2 2 2 2 2].
Tensor two_rows_of_documents() {
  Tensor s = Tensor::empty({2, 10}, DType::i32);
  int32_t ids[20] = {0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2};
  std::copy(ids, ids + 20, s.data<int32_t>());
  return s;
}

Tensor weight_mask(int64_t b, int64_t l) {
  Tensor m = uniform({b, l}, -0.5, 1.5);
  double* p = m.data<double>();
  for (int64_t i = 0; i < m.numel(); ++i) p[i] = p[i] < 0 ? 0.0 : p[i];
  return m;
}

// Mean cross-entropy (weighted by mask when given) from the full logits [b, l, V].
double naive_loss(const Tensor& logits, const Tensor& tokens, const Tensor& mask) {
  int64_t b = logits.size(0), l = logits.size(1), V = logits.size(2);
  auto z = values(logits);
  auto ids = values(tokens);
  std::vector<double> w = mask.defined() ? values(mask) : std::vector<double>(size_t(b * l), 1.0);
  double sum = 0, weight = 0;
  for (int64_t i = 0; i < b; ++i)
    for (int64_t t = 0; t < l; ++t) {
      const double* row = z.data() + (i * l + t) * V;
      double mx = *std::max_element(row, row + V), se = 0;
      for (int64_t v = 0; v < V; ++v) se += std::exp(row[v] - mx);
      int64_t target = int64_t(ids[size_t(i * (l + 1) + t + 1)]);
      double wt = w[size_t(i * l + t)];
      sum += wt * (mx + std::log(se) - row[target]);
      weight += wt;
    }
  return sum / weight;
}

class ModelGradient : public ::testing::TestWithParam<Case> {};

TEST_P(ModelGradient, MatchesFiniteDifferencesAndNaiveLoss) {
  const Case& c = GetParam();
  ModelConfig cfg = tiny_config(c.pattern);
  c.adjust(cfg);
  Model m(cfg, DType::f64);
  uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  m.init(seed);
  perturb_parameters(m);
  const int64_t b = 2, l = 10;
  Tensor tokens = random_tokens(b, l + 1, cfg.vocab_size);
  Tensor mask = c.masked ? weight_mask(b, l) : Tensor();
  Tensor seq_idx = c.packed ? two_rows_of_documents() : Tensor();

  double loss = m.forward_backward(tokens, mask, seq_idx);
  EXPECT_NEAR(loss, m.loss(tokens, mask, seq_idx), 1e-13 * loss);
  EXPECT_NEAR(loss, naive_loss(m.logits(columns(tokens, 0, l), seq_idx), tokens, mask), 1e-12 * loss);

  // Snapshot the gradients: the finite differences call loss() many times.
  Tensor grads = m.flat_gradients().clone();
  auto loss_fn = [&] { return m.loss(tokens, mask, seq_idx); };
  for (size_t k = 0; k < m.parameters().size(); ++k) {
    const auto& [name, p] = m.parameters()[k];
    const Tensor& g_view = m.gradients()[k].second;
    Tensor g = grads.narrow(0, g_view.offset(), g_view.numel()).view(p.shape());
    double gmax = 0;
    for (double v : values(g)) gmax = std::max(gmax, std::fabs(v));
    EXPECT_GT(gmax, 0.0) << name << " has an all-zero gradient";
    expect_gradient(loss_fn, p, g, name.c_str(), 1e-6, 12, 1e-5);
  }
}

// Recomputing each sublayer's forward before its backward gives the same bits, with
// less memory held at the peak (one sublayer's saved activations per kind).
TEST_P(ModelGradient, RecomputeGivesTheSameBitsWithLessMemory) {
  const Case& c = GetParam();
  ModelConfig cfg = tiny_config(c.pattern + c.pattern + c.pattern);  // enough sublayers to share
  c.adjust(cfg);
  Model m(cfg, DType::f64);
  m.init(fresh_seed());
  perturb_parameters(m);
  const int64_t b = 2, l = 10;
  Tensor tokens = random_tokens(b, l + 1, cfg.vocab_size);
  Tensor mask = c.masked ? weight_mask(b, l) : Tensor();
  Tensor seq_idx = c.packed ? two_rows_of_documents() : Tensor();
  // Switching the mode drops the workspace, so each first call allocates it afresh: the
  // peak over that call counts the saved activations and every temporary.
  auto run = [&](bool recompute, Tensor& grads) {
    m.set_recompute(recompute);
    reset_peak_memory_stats(Device::cpu());
    const size_t before = memory_allocated(Device::cpu());
    double loss = m.forward_backward(tokens, mask, seq_idx);
    const size_t peak = max_memory_allocated(Device::cpu()) - before;
    grads = m.flat_gradients().clone();
    return std::make_pair(loss, peak);
  };
  Tensor g_keep, g_recompute, g_again;
  auto [loss_keep, peak_keep] = run(false, g_keep);
  auto [loss_recompute, peak_recompute] = run(true, g_recompute);
  EXPECT_TRUE(m.recompute());
  EXPECT_EQ(loss_keep, loss_recompute);
  EXPECT_TRUE(same_bits(g_keep, g_recompute)) << "gradients differ with recomputation";
  EXPECT_LT(peak_recompute, peak_keep);
  EXPECT_EQ(run(false, g_again).first, loss_keep);
  EXPECT_TRUE(same_bits(g_again, g_keep));
  std::printf("[ %s ] peak %zu bytes kept, %zu recomputed\n", c.name, peak_keep, peak_recompute);
}

// Accumulating adds grad_scale · gradient into the buffer for every parameter kind
// (gemm weights in the gemm, the others through temporaries), without a second
// gradient buffer: the call holds less extra memory than the gradients take.
TEST_P(ModelGradient, AccumulationAddsEveryGradientWithoutASecondBuffer) {
  const Case& c = GetParam();
  ModelConfig cfg = tiny_config(c.pattern);
  c.adjust(cfg);
  Model m(cfg, DType::f64);
  m.init(fresh_seed());
  perturb_parameters(m);
  Tensor a = random_tokens(2, 11, cfg.vocab_size), b = random_tokens(2, 11, cfg.vocab_size);
  Tensor mask = c.masked ? weight_mask(2, 10) : Tensor();
  Tensor seq_idx = c.packed ? two_rows_of_documents() : Tensor();
  m.forward_backward(a, mask, seq_idx);
  Tensor ga = m.flat_gradients().clone();
  m.forward_backward(b, mask, seq_idx);
  Tensor gb = m.flat_gradients().clone();
  m.forward_backward(a, mask, seq_idx, 0.25);
  reset_peak_memory_stats(Device::cpu());
  const size_t before = memory_allocated(Device::cpu());
  m.forward_backward(b, mask, seq_idx, 2.0, true);
  const size_t extra = max_memory_allocated(Device::cpu()) - before;
  std::vector<double> va = values(ga), vb = values(gb), got = values(m.flat_gradients());
  double scale = 0;
  for (size_t i = 0; i < va.size(); ++i) scale = std::max(scale, std::fabs(0.25 * va[i] + 2.0 * vb[i]));
  for (size_t i = 0; i < va.size(); ++i)
    ASSERT_NEAR(got[i], 0.25 * va[i] + 2.0 * vb[i], 1e-13 * scale) << "flat gradient element " << i;
  EXPECT_LT(extra, m.flat_gradients().nbytes()) << "accumulating allocated a second gradient buffer";
}

INSTANTIATE_TEST_SUITE_P(ModelFamilies, ModelGradient, ::testing::ValuesIn(cases()),
                         [](const ::testing::TestParamInfo<Case>& i) { return std::string(i.param.name); });

// Each packed row holds whole documents; a document's own tokens are its inputs
// plus the next token of the row (its last target). Run separately with
// grad_scale = n_doc / N and accumulation, they must give the packed loss and
// gradients.
void expect_packed_equals_separate(const std::string& pattern, DType dtype, double tol) {
  ModelConfig cfg = tiny_config(pattern);
  Model m(cfg, dtype);
  m.init(fresh_seed());
  perturb_parameters(m);
  const int64_t l = 10;
  Tensor tokens = random_tokens(2, l + 1, cfg.vocab_size);
  Tensor seq_idx = two_rows_of_documents();
  double packed_loss = m.forward_backward(tokens, Tensor(), seq_idx);
  Tensor packed_grads = m.flat_gradients().clone();
  Tensor packed_logits = m.logits(columns(tokens, 0, l), seq_idx);

  struct Doc { int64_t row, start, len; };
  std::vector<Doc> docs = {{0, 0, 4}, {0, 4, 6}, {1, 0, 2}, {1, 2, 3}, {1, 5, 5}};
  double total = 0;
  bool first = true;
  for (const Doc& d : docs) {
    Tensor doc = tokens.narrow(0, d.row, 1).narrow(1, d.start, d.len + 1).contiguous();
    double scale = double(d.len) / double(2 * l);
    total += scale * m.forward_backward(doc, Tensor(), Tensor(), scale, !first);
    first = false;
    Tensor doc_logits = m.logits(columns(doc, 0, d.len));
    EXPECT_CLOSE(doc_logits, packed_logits.narrow(0, d.row, 1).narrow(1, d.start, d.len), tol)
        << "logits of the document at row " << d.row << ", position " << d.start;
  }
  EXPECT_NEAR(total, packed_loss, tol * packed_loss);
  EXPECT_CLOSE(m.flat_gradients(), packed_grads, tol);
}

TEST(ModelPacked, DocumentsEqualSeparateRunsHybrid) { expect_packed_equals_separate("Mm*-", DType::f64, 1e-10); }
TEST(ModelPacked, DocumentsEqualSeparateRunsTransformerF32) {
  expect_packed_equals_separate("*-*-", DType::f32, 2e-4);
}

TEST(ModelTraining, AccumulationAddsScaledGradients) {
  Model m(tiny_config("M*m-"), DType::f64);
  m.init(fresh_seed());
  Tensor a = random_tokens(2, 9, 32), b = random_tokens(3, 7, 32);
  m.forward_backward(a);
  Tensor ga = m.flat_gradients().clone();
  m.forward_backward(b);
  Tensor gb = m.flat_gradients().clone();
  m.forward_backward(a, Tensor(), Tensor(), 0.25);
  m.forward_backward(b, Tensor(), Tensor(), 2.0, true);
  Tensor expected = Tensor::empty(ga.shape(), DType::f64);
  auto va = values(ga), vb = values(gb);
  for (size_t i = 0; i < va.size(); ++i) expected.data<double>()[i] = 0.25 * va[i] + 2.0 * vb[i];
  EXPECT_CLOSE(m.flat_gradients(), expected, 1e-13);
  // A u8 mask equals the same 0/1 weights in f64.
  Tensor mask8 = Tensor::empty({2, 8}, DType::u8), mask64 = Tensor::empty({2, 8}, DType::f64);
  for (int i = 0; i < 16; ++i) {
    mask8.data<uint8_t>()[i] = uint8_t(i % 3 != 0);
    mask64.data<double>()[i] = double(i % 3 != 0);
  }
  EXPECT_DOUBLE_EQ(m.loss(a, mask8), m.loss(a, mask64));
}

TEST(ModelTraining, F32MatchesF64) {
  ModelConfig cfg = tiny_config("Mm*-");
  Model m64(cfg, DType::f64), m32(cfg, DType::f32);
  uint64_t seed = fresh_seed();
  m64.init(seed);
  m32.init(seed);
  Tensor tokens = random_tokens(2, 13, cfg.vocab_size);
  double l64 = m64.forward_backward(tokens), l32 = m32.forward_backward(tokens);
  EXPECT_NEAR(l32, l64, 1e-5 * l64);
  EXPECT_CLOSE(m32.flat_gradients(), m64.flat_gradients(), 1e-4);
}

}  // namespace
}  // namespace mambatron::testing
