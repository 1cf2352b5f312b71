// The training-data loader: documents packed into samples, seeded epoch permutations.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "mambatron/data.h"
#include "mambatron/error.h"

namespace mambatron {

namespace {

// splitmix64: a tiny generator whose output is fixed by its 64-bit state alone.
uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Uniform in [0, bound): rejects the low values that would bias r % bound.
uint64_t bounded(uint64_t& state, uint64_t bound) {
  uint64_t threshold = (0 - bound) % bound;
  for (;;) {
    uint64_t r = splitmix64(state);
    if (r >= threshold) return r % bound;
  }
}

const char* split_name(DataSplit s) {
  switch (s) {
    case DataSplit::all: return "all";
    case DataSplit::train: return "train";
    case DataSplit::eval: return "eval";
  }
  return "?";
}

}  // namespace

DataLoader::DataLoader(std::shared_ptr<const IndexedDataset> dataset, const DataLoaderOptions& options)
    : ds_(std::move(dataset)), opt_(options) {
  MT_CHECK(ds_, ValueError, "DataLoader: no dataset given");
  const std::string& name = ds_->prefix();
  MT_CHECK(opt_.seq_len >= 1, ValueError, "DataLoader: ", name, ": seq_len ", opt_.seq_len, " must be at least 1");
  MT_CHECK(opt_.eval_fraction >= 0 && opt_.eval_fraction < 1, ValueError, "DataLoader: ", name, ": eval_fraction ",
           opt_.eval_fraction, " must be in [0, 1)");
  MT_CHECK(opt_.split != DataSplit::eval || opt_.eval_fraction > 0, ValueError, "DataLoader: ", name,
           ": the eval split needs eval_fraction > 0");
  MT_CHECK(opt_.eod_id >= 0 && (opt_.int64_tokens || opt_.eod_id <= std::numeric_limits<int32_t>::max()),
           ValueError, "DataLoader: ", name, ": eod_id ", opt_.eod_id, " is out of range for the token dtype");

  int64_t n_docs = ds_->num_documents();
  int64_t n_eval = opt_.eval_fraction > 0 ? int64_t(std::ceil(opt_.eval_fraction * double(n_docs))) : 0;
  n_eval = std::min(n_eval, n_docs);
  int64_t first = 0, last = n_docs;
  if (opt_.split == DataSplit::train) last = n_docs - n_eval;
  if (opt_.split == DataSplit::eval) first = n_docs - n_eval;

  int64_t pos = 0;
  for (int64_t d = first; d < last; ++d) {
    int64_t s0 = ds_->document_start(d), s1 = ds_->document_start(d + 1);
    int64_t doc_tokens = 0;
    for (int64_t s = s0; s < s1; ++s) doc_tokens += ds_->sequence_length(s);
    // A document without tokens (nor EOD, when there are no sequences to end) is no
    // document of the stream: it must not count in seq_idx.
    if (doc_tokens == 0 && (s0 == s1 || !opt_.append_eod)) continue;
    docs_.push_back(d);
    for (int64_t s = s0; s < s1; ++s) {
      bool ends = s + 1 == s1;
      unit_seq_.push_back(s);
      unit_start_.push_back(pos);
      unit_ends_doc_.push_back(ends);
      pos += ds_->sequence_length(s) + (ends && opt_.append_eod ? 1 : 0);
    }
  }
  unit_start_.push_back(pos);
  stream_tokens_ = pos;
  n_samples_ = pos >= 1 ? (pos - 1) / opt_.seq_len : 0;
  MT_CHECK(n_samples_ >= 1, ValueError, "DataLoader: ", name, ": the ", split_name(opt_.split), " split holds ",
           pos, " tokens (", docs_.size(), " documents", opt_.append_eod ? ", with EOD" : "",
           "), fewer than one sample of seq_len + 1 = ", opt_.seq_len + 1);
}

void DataLoader::sample(int64_t k, int64_t* tokens, int32_t* seq_idx) const {
  MT_CHECK(k >= 0 && k < n_samples_, ValueError, "DataLoader: sample ", k, " is out of range [0, ", n_samples_, ")");
  const int64_t n = opt_.seq_len + 1;
  const int64_t start = k * opt_.seq_len;
  size_t u = size_t(std::upper_bound(unit_start_.begin(), unit_start_.end() - 1, start) - unit_start_.begin()) - 1;
  int64_t pos = start - unit_start_[u];  // within unit u
  int64_t written = 0;
  int32_t doc = 0;
  while (written < n) {
    int64_t seq = unit_seq_[u];
    int64_t len = ds_->sequence_length(seq);
    bool eod = unit_ends_doc_[u] && opt_.append_eod;
    if (pos < len) {
      int64_t m = std::min(len - pos, n - written);
      ds_->read(seq, pos, m, tokens + written);
      std::fill(seq_idx + written, seq_idx + written + m, doc);
      written += m;
      pos += m;
    }
    if (written < n && eod && pos == len) {
      tokens[written] = opt_.eod_id;
      seq_idx[written] = doc;
      ++written;
      ++pos;
    }
    if (pos >= len + (eod ? 1 : 0)) {  // unit used up: the next one may start a document
      if (unit_ends_doc_[u]) ++doc;
      ++u;
      pos = 0;
    }
  }
}

const std::vector<int64_t>& DataLoader::permutation(uint64_t epoch) {
  if (perm_epoch_ == epoch) return perm_;
  perm_.resize(size_t(n_samples_));
  std::iota(perm_.begin(), perm_.end(), int64_t(0));
  uint64_t state = opt_.seed ^ (0x9E3779B97F4A7C15ull * (epoch + 1));
  splitmix64(state);  // scrambles nearby (seed, epoch) pairs apart
  for (int64_t i = n_samples_ - 1; i > 0; --i) std::swap(perm_[size_t(i)], perm_[bounded(state, uint64_t(i) + 1)]);
  perm_epoch_ = epoch;
  return perm_;
}

int64_t DataLoader::sample_at(uint64_t epoch, uint64_t index) {
  MT_CHECK(index < uint64_t(n_samples_), ValueError, "DataLoader: index ", index, " is out of range [0, ",
           n_samples_, ") of an epoch");
  if (!opt_.shuffle) return int64_t(index);
  return permutation(epoch)[size_t(index)];
}

std::pair<Tensor, Tensor> DataLoader::next_batch(int64_t batch_size) {
  MT_CHECK(batch_size >= 1, ValueError, "DataLoader::next_batch: batch_size ", batch_size, " must be at least 1");
  const int64_t n = opt_.seq_len + 1;
  Tensor tokens = Tensor::empty({batch_size, n}, opt_.int64_tokens ? DType::i64 : DType::i32);
  Tensor seq_idx = Tensor::empty({batch_size, n}, DType::i32);
  std::vector<int64_t> row(static_cast<size_t>(n));
  for (int64_t b = 0; b < batch_size; ++b) {
    int64_t k = sample_at(state_.epoch, state_.index);
    int64_t* dst64 = opt_.int64_tokens ? tokens.data<int64_t>() + b * n : row.data();
    sample(k, dst64, seq_idx.data<int32_t>() + b * n);
    if (!opt_.int64_tokens) {
      int32_t* dst = tokens.data<int32_t>() + b * n;
      for (int64_t j = 0; j < n; ++j) {
        MT_CHECK(row[size_t(j)] >= 0 && row[size_t(j)] <= std::numeric_limits<int32_t>::max(), ValueError,
                 "DataLoader: ", ds_->prefix(), ": token ", row[size_t(j)], " of sample ", k,
                 " does not fit int32; ask for int64 tokens");
        dst[j] = int32_t(row[size_t(j)]);
      }
    }
    if (++state_.index == uint64_t(n_samples_)) {
      state_.index = 0;
      ++state_.epoch;
    }
  }
  return {tokens, seq_idx};
}

void DataLoader::set_state(const DataLoaderState& s) {
  MT_CHECK(s.index < uint64_t(n_samples_), ValueError, "DataLoader::set_state: index ", s.index,
           " is out of range [0, ", n_samples_, ") of an epoch (was the state saved for another dataset or seq_len?)");
  state_ = s;
}

}  // namespace mambatron
