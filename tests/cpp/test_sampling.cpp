// Sampling: the kept set and renormalised probabilities of temperature / top-k /
// top-p on hand-made logits, greedy and top-k = 1, seeded draws against the target
// distribution, reproducibility and errors.
#include <cmath>
#include <map>

#include "testing.h"

namespace mambatron::testing {
namespace {

Tensor row(const std::vector<double>& v) {
  Tensor t = Tensor::empty({int64_t(v.size())}, DType::f64);
  std::copy(v.begin(), v.end(), t.data<double>());
  return t;
}

SamplingParams params(double temperature, int64_t top_k = 0, double top_p = 1.0) {
  SamplingParams p;
  p.temperature = temperature;
  p.top_k = top_k;
  p.top_p = top_p;
  return p;
}

void expect_probs(const Tensor& got, const std::vector<double>& want, const char* what) {
  auto g = values(got);
  ASSERT_EQ(g.size(), want.size()) << what;
  for (size_t j = 0; j < want.size(); ++j) EXPECT_NEAR(g[j], want[j], 1e-12) << what << " at id " << j;
}

// Logits ln q for a distribution q (ids shuffled so that likelihood order is not id order).
const std::vector<double> kQ = {0.15, 0.05, 0.5, 0.1, 0.2};

std::vector<double> log_of(const std::vector<double>& q) {
  std::vector<double> z;
  for (double x : q) z.push_back(std::log(x) + 3.0);  // a shift changes nothing
  return z;
}

TEST(Sampling, TemperatureRescalesTheSoftmax) {
  Tensor z = row(log_of(kQ));
  expect_probs(sampling_probabilities(z, params(1.0)), kQ, "T=1");
  for (double T : {0.5, 2.0}) {
    std::vector<double> want;
    double s = 0;
    for (double q : kQ) s += std::pow(q, 1 / T);
    for (double q : kQ) want.push_back(std::pow(q, 1 / T) / s);
    expect_probs(sampling_probabilities(z, params(T)), want, "T");
  }
}

TEST(Sampling, TopKKeepsTheMostLikelyAndRenormalises) {
  Tensor z = row(log_of(kQ));
  expect_probs(sampling_probabilities(z, params(1.0, 2)), {0, 0, 0.5 / 0.7, 0, 0.2 / 0.7}, "k=2");
  expect_probs(sampling_probabilities(z, params(1.0, 5)), kQ, "k=V");
  expect_probs(sampling_probabilities(z, params(1.0, 9)), kQ, "k>V");
}

TEST(Sampling, TopPKeepsTheSmallestPrefixReachingP) {
  Tensor z = row(log_of(kQ));
  // Sorted: 0.5 (id 2), 0.2 (id 4), 0.15 (id 0), 0.1 (id 3), 0.05 (id 1).
  expect_probs(sampling_probabilities(z, params(1.0, 0, 0.4)), {0, 0, 1, 0, 0}, "p=0.4");
  expect_probs(sampling_probabilities(z, params(1.0, 0, 0.6)), {0, 0, 0.5 / 0.7, 0, 0.2 / 0.7}, "p=0.6");
  expect_probs(sampling_probabilities(z, params(1.0, 0, 0.75)), {0.15 / 0.85, 0, 0.5 / 0.85, 0, 0.2 / 0.85}, "p=0.75");
  expect_probs(sampling_probabilities(z, params(1.0, 0, 0.93)), {0.15 / 0.95, 0, 0.5 / 0.95, 0.1 / 0.95, 0.2 / 0.95},
               "p=0.93");
  // top-p applies to what top-k kept: of {0.5, 0.2, 0.15} (mass 0.85), 0.6 of it is 0.51.
  expect_probs(sampling_probabilities(z, params(1.0, 3, 0.6)), {0, 0, 0.5 / 0.7, 0, 0.2 / 0.7}, "k=3, p=0.6");
  // Temperature first: at T = 0.5 the weights are q², and 0.25 / 0.325 > 0.6 alone.
  expect_probs(sampling_probabilities(z, params(0.5, 0, 0.6)), {0, 0, 1, 0, 0}, "T=0.5, p=0.6");
}

TEST(Sampling, GreedyIsTheArgmaxWithTheLowestIdOnTies) {
  Tensor z = row({0.5, 2.0, -1.0, 2.0, 1.0});
  expect_probs(sampling_probabilities(z, params(0.0)), {0, 1, 0, 0, 0}, "greedy");
  auto t = values(sample_tokens(z.view({1, 5}), params(0.0), {7}, {0}));
  EXPECT_EQ(t[0], 1.0);
  // top-k = 1 breaks the tie the same way, at any temperature.
  EXPECT_EQ(values(sample_tokens(z.view({1, 5}), params(3.0, 1), {7}, {0}))[0], 1.0);
}

TEST(Sampling, TopKOneEqualsGreedyOnRandomLogits) {
  const int64_t b = 64, V = 50;
  Tensor z = randn({b, V}, DType::f32, 3.0);
  std::vector<uint64_t> seeds(b), counters(b);
  for (int64_t i = 0; i < b; ++i) seeds[size_t(i)] = fresh_seed(), counters[size_t(i)] = uint64_t(i);
  auto greedy = values(sample_tokens(z, params(0.0), seeds, counters));
  for (double T : {0.3, 1.0, 5.0})
    EXPECT_EQ(values(sample_tokens(z, params(T, 1), seeds, counters)), greedy) << "T = " << T;
  // And it is the argmax of each row.
  auto zv = values(z);
  for (int64_t i = 0; i < b; ++i) {
    int64_t best = 0;
    for (int64_t j = 1; j < V; ++j)
      if (zv[size_t(i * V + j)] > zv[size_t(i * V + best)]) best = j;
    EXPECT_EQ(greedy[size_t(i)], double(best)) << "row " << i;
  }
}

// Many seeded draws: frequencies within 5 standard errors of the target, and none
// outside the kept set.
void expect_frequencies(const SamplingParams& p, const std::vector<double>& logits) {
  const int64_t V = int64_t(logits.size()), n = 40000;
  Tensor z = Tensor::empty({n, V}, DType::f64);
  for (int64_t i = 0; i < n; ++i) std::copy(logits.begin(), logits.end(), z.data<double>() + i * V);
  const uint64_t seed = fresh_seed();
  std::vector<uint64_t> seeds(static_cast<size_t>(n), seed), counters(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) counters[size_t(i)] = uint64_t(i);
  auto drawn = values(sample_tokens(z, p, seeds, counters));
  std::vector<double> freq(static_cast<size_t>(V), 0.0);
  for (double t : drawn) freq[size_t(t)] += 1.0 / double(n);
  auto target = values(sampling_probabilities(row(logits), p));
  for (int64_t j = 0; j < V; ++j) {
    double q = target[size_t(j)], se = std::sqrt(q * (1 - q) / double(n));
    if (q == 0) EXPECT_EQ(freq[size_t(j)], 0.0) << "id " << j << " is outside the kept set; seed " << seed;
    else EXPECT_NEAR(freq[size_t(j)], q, 5 * se + 1e-12) << "id " << j << "; seed " << seed;
  }
}

TEST(Sampling, SeededDrawsFollowTheTargetDistribution) {
  const std::vector<double> z = {1.0, -0.5, 2.0, 0.3, 0.0, 1.5, -2.0, 0.8};
  expect_frequencies(params(1.0), z);
  expect_frequencies(params(0.7, 5), z);
  expect_frequencies(params(1.3, 0, 0.8), z);
  expect_frequencies(params(2.0, 6, 0.9), z);
}

TEST(Sampling, SameSeedSameDrawsOtherSeedOthers) {
  const uint64_t seed = fresh_seed();
  EXPECT_EQ(sampling_uniform(seed, 5), sampling_uniform(seed, 5));
  int same = 0;
  for (uint64_t c = 0; c < 64; ++c) {
    double u = sampling_uniform(seed, c);
    EXPECT_GE(u, 0.0);
    EXPECT_LT(u, 1.0);
    same += u == sampling_uniform(seed + 1, c);
  }
  EXPECT_EQ(same, 0);
  // Row streams of one user seed are distinct, and differ from a neighbouring seed's.
  EXPECT_NE(sequence_seed(seed, 0), sequence_seed(seed, 1));
  EXPECT_NE(sequence_seed(seed, 1), sequence_seed(seed + 1, 0));
  EXPECT_EQ(sequence_seed(seed, 3), sequence_seed(seed, 3));

  Tensor z = randn({16, 40}, DType::f64);
  std::vector<uint64_t> s(16, seed), c(16, 0), s2(16, seed + 1);
  auto a = values(sample_tokens(z, params(1.5), s, c));
  EXPECT_EQ(a, values(sample_tokens(z, params(1.5), s, c)));
  EXPECT_NE(a, values(sample_tokens(z, params(1.5), s2, c)));
}

TEST(Sampling, Errors) {
  Tensor z = row({0.0, 1.0});
  EXPECT_THROW(sampling_probabilities(z, params(-1.0)), ValueError);
  EXPECT_THROW(sampling_probabilities(z, params(NAN)), ValueError);
  EXPECT_THROW(sampling_probabilities(z, params(1.0, -1)), ValueError);
  EXPECT_THROW(sampling_probabilities(z, params(1.0, 0, 0.0)), ValueError);
  EXPECT_THROW(sampling_probabilities(z, params(1.0, 0, 1.5)), ValueError);
  EXPECT_THROW(sampling_probabilities(row({0.0, NAN}), params(1.0)), ValueError);
  EXPECT_THROW(sampling_probabilities(row({0.0, INFINITY}), params(1.0)), ValueError);
  EXPECT_THROW(sampling_probabilities(row({-INFINITY, -INFINITY}), params(1.0)), ValueError);
  EXPECT_THROW(sampling_probabilities(Tensor::zeros({2, 2, 2}), params(1.0)), ValueError);
  EXPECT_THROW(sampling_probabilities(Tensor::zeros({2}, DType::i32), params(1.0)), TypeError);
  EXPECT_THROW(sample_tokens(z.view({1, 2}), params(1.0), {1, 2}, {0, 0}), ValueError);  // two seeds, one row
  // −inf logits are never drawn.
  expect_probs(sampling_probabilities(row({-INFINITY, 0.0, 0.0}), params(1.0)), {0, 0.5, 0.5}, "-inf");
}

}  // namespace
}  // namespace mambatron::testing
