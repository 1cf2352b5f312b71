// The batched generator: per-prompt prefill into rows of one state, then rounds of
// sampling and one-token decode steps (generate.h explains why this is exact).
#include <algorithm>

#include "mambatron/error.h"
#include "mambatron/generate.h"

namespace mambatron {

namespace {

// Copies row 0 of every state tensor of `one` into row `row` of `all`.
void copy_row(const InferenceState& one, InferenceState& all, int64_t row) {
  auto copy = [&](const Tensor& src, Tensor& dst) {
    if (dst.defined()) dst.select(0, row).copy_(src.select(0, 0));
  };
  for (size_t j = 0; j < all.layers.size(); ++j) {
    const InferenceState::Layer& s = one.layers[j];
    InferenceState::Layer& d = all.layers[j];
    copy(s.conv_state, d.conv_state);
    copy(s.ssm_state, d.ssm_state);
    copy(s.k_cache, d.k_cache);
    copy(s.v_cache, d.v_cache);
    copy(s.cache_lens, d.cache_lens);
  }
  all.lengths.select(0, row).copy_(one.lengths.select(0, 0));
}

void check_request(const GenerationRequest& r, int64_t i, int64_t vocab) {
  MT_CHECK(!r.prompt.empty(), ValueError, "TokenGenerator.start: prompt ", i,
           " is empty; every sequence needs at least one token to condition on");
  for (size_t j = 0; j < r.prompt.size(); ++j)
    MT_CHECK(r.prompt[j] >= 0 && r.prompt[j] < vocab, ValueError, "TokenGenerator.start: prompt ", i, " has id ",
             r.prompt[j], " at position ", j, ", outside the vocabulary [0, ", vocab, ")");
  MT_CHECK(r.max_new_tokens >= 0, ValueError, "TokenGenerator.start: max_new_tokens = ", r.max_new_tokens,
           " of sequence ", i, " must be >= 0");
  for (int64_t s : r.stop_tokens)
    MT_CHECK(s >= 0 && s < vocab, ValueError, "TokenGenerator.start: stop token ", s, " of sequence ", i,
             " is outside the vocabulary [0, ", vocab, ")");
}

}  // namespace

TokenGenerator::TokenGenerator(Model& model) : model_(model) {}

void TokenGenerator::check_started(const char* op) const {
  MT_CHECK(started(), ValueError, op, ": no batch; call start(requests, sampling) first");
}

bool TokenGenerator::done() const {
  return std::all_of(finished_.begin(), finished_.end(), [](char f) { return f != 0; });
}

bool TokenGenerator::finished(int64_t i) const {
  check_started("TokenGenerator.finished");
  MT_CHECK(i >= 0 && i < batch(), ValueError, "TokenGenerator.finished: sequence ", i, " is outside the batch of ",
           batch());
  return finished_[size_t(i)] != 0;
}

void TokenGenerator::start(const std::vector<GenerationRequest>& requests, const SamplingParams& sampling) {
  sampling.validate();
  MT_CHECK(!requests.empty(), ValueError, "TokenGenerator.start: no sequences to generate");
  const int64_t vocab = model_.config().vocab_size, b = int64_t(requests.size());
  int64_t longest = 0, most_new = 0;
  for (int64_t i = 0; i < b; ++i) {
    check_request(requests[size_t(i)], i, vocab);
    longest = std::max(longest, int64_t(requests[size_t(i)].prompt.size()));
    most_new = std::max(most_new, requests[size_t(i)].max_new_tokens);
  }
  // Decode steps number at most most_new − 1 (the last round needs none), so no row
  // ever holds more than longest + most_new − 1 tokens.
  const int64_t max_len = longest + std::max<int64_t>(most_new, 1);

  // Reset before the work that may throw, so a failed start leaves no half batch.
  requests_.clear();
  tokens_.clear();
  finished_.clear();
  InferenceState all = model_.new_state(b, max_len), one = model_.new_state(1, max_len);
  // Logits are sampled on the CPU; the model takes CPU token ids on any device.
  Tensor logits = Tensor::empty({b, vocab}, model_.parameter_dtype());
  for (int64_t i = 0; i < b; ++i) {
    const auto& prompt = requests[size_t(i)].prompt;
    Tensor ids = Tensor::empty({1, int64_t(prompt.size())}, DType::i64);
    std::copy(prompt.begin(), prompt.end(), ids.data<int64_t>());
    Tensor row = model_.prefill(ids, one);
    logits.select(0, i).copy_(row.select(0, 0));
    copy_row(one, all, i);
  }
  requests_ = requests;
  sampling_ = sampling;
  state_ = std::move(all);
  logits_ = logits;
  tokens_.assign(size_t(b), {});
  finished_.assign(size_t(b), 0);
  for (int64_t i = 0; i < b; ++i) finished_[size_t(i)] = requests[size_t(i)].max_new_tokens == 0;
}

std::vector<int64_t> TokenGenerator::next() {
  check_started("TokenGenerator.next");
  const int64_t b = batch();
  std::vector<int64_t> out(static_cast<size_t>(b), -1);
  if (done()) return out;
  std::vector<uint64_t> seeds(static_cast<size_t>(b)), counters(static_cast<size_t>(b));
  for (int64_t i = 0; i < b; ++i) {
    seeds[size_t(i)] = requests_[size_t(i)].seed;
    counters[size_t(i)] = uint64_t(tokens_[size_t(i)].size());
  }
  // Finished rows are drawn too (their logits are valid numbers) and discarded.
  Tensor drawn = sample_tokens(logits_, sampling_, seeds, counters);
  Tensor feed = Tensor::empty({b}, DType::i64);
  for (int64_t i = 0; i < b; ++i) {
    const GenerationRequest& r = requests_[size_t(i)];
    std::vector<int64_t>& seq = tokens_[size_t(i)];
    if (!finished_[size_t(i)]) {
      const int64_t t = drawn.data<int64_t>()[i];
      seq.push_back(t);
      out[size_t(i)] = t;
      const bool stop = std::find(r.stop_tokens.begin(), r.stop_tokens.end(), t) != r.stop_tokens.end();
      finished_[size_t(i)] = stop || int64_t(seq.size()) >= r.max_new_tokens;
    }
    feed.data<int64_t>()[i] = seq.empty() ? r.prompt.back() : seq.back();
  }
  if (!done()) logits_ = model_.step(feed, state_).to(Device::cpu());
  return out;
}

std::vector<std::vector<int64_t>> TokenGenerator::generate(const std::vector<GenerationRequest>& requests,
                                                      const SamplingParams& sampling) {
  start(requests, sampling);
  while (!done()) next();
  return tokens_;
}

}  // namespace mambatron
