// Text generation on a Model: token sampling over logits and a batched generator
// (prefill, then one-token decode steps on the recurrent states and KV caches).
//
// Batched prompts of different lengths. Model::prefill runs equal-length rows from
// empty states, so the TokenGenerator prefills each prompt on its own (batch 1, its own
// length, no padding) and copies that one-row state into its row of the batch's
// state; every later step advances all rows together, and each row of a decode step
// depends only on that row's state and token. So a sequence sees exactly the
// computation it would see alone: no padding, no masks, no shared positions. The
// one difference is rounding: the CPU matrix product may sum in another order for
// several rows than for one, so batched logits equal the lone ones to rounding
// (≈1e-7 relative in f32, ≈1e-16 in f64), not always bit for bit.
//
// Randomness. Each sequence owns a seed; its t-th draw (t = 0, 1, ... over its
// generated tokens) is one Philox-4x32-10 uniform at counter t under that seed. A
// draw therefore depends only on (seed, t): the same seed gives the same tokens,
// whatever the batch around the sequence. sequence_seed(seed, i) gives the rows of
// a batch distinct streams from one user seed.
#pragma once
#include <cstdint>
#include <vector>

#include "mambatron/model.h"
#include "mambatron/tensor.h"

namespace mambatron {

// How the next token is drawn from a row of logits. temperature 0 is greedy: the
// argmax (the lowest id among equal maxima). Otherwise p ∝ exp(logit / temperature);
// top_k > 0 keeps the k most likely ids; then top_p < 1 keeps the smallest set of the
// most likely remaining ids whose mass reaches top_p (of the remaining mass); the kept
// probabilities are renormalised. Ties in likelihood are ordered by lower id first.
struct SamplingParams {
  double temperature = 1.0;
  int64_t top_k = 0;   // 0: no top-k filter
  double top_p = 1.0;  // 1: no nucleus filter
  // ValueError naming the field unless temperature >= 0 (finite), top_k >= 0, 0 < top_p <= 1.
  const SamplingParams& validate() const;
  bool greedy() const { return temperature == 0.0; }
};

// The distribution sample_tokens draws from, for logits [b, V] or [V] (any float dtype
// and device): f64 on the CPU of the same shape, zero outside the kept ids. Greedy
// gives a one-hot row. ValueError for a row holding NaN or +inf, or only −inf.
Tensor sampling_probabilities(const Tensor& logits, const SamplingParams& params);

// The uniform number in [0, 1) (53 random bits) of draw `counter` under `seed`.
double sampling_uniform(uint64_t seed, uint64_t counter);

// The seed of row `index` of a batch generated from one user seed (a splitmix64 mix
// of both, so rows and nearby user seeds get unrelated streams).
uint64_t sequence_seed(uint64_t seed, int64_t index);

// One id per row of logits [b, V]: row i draws with sampling_uniform(seeds[i],
// counters[i]) by inverting the cumulative kept distribution. Returns i64 [b] (CPU).
Tensor sample_tokens(const Tensor& logits, const SamplingParams& params, const std::vector<uint64_t>& seeds,
                     const std::vector<uint64_t>& counters);

// One sequence to generate.
struct GenerationRequest {
  std::vector<int64_t> prompt;       // at least one id in [0, vocab)
  int64_t max_new_tokens = 32;       // >= 0
  std::vector<int64_t> stop_tokens;  // the sequence ends once it produces one (kept as its last token)
  uint64_t seed = 0;                 // its random stream
};

// Generates a batch of sequences on a model; holds the decoding state between calls,
// so a caller can take the tokens one round at a time (streaming). The model must
// outlive the generator and must not run another prefill/step meanwhile.
class TokenGenerator {
 public:
  explicit TokenGenerator(Model& model);

  // Starts a batch: checks every request, then prefills each prompt (see the top of
  // this file). The KV caches hold max(prompt lengths) + max(max_new_tokens) tokens.
  void start(const std::vector<GenerationRequest>& requests, const SamplingParams& sampling);
  // One round: every unfinished sequence draws its next token from the current
  // logits; then, unless all are finished, one decode step feeds the new tokens
  // (finished rows repeat their last token, whose results are unused). out[i] is the
  // token of sequence i, or −1 when it had finished before this round.
  std::vector<int64_t> next();
  // start(), then next() until done(); the generated tokens of each sequence.
  std::vector<std::vector<int64_t>> generate(const std::vector<GenerationRequest>& requests,
                                             const SamplingParams& sampling);

  bool started() const { return !requests_.empty(); }
  bool done() const;            // every sequence finished (true before start())
  bool finished(int64_t i) const;
  int64_t batch() const { return int64_t(requests_.size()); }
  // Tokens generated so far per sequence (prompts not included).
  const std::vector<std::vector<int64_t>>& tokens() const { return tokens_; }
  // The logits the next round draws from: [b, V] in the model's dtype. Rows of
  // finished sequences are not meaningful.
  const Tensor& logits() const { return logits_; }
  const InferenceState& state() const { return state_; }
  const SamplingParams& sampling() const { return sampling_; }

 private:
  void check_started(const char* op) const;

  Model& model_;
  std::vector<GenerationRequest> requests_;
  SamplingParams sampling_;
  InferenceState state_;
  Tensor logits_;
  std::vector<std::vector<int64_t>> tokens_;
  std::vector<char> finished_;
};

}  // namespace mambatron
