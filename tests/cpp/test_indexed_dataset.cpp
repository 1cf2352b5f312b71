// Megatron indexed datasets: byte layout, round trips for every dtype code, errors.
#include <cstring>

#include "io_testing.h"
#include "mambatron/data.h"
#include "testing.h"

namespace mambatron {
namespace {

using testing::expect_value_error;
using testing::le_bytes;
using testing::TempDir;
using testing::write_bytes;

std::vector<std::vector<int64_t>> random_docs(int n, int64_t lo, int64_t hi, int max_len = 40) {
  std::vector<std::vector<int64_t>> docs;
  Tensor lens = testing::uniform({n}, 0, max_len + 1);
  for (int d = 0; d < n; ++d) {
    int64_t len = int64_t(lens.data<double>()[d]);
    Tensor v = testing::uniform({std::max<int64_t>(len, 1)}, double(lo), double(hi));
    std::vector<int64_t> doc;
    for (int64_t i = 0; i < len; ++i) doc.push_back(int64_t(std::floor(v.data<double>()[i])));
    docs.push_back(doc);
  }
  return docs;
}

// The .idx bytes ECOSYSTEM.md describes, built independently of the writer.
std::string idx_bytes(uint8_t code, const std::vector<int32_t>& lengths, const std::vector<int64_t>& doc_index,
                      uint64_t version = 1) {
  std::string s("MMIDIDX\0\0", 9);
  s += le_bytes<uint64_t>(version);
  s += char(code);
  s += le_bytes<uint64_t>(lengths.size());
  s += le_bytes<uint64_t>(doc_index.size());
  for (int32_t l : lengths) s += le_bytes(l);
  int64_t at = 0;
  for (int32_t l : lengths) {
    s += le_bytes(at);
    at += int64_t(l) * int64_t(token_code_size(code));
  }
  for (int64_t d : doc_index) s += le_bytes(d);
  return s;
}

TEST(IndexedDataset, DtypeCodes) {
  EXPECT_EQ(token_code_for_vocab(256), 8);
  EXPECT_EQ(token_code_for_vocab(65499), 8);
  EXPECT_EQ(token_code_for_vocab(65500), 4);
  const size_t sizes[] = {0, 1, 1, 2, 4, 8, 8, 4, 2};
  for (int c = 1; c <= 8; ++c) EXPECT_EQ(token_code_size(c), sizes[c]);
  expect_value_error([] { token_code_size(9); }, {"dtype code 9"});
  expect_value_error([] { token_code_size(0); }, {"dtype code 0"});
}

TEST(IndexedDataset, WriterBytesMatchTheLayout) {
  TempDir dir;
  IndexedDatasetWriter w(dir / "d", 8);
  w.add_document({5, 6, 7});
  w.add_sequence(std::vector<int64_t>{1}.data(), 1);
  w.add_sequence(std::vector<int64_t>{2, 3}.data(), 2);
  w.end_document();
  w.add_document({});
  w.finalize();
  EXPECT_EQ(testing::read_bytes(dir / "d.idx"), idx_bytes(8, {3, 1, 2, 0}, {0, 1, 3, 4}));
  std::string bin;
  for (uint16_t t : {5, 6, 7, 1, 2, 3}) bin += le_bytes(t);
  EXPECT_EQ(testing::read_bytes(dir / "d.bin"), bin);
  EXPECT_FALSE(testing::file_exists(dir / "d.idx.tmp"));
  EXPECT_FALSE(testing::file_exists(dir / "d.bin.tmp"));
}

TEST(IndexedDataset, RoundTripEveryCode) {
  struct Case { int code; int64_t lo, hi; };
  const Case cases[] = {{1, 0, 256}, {2, -128, 128}, {3, -32768, 32768}, {4, -(1 << 30), 1 << 30},
                        {5, -(int64_t(1) << 40), int64_t(1) << 40}, {6, -(int64_t(1) << 50), int64_t(1) << 50}, {7, -(1 << 24), 1 << 24},
                        {8, 0, 65536}};
  for (const Case& c : cases) {
    TempDir dir;
    auto docs = random_docs(23, c.lo, c.hi);
    {
      IndexedDatasetWriter w(dir / "d", c.code);
      for (const auto& d : docs) w.add_document(d);
      w.finalize();
      EXPECT_EQ(w.num_documents(), 23);
    }
    IndexedDataset ds(dir / "d");
    ASSERT_EQ(ds.num_sequences(), 23) << c.code;
    ASSERT_EQ(ds.num_documents(), 23);
    EXPECT_EQ(ds.dtype_code(), c.code);
    int64_t total = 0;
    for (int i = 0; i < 23; ++i) {
      ASSERT_EQ(ds.sequence_length(i), int64_t(docs[size_t(i)].size()));
      EXPECT_EQ(ds.document_start(i), i);
      Tensor t = ds.sequence_int64(i);
      for (int64_t j = 0; j < t.numel(); ++j) ASSERT_EQ(t.data<int64_t>()[j], docs[size_t(i)][size_t(j)]) << c.code;
      if (c.code != 2 && c.code != 3) {
        Tensor v = ds.sequence(i);
        EXPECT_EQ(v.numel(), t.numel());
        auto vals = testing::values(v);
        for (size_t j = 0; j < vals.size(); ++j) ASSERT_EQ(int64_t(vals[j]), docs[size_t(i)][j]);
      }
      total += t.numel();
    }
    EXPECT_EQ(ds.num_tokens(), total);
  }
}

TEST(IndexedDataset, HandBuiltFilesAreReadAsWritten) {
  TempDir dir;
  // int32 tokens, two documents: [sequence 0, 1] and [sequence 2].
  write_bytes(dir / "a.idx", idx_bytes(4, {2, 1, 3}, {0, 2, 3}));
  std::string bin;
  for (int32_t t : {100000, -5, 7, 8, 9, 70000}) bin += le_bytes(t);
  write_bytes(dir / "a.bin", bin);
  IndexedDataset ds(dir / "a");
  EXPECT_EQ(ds.num_documents(), 2);
  EXPECT_EQ(ds.document_start(1), 2);
  Tensor s2 = ds.sequence(2);
  EXPECT_EQ(s2.dtype(), DType::i32);
  EXPECT_EQ(s2.data<int32_t>()[2], 70000);
  Tensor part = ds.sequence(0, 1, 1);
  EXPECT_EQ(part.data<int32_t>()[0], -5);
  expect_value_error([&] { ds.sequence(1, 0, 2); }, {"outside its 1 tokens"});
  expect_value_error([&] { ds.sequence(3); }, {"sequence 3 is out of range"});
  // int8 tokens have no tensor dtype but read as int64.
  write_bytes(dir / "b.idx", idx_bytes(2, {3}, {0, 1}));
  write_bytes(dir / "b.bin", std::string("\x01\xff\x7f", 3));
  IndexedDataset b(dir / "b");
  EXPECT_THROW(b.sequence(0), TypeError);
  Tensor t = b.sequence_int64(0);
  EXPECT_EQ(t.data<int64_t>()[1], -1);
  EXPECT_EQ(t.data<int64_t>()[2], 127);
}

TEST(IndexedDataset, ViewsKeepTheMappingAlive) {
  TempDir dir;
  {
    IndexedDatasetWriter w(dir / "d", 8);
    w.add_document({1, 2, 3});
    w.finalize();
  }
  Tensor v;
  {
    IndexedDataset ds(dir / "d");
    v = ds.sequence(0);
  }
  EXPECT_EQ(v.data<uint16_t>()[2], 3);
}

TEST(IndexedDataset, WriterRejectsTokensThatDoNotFit) {
  TempDir dir;
  IndexedDatasetWriter w(dir / "d", 8);
  expect_value_error([&] { w.add_document({1, 70000}); }, {"token 70000", "uint16"});
  expect_value_error([&] { w.add_document({-1}); }, {"token -1"});
  IndexedDatasetWriter f(dir / "f", 7);
  expect_value_error([&] { f.add_document({(1 << 24) + 1}); }, {"float32"});
  expect_value_error([&] { IndexedDatasetWriter(dir / "x", 9); }, {"dtype code 9"});
}

TEST(IndexedDataset, UnfinishedWriterLeavesNoFiles) {
  TempDir dir;
  {
    IndexedDatasetWriter w(dir / "d", 4);
    w.add_document({1, 2});
  }
  EXPECT_FALSE(testing::file_exists(dir / "d.bin"));
  EXPECT_FALSE(testing::file_exists(dir / "d.bin.tmp"));
  EXPECT_FALSE(testing::file_exists(dir / "d.idx"));
}

TEST(IndexedDataset, CorruptFilesAreValueErrors) {
  TempDir dir;
  std::string p = dir / "c";
  std::string good_bin;
  for (uint16_t t : {1, 2, 3, 4, 5}) good_bin += le_bytes(t);
  auto expect_bad = [&](const std::string& idx, const std::string& bin, std::vector<std::string> words,
                        const std::string& file) {
    write_bytes(p + ".idx", idx);
    write_bytes(p + ".bin", bin);
    words.push_back(p + file);
    expect_value_error([&] { IndexedDataset ds(p); }, words);
  };
  std::string good = idx_bytes(8, {2, 3}, {0, 1, 2});
  write_bytes(p + ".idx", good);
  write_bytes(p + ".bin", good_bin);
  EXPECT_EQ(IndexedDataset(p).num_tokens(), 5);  // the baseline is valid

  std::string bad_magic = good;
  bad_magic[0] = 'X';
  expect_bad(bad_magic, good_bin, {"bad magic"}, ".idx");
  expect_bad(idx_bytes(8, {2, 3}, {0, 1, 2}, 2), good_bin, {"version 2"}, ".idx");
  expect_bad(idx_bytes(8, {2, 3}, {0, 1, 2}).replace(17, 1, 1, char(9)), good_bin, {"dtype code 9"}, ".idx");
  expect_bad(good.substr(0, 20), good_bin, {"truncated"}, ".idx");
  expect_bad(good.substr(0, good.size() - 8), good_bin, {"sequence_count 2", "document_count 3"}, ".idx");
  expect_bad(good + "xxxx", good_bin, {"but the file has"}, ".idx");
  std::string bad_offset = good;
  bad_offset.replace(34 + 8 + 8, 8, le_bytes<int64_t>(2));  // sequence 1 should start at byte 4
  expect_bad(bad_offset, good_bin, {"sequence 1 has byte offset 2", "at 4"}, ".idx");
  expect_bad(idx_bytes(8, {2, -1}, {0, 1, 2}), good_bin, {"negative length"}, ".idx");
  expect_bad(idx_bytes(8, {2, 3}, {1, 1, 2}), good_bin, {"starts at 1"}, ".idx");
  expect_bad(idx_bytes(8, {2, 3}, {0, 2, 1}), good_bin, {"decreases"}, ".idx");
  expect_bad(idx_bytes(8, {2, 3}, {0, 1}), good_bin, {"ends at 1", "sequence_count 2"}, ".idx");
  expect_bad(good, good_bin.substr(0, 8), {"shorter than the 10 bytes"}, ".bin");
  expect_bad(good, good_bin + "zz", {"longer than the 10 bytes"}, ".bin");
}

}  // namespace
}  // namespace mambatron
