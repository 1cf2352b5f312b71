// The data loader: windows across documents, seq_idx, seeded order, resume, splits.
#include <numeric>
#include <set>

#include "io_testing.h"
#include "mambatron/data.h"
#include "testing.h"

namespace mambatron {
namespace {

using testing::expect_value_error;
using testing::TempDir;

using Docs = std::vector<std::vector<std::vector<int64_t>>>;  // document -> sequences -> tokens

// Documents of random lengths (some sequences empty) with tokens that name their place.
Docs make_docs(int n_docs, int max_seqs, int max_len) {
  Docs docs;
  Tensor r = testing::uniform({n_docs * (max_seqs + 1)}, 0, 1);
  const double* u = r.data<double>();
  int k = 0;
  for (int d = 0; d < n_docs; ++d) {
    int n_seq = 1 + int(u[k++] * max_seqs);
    std::vector<std::vector<int64_t>> doc;
    for (int s = 0; s < n_seq; ++s) {
      int len = int(u[k++ % r.numel()] * (max_len + 1));
      std::vector<int64_t> seq;
      for (int j = 0; j < len; ++j) seq.push_back(1 + d * 100 + j);
      doc.push_back(seq);
    }
    docs.push_back(doc);
  }
  return docs;
}

std::shared_ptr<IndexedDataset> write(const std::string& prefix, const Docs& docs, int code = 8) {
  IndexedDatasetWriter w(prefix, code);
  for (const auto& doc : docs) {
    for (const auto& seq : doc) w.add_sequence(seq.data(), seq.size());
    w.end_document();
  }
  w.finalize();
  return std::make_shared<IndexedDataset>(prefix);
}

// The stream the loader should see, built the plain way: tokens and document numbers.
void reference_stream(const Docs& docs, size_t first, size_t last, bool append_eod, int64_t eod,
                      std::vector<int64_t>& tokens, std::vector<int64_t>& doc_of) {
  int64_t n = 0;
  for (size_t d = first; d < last; ++d) {
    size_t before = tokens.size();
    for (const auto& seq : docs[d])
      for (int64_t t : seq) tokens.push_back(t);
    if (append_eod && !docs[d].empty()) tokens.push_back(eod);
    if (tokens.size() == before) continue;  // no tokens: no document in the stream
    doc_of.resize(tokens.size(), n++);
  }
}

void expect_samples_match(DataLoader& loader, const std::vector<int64_t>& stream,
                          const std::vector<int64_t>& doc_of) {
  const int64_t L = loader.options().seq_len;
  ASSERT_EQ(loader.num_stream_tokens(), int64_t(stream.size()));
  ASSERT_EQ(loader.num_samples(), (int64_t(stream.size()) - 1) / L);
  std::vector<int64_t> tok(size_t(L + 1));
  std::vector<int32_t> sid(size_t(L + 1));
  for (int64_t k = 0; k < loader.num_samples(); ++k) {
    loader.sample(k, tok.data(), sid.data());
    for (int64_t j = 0; j <= L; ++j) {
      size_t at = size_t(k * L + j);
      ASSERT_EQ(tok[size_t(j)], stream[at]) << "sample " << k << " position " << j;
      ASSERT_EQ(sid[size_t(j)], doc_of[at] - doc_of[size_t(k * L)]) << "sample " << k << " position " << j;
    }
  }
}

TEST(DataLoader, WindowsCrossDocumentsWithSeqIdx) {
  TempDir dir;
  Docs docs = make_docs(30, 3, 9);
  docs.push_back({});        // a document without sequences
  docs.push_back({{}, {}});  // one of empty sequences
  docs.push_back({{5, 6}});
  auto ds = write(dir / "d", docs);
  for (int64_t L : {1, 4, 13}) {
    for (bool eod : {true, false}) {
      DataLoaderOptions o;
      o.seq_len = L;
      o.append_eod = eod;
      o.eod_id = 0;
      DataLoader loader(ds, o);
      std::vector<int64_t> stream, doc_of;
      reference_stream(docs, 0, docs.size(), eod, 0, stream, doc_of);
      expect_samples_match(loader, stream, doc_of);
    }
  }
}

TEST(DataLoader, BatchesFollowTheSeededOrderAndCoverAnEpoch) {
  TempDir dir;
  auto ds = write(dir / "d", make_docs(40, 2, 12));
  DataLoaderOptions o;
  o.seq_len = 5;
  o.seed = 7;
  DataLoader a(ds, o), b(ds, o);
  const int64_t N = a.num_samples();
  ASSERT_GT(N, 20);
  std::set<int64_t> seen;
  std::vector<int64_t> order0;
  for (int64_t i = 0; i < N; ++i) order0.push_back(a.sample_at(0, uint64_t(i)));
  seen.insert(order0.begin(), order0.end());
  EXPECT_EQ(int64_t(seen.size()), N);  // a permutation
  std::vector<int64_t> identity(static_cast<size_t>(N));
  std::iota(identity.begin(), identity.end(), 0);
  EXPECT_NE(order0, identity);
  std::vector<int64_t> order1;
  for (int64_t i = 0; i < N; ++i) order1.push_back(a.sample_at(1, uint64_t(i)));
  EXPECT_NE(order0, order1);  // a new permutation each epoch

  o.seed = 8;
  DataLoader c(ds, o);
  std::vector<int64_t> other;
  for (int64_t i = 0; i < N; ++i) other.push_back(c.sample_at(0, uint64_t(i)));
  EXPECT_NE(order0, other);

  // next_batch returns those samples in that order, across the epoch end.
  std::vector<int64_t> tok(size_t(o.seq_len + 1));
  std::vector<int32_t> sid(size_t(o.seq_len + 1));
  int64_t batch = 3, taken = 0;
  while (taken < N + 4) {
    auto [t, s] = b.next_batch(batch);
    ASSERT_EQ(t.dtype(), DType::i32);
    ASSERT_EQ(t.shape(), (Shape{batch, o.seq_len + 1}));
    ASSERT_EQ(s.shape(), (Shape{batch, o.seq_len + 1}));
    for (int64_t r = 0; r < batch; ++r, ++taken) {
      int64_t k = taken < N ? order0[size_t(taken)] : order1[size_t(taken - N)];
      b.sample(k, tok.data(), sid.data());
      for (int64_t j = 0; j <= o.seq_len; ++j) {
        ASSERT_EQ(t.data<int32_t>()[r * (o.seq_len + 1) + j], tok[size_t(j)]);
        ASSERT_EQ(s.data<int32_t>()[r * (o.seq_len + 1) + j], sid[size_t(j)]);
      }
    }
  }
  EXPECT_EQ(b.state().epoch, uint64_t(taken / N));
  EXPECT_EQ(b.state().index, uint64_t(taken % N));
}

TEST(DataLoader, OrderIsFixedBySeedAlone) {
  // Pinned values: the order must be the same on every machine and build.
  TempDir dir;
  std::vector<int64_t> tokens(101);
  std::iota(tokens.begin(), tokens.end(), 1);
  IndexedDatasetWriter w(dir / "d", 8);
  w.add_document(tokens);
  w.finalize();
  DataLoaderOptions o;
  o.seq_len = 10;
  o.seed = 1234;
  o.append_eod = false;
  DataLoader loader(std::make_shared<IndexedDataset>(dir / "d"), o);
  ASSERT_EQ(loader.num_samples(), 10);
  std::vector<int64_t> order;
  for (uint64_t i = 0; i < 10; ++i) order.push_back(loader.sample_at(0, i));
  EXPECT_EQ(order, (std::vector<int64_t>{9, 8, 5, 3, 7, 1, 2, 6, 0, 4}));
}

TEST(DataLoader, StateResumesExactly) {
  TempDir dir;
  auto ds = write(dir / "d", make_docs(25, 2, 10));
  DataLoaderOptions o;
  o.seq_len = 6;
  o.seed = 99;
  o.int64_tokens = true;
  DataLoader a(ds, o);
  for (int i = 0; i < 7; ++i) a.next_batch(4);
  DataLoaderState saved = a.state();
  std::vector<Tensor> want;
  for (int i = 0; i < 9; ++i) want.push_back(a.next_batch(4).first);
  DataLoader b(ds, o);
  b.set_state(saved);
  for (int i = 0; i < 9; ++i) {
    Tensor got = b.next_batch(4).first;
    ASSERT_EQ(got.dtype(), DType::i64);
    EXPECT_EQ(testing::values(got), testing::values(want[size_t(i)])) << "batch " << i;
  }
  expect_value_error([&] { b.set_state({0, uint64_t(b.num_samples())}); }, {"out of range"});
}

TEST(DataLoader, EvalSplitHoldsOutTheLastDocuments) {
  TempDir dir;
  Docs docs = make_docs(20, 1, 15);
  for (auto& d : docs) d[0].push_back(7);  // no empty documents
  auto ds = write(dir / "d", docs);
  DataLoaderOptions o;
  o.seq_len = 3;
  o.shuffle = false;
  o.eval_fraction = 0.2;
  o.split = DataSplit::train;
  DataLoader train(ds, o);
  o.split = DataSplit::eval;
  DataLoader eval(ds, o);
  EXPECT_EQ(train.num_documents(), 16);
  EXPECT_EQ(eval.num_documents(), 4);
  std::vector<int64_t> stream, doc_of;
  reference_stream(docs, 16, 20, true, 0, stream, doc_of);
  expect_samples_match(eval, stream, doc_of);
  stream.clear();
  doc_of.clear();
  reference_stream(docs, 0, 16, true, 0, stream, doc_of);
  expect_samples_match(train, stream, doc_of);
  EXPECT_EQ(eval.sample_at(3, 2), 2);  // unshuffled
}

TEST(DataLoader, ArgumentErrors) {
  TempDir dir;
  auto ds = write(dir / "d", {{{1, 2, 3}}});
  DataLoaderOptions o;
  o.seq_len = 4;  // 3 tokens + EOD = 4 < 5
  expect_value_error([&] { DataLoader(ds, o); }, {dir / "d", "fewer than one sample", "5"});
  o.seq_len = 3;
  DataLoader ok(ds, o);
  EXPECT_EQ(ok.num_samples(), 1);
  expect_value_error([&] { ok.next_batch(0); }, {"batch_size 0"});
  o.split = DataSplit::eval;
  expect_value_error([&] { DataLoader(ds, o); }, {"eval_fraction"});
  o.split = DataSplit::all;
  o.seq_len = 0;
  expect_value_error([&] { DataLoader(ds, o); }, {"seq_len 0"});
  // int32 batches refuse tokens that do not fit.
  auto big = write(dir / "big", {{{int64_t(1) << 33, 1, 2, 3}}}, 5);
  o.seq_len = 2;
  DataLoader l(big, o);
  expect_value_error([&] { l.next_batch(2); }, {"does not fit int32"});
  o.int64_tokens = true;
  DataLoader l64(big, o);
  auto [t, s] = l64.next_batch(2);
  EXPECT_EQ(t.numel(), 6);
}

}  // namespace
}  // namespace mambatron
