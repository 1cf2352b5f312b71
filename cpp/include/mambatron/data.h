// Training data: Megatron indexed datasets (PREFIX.bin + PREFIX.idx, byte layout in
// ECOSYSTEM.md) written and memory-mapped, and the loader that packs documents into
// samples of seq_len + 1 tokens in a seeded, resumable order.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "mambatron/tensor.h"

namespace mambatron {

// Megatron's dtype codes for the token ids.
enum class TokenCode : uint8_t { u8 = 1, i8 = 2, i16 = 3, i32 = 4, i64 = 5, f64 = 6, f32 = 7, u16 = 8 };
size_t token_code_size(int code);        // ValueError for codes outside 1..8
const char* token_code_name(int code);   // "uint16", ...
// Megatron's choice: uint16 when vocab_size < 65500, else int32.
int token_code_for_vocab(int64_t vocab_size);

// Appends documents to PREFIX.bin.tmp; finalize() writes PREFIX.idx.tmp and renames
// both, so a reader never sees a half-written dataset. Destroyed before finalize(),
// it removes its temporary files.
class IndexedDatasetWriter {
 public:
  IndexedDatasetWriter(const std::string& prefix, int dtype_code);
  ~IndexedDatasetWriter();
  IndexedDatasetWriter(const IndexedDatasetWriter&) = delete;
  IndexedDatasetWriter& operator=(const IndexedDatasetWriter&) = delete;

  // One sequence (Megatron's "item"); ValueError when a token does not fit the dtype.
  void add_sequence(const int64_t* tokens, size_t n);
  // Closes the current document (its sequences since the last end_document).
  void end_document();
  // add_sequence + end_document: the common case of one sequence per document.
  void add_document(const int64_t* tokens, size_t n);
  void add_document(const std::vector<int64_t>& tokens) { add_document(tokens.data(), tokens.size()); }
  // Ends an open document (sequences added since the last end_document) and commits.
  void finalize();
  // Gives up: removes the temporary files; PREFIX.bin/.idx stay as they were.
  void abort();

  int dtype_code() const { return code_; }
  int64_t num_sequences() const { return int64_t(lengths_.size()); }
  int64_t num_documents() const { return int64_t(doc_index_.size()) - 1; }
  int64_t num_tokens() const { return tokens_; }
  const std::string& prefix() const { return prefix_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string prefix_;
  int code_;
  std::vector<int32_t> lengths_;
  std::vector<int64_t> doc_index_{0};
  int64_t tokens_ = 0;
  std::vector<uint8_t> scratch_;
};

// A read-only, memory-mapped view of PREFIX.idx and PREFIX.bin, fully validated when
// opened (every inconsistency is a ValueError naming the file).
class IndexedDataset {
 public:
  explicit IndexedDataset(const std::string& prefix);
  ~IndexedDataset();

  const std::string& prefix() const { return prefix_; }
  int dtype_code() const { return code_; }
  size_t itemsize() const { return itemsize_; }
  int64_t num_sequences() const { return n_seq_; }
  int64_t num_documents() const { return n_doc_index_ - 1; }
  int64_t num_tokens() const { return n_tokens_; }
  int64_t sequence_length(int64_t i) const;
  // Document d is sequences [document_start(d), document_start(d + 1)).
  int64_t document_start(int64_t d) const;

  // Tokens [offset, offset + length) of sequence i (length -1: to its end) viewing the
  // mapped .bin without a copy, in the file's dtype: codes 1 4 5 6 7 8 (u8 i32 i64 f64
  // f32 u16); int8 and int16 files have no tensor dtype (use sequence_int64). The
  // mapping is read-only: the view must not be written.
  Tensor sequence(int64_t i, int64_t offset = 0, int64_t length = -1) const;
  Tensor sequence_int64(int64_t i, int64_t offset = 0, int64_t length = -1) const;
  // The first byte of sequence i in the read-only mapping of .bin (for views in other
  // libraries; writing through it faults).
  const uint8_t* sequence_bytes(int64_t i) const;
  // The same tokens converted to int64 into `out` (length values).
  void read(int64_t i, int64_t offset, int64_t length, int64_t* out) const;

 private:
  void check_range(int64_t i, int64_t offset, int64_t& length, const char* what) const;
  std::string prefix_;
  int code_ = 0;
  size_t itemsize_ = 0;
  int64_t n_seq_ = 0, n_doc_index_ = 0, n_tokens_ = 0;
  std::shared_ptr<void> idx_map_, bin_map_;
  const int32_t* lengths_ = nullptr;
  const int64_t* offsets_ = nullptr;
  const int64_t* doc_index_ = nullptr;
  const uint8_t* bin_ = nullptr;
};

// Which documents a loader draws from. With eval_fraction f > 0 the last
// ceil(f · documents) documents are held out for evaluation and the rest train.
enum class DataSplit { all, train, eval };

struct DataLoaderOptions {
  int64_t seq_len = 1024;       // a sample has seq_len + 1 tokens (inputs and shifted targets)
  uint64_t seed = 1234;
  bool shuffle = true;          // false: samples in stream order (e.g. for evaluation)
  bool append_eod = true;       // false when the documents already end with eod_id
  int64_t eod_id = 0;
  DataSplit split = DataSplit::all;
  double eval_fraction = 0.0;
  bool int64_tokens = false;    // tokens as int64 instead of int32
};

// Where a loader stands: the next sample is permutation(epoch)[index].
struct DataLoaderState {
  uint64_t epoch = 0;
  uint64_t index = 0;
};

// The loader. The selected documents, in order, form one token stream, each followed
// by eod_id when append_eod. Sample k is stream[k·seq_len, k·seq_len + seq_len + 1)
// (consecutive samples share one token, so every token is a target once); a trailing
// partial sample is dropped. Epoch e visits the samples in a Fisher–Yates permutation
// drawn from splitmix64 seeded with (seed, e), bounded without modulo bias; it depends
// on nothing but the seed, the epoch and the sample count, so it is the same on every
// machine. seq_idx numbers the documents within a sample from 0 (an EOD token belongs
// to the document it ends), for document-aware training.
class DataLoader {
 public:
  DataLoader(std::shared_ptr<const IndexedDataset> dataset, const DataLoaderOptions& options);

  int64_t num_samples() const { return n_samples_; }   // per epoch
  int64_t num_documents() const { return int64_t(docs_.size()); }  // in the split, holding tokens
  int64_t num_stream_tokens() const { return stream_tokens_; }
  const DataLoaderOptions& options() const { return opt_; }

  // Sample k (in stream order, not shuffled): tokens and seq_idx, seq_len + 1 each.
  void sample(int64_t k, int64_t* tokens, int32_t* seq_idx) const;
  // The next batch_size samples of the order, across epoch ends: tokens [b, seq_len + 1]
  // (int32 or int64) and seq_idx [b, seq_len + 1] int32, on the CPU.
  std::pair<Tensor, Tensor> next_batch(int64_t batch_size);
  // The stream-order sample id at position `index` of epoch `epoch`.
  int64_t sample_at(uint64_t epoch, uint64_t index);

  DataLoaderState state() const { return state_; }
  void set_state(const DataLoaderState& s);

 private:
  const std::vector<int64_t>& permutation(uint64_t epoch);
  std::shared_ptr<const IndexedDataset> ds_;
  DataLoaderOptions opt_;
  std::vector<int64_t> docs_;        // selected document ids
  std::vector<int64_t> unit_seq_;    // per unit (sequence of a selected document): its sequence id
  std::vector<int64_t> unit_start_;  // stream offset of each unit, plus the total at the end
  std::vector<uint8_t> unit_ends_doc_;  // 1 where a unit is its document's last
  int64_t stream_tokens_ = 0, n_samples_ = 0;
  DataLoaderState state_;
  uint64_t perm_epoch_ = ~uint64_t(0);
  std::vector<int64_t> perm_;
};

}  // namespace mambatron
