// Sampling the next token from logits: greedy, temperature, top-k and top-p, drawn
// with a counter-based uniform so that every draw is reproducible on its own.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "../core/philox.h"
#include "mambatron/error.h"
#include "mambatron/generate.h"

namespace mambatron {

namespace {

// The ids a row may draw and their unnormalised weights, in the order the draw walks
// them; `total` is their sum accumulated in that same order, so the walk's running
// sum ends exactly at it.
struct Kept {
  std::vector<int64_t> ids;
  std::vector<double> weights;
  double total = 0;
};

int64_t argmax(const double* z, int64_t V) {
  int64_t best = 0;
  for (int64_t j = 1; j < V; ++j)
    if (z[j] > z[best]) best = j;  // strict: the lowest id wins a tie
  return best;
}

// Checks a row of logits (already in f64) and returns its maximum.
double checked_max(const double* z, int64_t V, int64_t row) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < V; ++j) {
    MT_CHECK(!std::isnan(z[j]) && z[j] != std::numeric_limits<double>::infinity(), ValueError,
             "sampling: logits row ", row, " holds ", z[j], " at id ", j, "; logits must be finite or -inf");
    m = std::max(m, z[j]);
  }
  MT_CHECK(m > -std::numeric_limits<double>::infinity(), ValueError, "sampling: logits row ", row,
           " is -inf everywhere; no token can be drawn");
  return m;
}

// The kept set of one row of logits z [V] (f64) under `p`.
void kept_set(const double* z, int64_t V, const SamplingParams& p, int64_t row, Kept& out) {
  const double m = checked_max(z, V, row);
  out.ids.clear();
  out.weights.clear();
  out.total = 0;
  if (p.greedy()) {
    out.ids.push_back(argmax(z, V));
    out.weights.push_back(1.0);
    out.total = 1.0;
    return;
  }
  std::vector<double> w(static_cast<size_t>(V));
  for (int64_t j = 0; j < V; ++j) w[size_t(j)] = std::exp((z[j] - m) / p.temperature);
  const bool top_k = p.top_k > 0 && p.top_k < V, top_p = p.top_p < 1.0;
  out.ids.resize(size_t(V));
  std::iota(out.ids.begin(), out.ids.end(), int64_t(0));
  if (top_k || top_p) {
    // Most likely first; equal weights by lower id, so the order is a total one.
    auto more_likely = [&](int64_t a, int64_t b) {
      const double wa = w[size_t(a)], wb = w[size_t(b)];
      return wa > wb || (wa == wb && a < b);
    };
    const int64_t k = top_k ? p.top_k : V;
    std::partial_sort(out.ids.begin(), out.ids.begin() + k, out.ids.end(), more_likely);
    out.ids.resize(size_t(k));
  }
  if (top_p) {
    double mass = 0;
    for (int64_t id : out.ids) mass += w[size_t(id)];
    // Keep an id while the mass before it is below top_p of the whole: the smallest
    // prefix whose mass reaches top_p (never empty).
    double before = 0;
    size_t n = 0;
    while (n < out.ids.size() && before < p.top_p * mass) before += w[size_t(out.ids[n++])];
    out.ids.resize(n);
  }
  out.weights.reserve(out.ids.size());
  for (int64_t id : out.ids) {
    out.weights.push_back(w[size_t(id)]);
    out.total += w[size_t(id)];
  }
}

// The id whose cumulative interval [before, before + w) holds u · total.
int64_t draw(const Kept& k, double u) {
  const double target = u * k.total;
  double acc = 0;
  for (size_t j = 0; j < k.ids.size(); ++j) {
    acc += k.weights[j];
    if (acc > target) return k.ids[j];
  }
  // u·total rounded up to total: the last id of positive weight.
  for (size_t j = k.ids.size(); j-- > 0;)
    if (k.weights[j] > 0) return k.ids[j];
  return k.ids.back();
}

// Logits as contiguous f64 [b, V] on the CPU.
Tensor as_rows(const Tensor& logits, const char* op) {
  MT_CHECK(logits.defined() && (logits.dim() == 1 || logits.dim() == 2), ValueError, op, ": logits have ",
           logits.defined() ? std::to_string(logits.dim()) + " dims" : std::string("no value"),
           ", expected [b, V] or [V]");
  MT_CHECK(is_floating(logits.dtype()), TypeError, op, ": logits have dtype ", dtype_name(logits.dtype()),
           ", expected a float dtype");
  MT_CHECK(logits.size(-1) >= 1, ValueError, op, ": logits have an empty vocabulary dimension");
  Tensor t = logits.to(Device::cpu(), DType::f64).contiguous();
  return logits.dim() == 1 ? t.view({1, t.size(0)}) : t;
}

}  // namespace

const SamplingParams& SamplingParams::validate() const {
  MT_CHECK(std::isfinite(temperature) && temperature >= 0, ValueError, "sampling: temperature = ", temperature,
           " must be finite and >= 0 (0 is greedy)");
  MT_CHECK(top_k >= 0, ValueError, "sampling: top_k = ", top_k, " must be >= 0 (0 keeps every id)");
  MT_CHECK(top_p > 0 && top_p <= 1, ValueError, "sampling: top_p = ", top_p, " must be in (0, 1] (1 keeps every id)");
  return *this;
}

Tensor sampling_probabilities(const Tensor& logits, const SamplingParams& params) {
  params.validate();
  Tensor z = as_rows(logits, "sampling_probabilities");
  const int64_t b = z.size(0), V = z.size(1);
  Tensor out = Tensor::zeros({b, V}, DType::f64);
  Kept k;
  for (int64_t i = 0; i < b; ++i) {
    kept_set(z.data<double>() + i * V, V, params, i, k);
    double* o = out.data<double>() + i * V;
    for (size_t j = 0; j < k.ids.size(); ++j) o[k.ids[j]] = k.weights[j] / k.total;
  }
  return logits.dim() == 1 ? out.view({V}) : out;
}

double sampling_uniform(uint64_t seed, uint64_t counter) { return rng::uniform_at(0, seed, counter, 53); }

uint64_t sequence_seed(uint64_t seed, int64_t index) {
  // splitmix64's finaliser over a Weyl step per row.
  uint64_t x = seed + 0x9E3779B97F4A7C15ULL * (uint64_t(index) + 1);
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

Tensor sample_tokens(const Tensor& logits, const SamplingParams& params, const std::vector<uint64_t>& seeds,
                     const std::vector<uint64_t>& counters) {
  params.validate();
  Tensor z = as_rows(logits, "sample_tokens");
  const int64_t b = z.size(0), V = z.size(1);
  MT_CHECK(int64_t(seeds.size()) == b && int64_t(counters.size()) == b, ValueError, "sample_tokens: ", b,
           " rows of logits but ", seeds.size(), " seeds and ", counters.size(), " counters");
  Tensor out = Tensor::empty({b}, DType::i64);
  Kept k;
  for (int64_t i = 0; i < b; ++i) {
    kept_set(z.data<double>() + i * V, V, params, i, k);
    out.data<int64_t>()[i] = draw(k, sampling_uniform(seeds[size_t(i)], counters[size_t(i)]));
  }
  return out;
}

}  // namespace mambatron
