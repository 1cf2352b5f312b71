// The generator on tiny models of every family: greedy tokens are the argmax of the
// full forward re-run on the growing sequence; a batch of prompts of different
// lengths gives each sequence exactly the tokens it gets alone (greedy and seeded
// sampling); stop tokens, max_new_tokens, seeds and errors.
#include "model_testing.h"

namespace mambatron::testing {
namespace {

using Tokens = std::vector<int64_t>;

GenerationRequest request(Tokens prompt, int64_t max_new, uint64_t seed = 0, Tokens stop = {}) {
  GenerationRequest r;
  r.prompt = std::move(prompt);
  r.max_new_tokens = max_new;
  r.seed = seed;
  r.stop_tokens = std::move(stop);
  return r;
}

SamplingParams sampling(double temperature, int64_t top_k = 0, double top_p = 1.0) {
  SamplingParams p;
  p.temperature = temperature;
  p.top_k = top_k;
  p.top_p = top_p;
  return p;
}

Tokens random_prompt(int64_t len, int64_t vocab) {
  auto v = values(random_tokens(1, len, vocab));
  return Tokens(v.begin(), v.end());
}

// Logits of the last position of `seq` from the full (chunked) forward.
Tensor last_logits(Model& m, const Tokens& seq) {
  Tensor t = Tensor::empty({1, int64_t(seq.size())}, DType::i64);
  std::copy(seq.begin(), seq.end(), t.data<int64_t>());
  Tensor full = m.logits(t);
  return full.select(0, 0).select(0, int64_t(seq.size()) - 1);
}

int64_t argmax(const Tensor& v) {
  auto x = values(v);
  return int64_t(std::max_element(x.begin(), x.end()) - x.begin());
}

class Generate : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    cfg_ = tiny_config(GetParam());
    model_ = std::make_unique<Model>(cfg_, DType::f64);
    model_->init(fresh_seed());
    perturb_parameters(*model_);
  }
  ModelConfig cfg_;
  std::unique_ptr<Model> model_;
};

TEST_P(Generate, GreedyIsTheArgmaxOfTheFullForward) {
  Model& m = *model_;
  const int64_t V = cfg_.vocab_size;
  std::vector<GenerationRequest> reqs = {request(random_prompt(5, V), 9), request(random_prompt(2, V), 6)};
  TokenGenerator gen(m);
  gen.start(reqs, sampling(0.0));
  int rounds = 0;
  while (!gen.done()) {
    Tensor logits = gen.logits().clone();  // what this round draws from
    auto out = gen.next();
    ++rounds;
    for (size_t i = 0; i < reqs.size(); ++i) {
      if (out[i] < 0) continue;
      Tokens seq = reqs[i].prompt;
      const Tokens& got = gen.tokens()[i];
      seq.insert(seq.end(), got.begin(), got.end() - 1);  // the context of the new token
      Tensor ref = last_logits(m, seq);
      EXPECT_CLOSE(logits.select(0, int64_t(i)), ref, 1e-9) << "sequence " << i << " round " << rounds;
      EXPECT_EQ(out[i], argmax(ref)) << "sequence " << i << " round " << rounds;
    }
  }
  EXPECT_EQ(rounds, 9);
  EXPECT_EQ(gen.tokens()[0].size(), 9u);
  EXPECT_EQ(gen.tokens()[1].size(), 6u);
}

// Each sequence of a batch (prompts of lengths 1..7, different budgets) against the
// same request generated alone; the logits of every round agree to rounding.
void expect_batch_equals_alone(Model& m, const SamplingParams& p, const std::vector<GenerationRequest>& reqs) {
  TokenGenerator batch(m);
  batch.start(reqs, p);
  std::vector<std::vector<Tensor>> logits(reqs.size());
  while (!batch.done()) {
    Tensor l = batch.logits().clone();
    for (size_t i = 0; i < reqs.size(); ++i)
      if (!batch.finished(int64_t(i))) logits[i].push_back(l.select(0, int64_t(i)));
    batch.next();
  }
  for (size_t i = 0; i < reqs.size(); ++i) {
    TokenGenerator alone(m);
    alone.start({reqs[i]}, p);
    size_t round = 0;
    while (!alone.done()) {
      ASSERT_LT(round, logits[i].size());
      EXPECT_CLOSE(alone.logits().select(0, 0), logits[i][round], 1e-12) << "sequence " << i << " round " << round;
      alone.next();
      ++round;
    }
    EXPECT_EQ(alone.tokens()[0], batch.tokens()[i]) << "sequence " << i;
  }
}

TEST_P(Generate, BatchOfDifferentLengthsEqualsEachAlone) {
  const int64_t V = cfg_.vocab_size;
  const uint64_t seed = fresh_seed();
  std::vector<GenerationRequest> reqs = {request(random_prompt(7, V), 5, sequence_seed(seed, 0)),
                                         request(random_prompt(1, V), 8, sequence_seed(seed, 1)),
                                         request(random_prompt(4, V), 3, sequence_seed(seed, 2)),
                                         request(random_prompt(4, V), 8, sequence_seed(seed, 3))};
  expect_batch_equals_alone(*model_, sampling(0.0), reqs);
  expect_batch_equals_alone(*model_, sampling(1.0), reqs);
  expect_batch_equals_alone(*model_, sampling(0.8, 10, 0.9), reqs);
}

INSTANTIATE_TEST_SUITE_P(Families, Generate, ::testing::Values("MM", "mm", "*-", "Mm*-"), [](const auto& i) {
  std::string s = i.param;
  for (char& c : s) c = c == 'M' ? 'M' : c == 'm' ? 'm' : c == '*' ? 'A' : 'F';
  return s;
});

class GenerateHybrid : public ::testing::Test {
 protected:
  GenerateHybrid() : cfg_(tiny_config("Mm*-")), model_(cfg_, DType::f64) {
    model_.init(fresh_seed());
    perturb_parameters(model_);
  }
  ModelConfig cfg_;
  Model model_;
};

TEST_F(GenerateHybrid, StopTokensEndTheirSequence) {
  const int64_t V = cfg_.vocab_size;
  Tokens p0 = random_prompt(3, V), p1 = random_prompt(5, V);
  TokenGenerator gen(model_);
  auto free_run = gen.generate({request(p0, 10), request(p1, 10)}, sampling(0.0));
  // Stop sequence 0 at its 4th token (the first occurrence of that id).
  const int64_t stop = free_run[0][3];
  const size_t first = size_t(std::find(free_run[0].begin(), free_run[0].end(), stop) - free_run[0].begin());
  auto out = gen.generate({request(p0, 10, 0, {stop}), request(p1, 10)}, sampling(0.0));
  EXPECT_EQ(out[0], Tokens(free_run[0].begin(), free_run[0].begin() + int64_t(first) + 1));
  EXPECT_EQ(out[1], free_run[1]) << "the other sequence runs on";
  EXPECT_TRUE(gen.finished(0));
}

TEST_F(GenerateHybrid, RoundsReportFinishedSequencesAndBudgets) {
  const int64_t V = cfg_.vocab_size;
  TokenGenerator gen(model_);
  EXPECT_TRUE(gen.done());
  EXPECT_THROW(gen.next(), ValueError);
  gen.start({request(random_prompt(2, V), 1), request(random_prompt(3, V), 3), request(random_prompt(1, V), 0)},
            sampling(0.0));
  EXPECT_TRUE(gen.finished(2));
  auto r1 = gen.next();
  EXPECT_GE(r1[0], 0);
  EXPECT_GE(r1[1], 0);
  EXPECT_EQ(r1[2], -1);
  auto r2 = gen.next();
  EXPECT_EQ(r2[0], -1);
  EXPECT_GE(r2[1], 0);
  gen.next();
  EXPECT_TRUE(gen.done());
  EXPECT_EQ(gen.next(), Tokens(3, -1));
  EXPECT_EQ(gen.tokens()[0].size(), 1u);
  EXPECT_EQ(gen.tokens()[1].size(), 3u);
  EXPECT_TRUE(gen.tokens()[2].empty());
}

TEST_F(GenerateHybrid, SameSeedSameTokensOtherSeedOthers) {
  const int64_t V = cfg_.vocab_size;
  Tokens p = random_prompt(4, V);
  const uint64_t seed = fresh_seed();
  TokenGenerator gen(model_);
  auto a = gen.generate({request(p, 24, seed)}, sampling(1.5));
  EXPECT_EQ(gen.generate({request(p, 24, seed)}, sampling(1.5)), a);
  EXPECT_NE(gen.generate({request(p, 24, seed + 1)}, sampling(1.5)), a);
  // top-k = 1 is greedy whatever the seed.
  EXPECT_EQ(gen.generate({request(p, 8, seed)}, sampling(0.7, 1)), gen.generate({request(p, 8, 0)}, sampling(0.0)));
}

TEST_F(GenerateHybrid, Errors) {
  const int64_t V = cfg_.vocab_size;
  TokenGenerator gen(model_);
  EXPECT_THROW(gen.start({}, sampling(0.0)), ValueError);
  EXPECT_THROW(gen.start({request({}, 3)}, sampling(0.0)), ValueError);
  EXPECT_THROW(gen.start({request({0, V}, 3)}, sampling(0.0)), ValueError);
  EXPECT_THROW(gen.start({request({0, -1}, 3)}, sampling(0.0)), ValueError);
  EXPECT_THROW(gen.start({request({0}, -1)}, sampling(0.0)), ValueError);
  EXPECT_THROW(gen.start({request({0}, 3, 0, {V})}, sampling(0.0)), ValueError);
  EXPECT_THROW(gen.start({request({0}, 3)}, sampling(-1.0)), ValueError);
  EXPECT_FALSE(gen.started()) << "a failed start leaves no batch";
}

}  // namespace
}  // namespace mambatron::testing
