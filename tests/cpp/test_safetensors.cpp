// safetensors files, sharded checkpoints and the JSON reader under them.
#include <cstring>

#include "io/json.h"
#include "io_testing.h"
#include "mambatron/checkpoint.h"
#include "testing.h"

namespace mambatron {
namespace {

using testing::expect_value_error;
using testing::le_bytes;
using testing::TempDir;
using testing::write_bytes;

// Random contents of any dtype: random bits, so every byte is checked.
Tensor random_tensor(const Shape& shape, DType dt) {
  Tensor t = Tensor::empty(shape, dt);
  Tensor bits = testing::uniform({int64_t(t.nbytes())}, 0, 256, DType::f64);
  auto* p = static_cast<uint8_t*>(t.numel() ? t.data_ptr() : nullptr);
  const double* b = bits.data<double>();
  for (size_t i = 0; i < t.nbytes(); ++i) p[i] = uint8_t(b[i]);
  return t;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  if (a.shape() != b.shape() || a.dtype() != b.dtype()) return false;
  Tensor ca = a.contiguous(), cb = b.contiguous();
  return a.nbytes() == 0 || std::memcmp(ca.data_ptr(), cb.data_ptr(), a.nbytes()) == 0;
}

TensorMap every_dtype() {
  TensorMap m;
  const DType all[] = {DType::f32, DType::f64, DType::bf16, DType::f16,
                       DType::i32, DType::i64, DType::u16,  DType::u8};
  int k = 0;
  for (DType dt : all) {
    m[std::string("w.") + dtype_name(dt)] = random_tensor({3, 5 + k}, dt);
    m[std::string("odd.") + dtype_name(dt)] = random_tensor({7}, dt);  // odd byte counts between them
    ++k;
  }
  m["scalar"] = random_tensor({}, DType::f32);
  m["empty"] = random_tensor({0, 4}, DType::bf16);
  return m;
}

void expect_same(const TensorMap& want, const TensorMap& got) {
  ASSERT_EQ(want.size(), got.size());
  for (const auto& kv : want) {
    ASSERT_TRUE(got.count(kv.first)) << kv.first;
    EXPECT_TRUE(same_bytes(kv.second, got.at(kv.first))) << kv.first << " " << got.at(kv.first).str();
  }
}

TEST(Safetensors, RoundTripEveryDtypeCopyAndMmap) {
  TempDir dir;
  TensorMap m = every_dtype();
  StringMap meta{{"format", "pt"}, {"note", "quote \" slash \\ newline \n tab \t \x01 ünïcode"}};
  save_safetensors(dir / "a.safetensors", m, meta);
  EXPECT_FALSE(testing::file_exists(dir / "a.safetensors.tmp"));
  for (LoadMode mode : {LoadMode::copy, LoadMode::mmap}) {
    SafetensorsContents c = load_safetensors(dir / "a.safetensors", mode);
    expect_same(m, c.tensors);
    EXPECT_EQ(c.metadata, meta);
  }
}

TEST(Safetensors, MmapViewsAreAlignedAndPrivate) {
  TempDir dir;
  TensorMap m = every_dtype();
  save_safetensors(dir / "a.safetensors", m);
  std::string before = testing::read_bytes(dir / "a.safetensors");
  SafetensorsContents c = load_safetensors(dir / "a.safetensors", LoadMode::mmap);
  for (const auto& kv : c.tensors) {
    if (kv.second.numel() == 0) continue;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(kv.second.data_ptr()) % kv.second.itemsize(), 0u) << kv.first;
    EXPECT_EQ(kv.second.storage()->nbytes(), 0u) << kv.first << " should view the mapping, not own a copy";
  }
  c.tensors["w.f32"].fill_(1.5);  // copy-on-write: the file keeps its bytes
  EXPECT_EQ(testing::read_bytes(dir / "a.safetensors"), before);
  EXPECT_EQ(c.tensors["w.f32"].data<float>()[0], 1.5f);
}

TEST(Safetensors, NonContiguousInputIsWrittenRowMajor) {
  TempDir dir;
  Tensor t = testing::randn({4, 6}, DType::f32);
  save_safetensors(dir / "t.safetensors", {{"t", t.transpose(0, 1)}});
  Tensor back = load_safetensors(dir / "t.safetensors").tensors.at("t");
  EXPECT_EQ(back.shape(), (Shape{6, 4}));
  EXPECT_TRUE(same_bytes(back, t.transpose(0, 1).contiguous()));
}

TEST(Safetensors, ListReadsTheHeader) {
  TempDir dir;
  TensorMap m = every_dtype();
  save_safetensors(dir / "a.safetensors", m, {{"k", "v"}});
  StringMap meta;
  auto entries = list_safetensors(dir / "a.safetensors", &meta);
  ASSERT_EQ(entries.size(), m.size());
  EXPECT_EQ(meta, (StringMap{{"k", "v"}}));
  auto it = m.begin();
  for (const auto& e : entries) {  // name order
    EXPECT_EQ(e.name, it->first);
    EXPECT_EQ(e.shape, it->second.shape());
    EXPECT_EQ(e.dtype, safetensors_dtype(it->second.dtype()));
    EXPECT_EQ(e.end - e.begin, it->second.nbytes());
    EXPECT_EQ(e.file, dir / "a.safetensors");
    ++it;
  }
}

TEST(Safetensors, HeaderIsPaddedAndParseable) {
  TempDir dir;
  save_safetensors(dir / "a.safetensors", {{"x", random_tensor({3}, DType::u8)}});
  std::string bytes = testing::read_bytes(dir / "a.safetensors");
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + n + 3);
  json::Value v = json::parse(bytes.substr(8, n), "header");
  ASSERT_TRUE(v.find("x"));
  EXPECT_EQ(v.find("x")->find("dtype")->string, "U8");
}

TEST(Safetensors, ShardedRoundTripAndSingleFileSwitch) {
  TempDir dir;
  TensorMap m;
  for (int i = 0; i < 5; ++i) m["layer." + std::to_string(i)] = random_tensor({100}, DType::f32);  // 400 B each
  auto written = save_safetensors_sharded(dir.path(), m, {{"format", "pt"}}, 1000);
  ASSERT_EQ(written.size(), 4u);  // 2 + 2 + 1 tensors, then the index
  EXPECT_EQ(written[0], dir / "model-00001-of-00003.safetensors");
  EXPECT_EQ(written[2], dir / "model-00003-of-00003.safetensors");
  EXPECT_EQ(written[3], dir / "model.safetensors.index.json");
  json::Value index = json::parse(testing::read_bytes(written[3]), "index");
  EXPECT_EQ(index.find("metadata")->find("total_size")->integer, 2000);
  EXPECT_EQ(index.find("weight_map")->find("layer.4")->string, "model-00003-of-00003.safetensors");
  for (const std::string& path : {dir.path(), written[3]}) {
    SafetensorsContents c = load_safetensors(path);
    expect_same(m, c.tensors);
    EXPECT_EQ(c.metadata.at("format"), "pt");
    EXPECT_EQ(list_safetensors(path).size(), 5u);
  }
  // A later save that fits one file replaces the index.
  save_safetensors_sharded(dir.path(), m, {}, 1 << 20);
  EXPECT_FALSE(testing::file_exists(dir / "model.safetensors.index.json"));
  expect_same(m, load_safetensors(dir.path()).tensors);
  // A tensor larger than the limit gets a shard of its own.
  written = save_safetensors_sharded(dir.path(), m, {}, 100, "optimizer");
  EXPECT_EQ(written.size(), 6u);
  expect_same(m, load_safetensors(dir.path(), LoadMode::mmap, "optimizer").tensors);
}

TEST(Safetensors, ShardedIndexMismatchesAreErrors) {
  TempDir dir;
  TensorMap m{{"a", random_tensor({8}, DType::f32)}, {"b", random_tensor({8}, DType::f32)}};
  save_safetensors_sharded(dir.path(), m, {}, 40);
  std::string index = dir / "model.safetensors.index.json";
  write_bytes(index, R"({"metadata": {}, "weight_map": {"a": "model-00001-of-00002.safetensors",
      "b": "model-00001-of-00002.safetensors"}})");
  expect_value_error([&] { load_safetensors(dir.path()); }, {"'b'", "missing"});
  write_bytes(index, R"({"weight_map": {"a": "model-00002-of-00002.safetensors",
      "b": "model-00001-of-00002.safetensors"}})");
  expect_value_error([&] { load_safetensors(index); }, {"'a'", "weight_map puts it in"});
  write_bytes(index, R"({"weight_map": {"b": "model-00001-of-00002.safetensors"}})");
  expect_value_error([&] { list_safetensors(index); }, {"'a'", "not in the weight_map"});
  write_bytes(index, R"({"weight_map": {"a": "../x.safetensors"}})");
  expect_value_error([&] { list_safetensors(index); }, {"index's folder"});
  write_bytes(index, R"({"weight_map": {"a": "model-00009-of-00009.safetensors"}})");
  EXPECT_THROW(load_safetensors(index), Error);  // a missing shard: the OS error, naming the file
}

TEST(Safetensors, EmptyFolderIsAnError) {
  TempDir dir;
  expect_value_error([&] { load_safetensors(dir.path()); }, {dir.path(), "model.safetensors"});
}

// A file from a header text and a data block, with the length field given or computed.
std::string raw_file(const std::string& header, const std::string& data, int64_t len = -1) {
  return le_bytes<uint64_t>(len < 0 ? header.size() : uint64_t(len)) + header + data;
}

TEST(Safetensors, MalformedFilesAreValueErrors) {
  TempDir dir;
  std::string p = dir / "bad.safetensors";
  auto expect_bad = [&](const std::string& bytes, std::vector<std::string> words) {
    write_bytes(p, bytes);
    words.push_back(p);
    expect_value_error([&] { load_safetensors(p); }, words);
    expect_value_error([&] { list_safetensors(p); }, words);
  };
  const std::string ok = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  write_bytes(p, raw_file(ok, std::string(8, 'x')));
  EXPECT_EQ(load_safetensors(p).tensors.at("a").numel(), 2);  // the baseline is valid

  expect_bad("abc", {"truncated"});
  expect_bad(raw_file(ok, std::string(8, 'x'), 1000), {"header length 1000", "past the end"});
  expect_bad(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})", std::string(8, 'x')),
             {"invalid JSON"});
  expect_bad(raw_file("[1]", ""), {"start with '{'"});
  expect_bad(raw_file(R"({"a":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})", std::string(8, 'x')),
             {"unknown dtype", "F33"});
  expect_bad(raw_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", std::string(8, 'x')),
             {"'a'", "shape [3]", "12 bytes"});
  expect_bad(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                      R"("a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                      std::string(16, 'x')),
             {"duplicate key", "\"a\""});
  expect_bad(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                      R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                      std::string(12, 'x')),
             {"'b'", "overlap", "'a'"});
  expect_bad(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                      R"("b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})",
                      std::string(20, 'x')),
             {"'b'", "hole", "ends at byte 8"});
  expect_bad(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", std::string(12, 'x')),
             {"'a'", "hole"});
  expect_bad(raw_file(ok, std::string(6, 'x')), {"'a'", "past the end of the data block"});
  expect_bad(raw_file(ok, std::string(10, 'x')), {"end at byte 8", "10 bytes of data"});
  expect_bad(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", std::string(8, 'x')),
             {"end before they begin"});
  expect_bad(raw_file(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", std::string(8, 'x')),
             {"non-negative"});
  expect_bad(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})", std::string(8, 'x')),
             {"unexpected key"});
  expect_bad(raw_file(R"({"a":{"dtype":"F64","shape":[4611686018427387904, 4],"data_offsets":[0,8]}})",
                      std::string(8, 'x')),
             {"'a'", "overflowing size"});
  expect_bad(raw_file(R"({"__metadata__":{"k":1},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                      std::string(8, 'x')),
             {"__metadata__", "expected a string"});
}

TEST(Safetensors, HugeHeaderLengthIsRejectedBeforeReading) {
  TempDir dir;
  std::string p = dir / "huge.safetensors";
  write_bytes(p, le_bytes<uint64_t>(uint64_t(200) << 20) + "{");
  ASSERT_EQ(::truncate(p.c_str(), (off_t(200) << 20) + 16), 0);  // sparse: no disk used
  expect_value_error([&] { list_safetensors(p); }, {p, "exceeds the limit"});
}

TEST(Safetensors, DtypesWithoutAMambatronTypeListButDoNotLoad) {
  TempDir dir;
  std::string p = dir / "i8.safetensors";
  write_bytes(p, raw_file(R"({"a":{"dtype":"I8","shape":[3],"data_offsets":[0,3]}})", "abc"));
  auto entries = list_safetensors(p);
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0].dtype, "I8");
  expect_value_error([&] { load_safetensors(p); }, {"I8", "no mambatron dtype"});
}

TEST(Safetensors, UnalignedTensorsFromElsewhereAreCopiedUnderMmap) {
  TempDir dir;
  std::string p = dir / "u.safetensors";
  // Header of 7 bytes + 8 = data at 15; "b" starts at data byte 1: unaligned for F32.
  std::string h = R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                  R"("b":{"dtype":"F32","shape":[1],"data_offsets":[1,5]}})";
  float v = 3.25f;
  write_bytes(p, raw_file(h, std::string("\x07", 1) + le_bytes(v)));
  SafetensorsContents c = load_safetensors(p, LoadMode::mmap);
  EXPECT_EQ(c.tensors.at("b").data<float>()[0], 3.25f);
  EXPECT_EQ(c.tensors.at("a").data<uint8_t>()[0], 7);
}

TEST(Safetensors, ReservedNameAndUndefinedTensorsAreRejected) {
  TempDir dir;
  expect_value_error([&] { save_safetensors(dir / "x.safetensors", {{"__metadata__", Tensor::zeros({1})}}); },
                     {"reserved"});
  expect_value_error([&] { save_safetensors(dir / "x.safetensors", {{"t", Tensor()}}); }, {"'t'", "undefined"});
  EXPECT_FALSE(testing::file_exists(dir / "x.safetensors"));
  EXPECT_FALSE(testing::file_exists(dir / "x.safetensors.tmp"));
}

TEST(SafetensorsJson, StringsEscapesAndNumbers) {
  json::Value v = json::parse(R"( {"s": "a\"b\\c\/d\n\u00e9\ud83d\ude00", "n": -12, "f": 1.5e3,
                                   "a": [true, false, null, {}], "e": []} )",
                              "t");
  EXPECT_EQ(v.find("s")->string, "a\"b\\c/d\n\xc3\xa9\xf0\x9f\x98\x80");
  EXPECT_EQ(v.find("n")->integer, -12);
  EXPECT_EQ(v.find("f")->number, 1500.0);
  EXPECT_EQ(v.find("a")->array.size(), 4u);
  EXPECT_EQ(json::parse(json::quote("x\"\\\n\x01y"), "q").string, "x\"\\\n\x01y");
  for (const char* bad : {"{\"a\":1,}", "[1,]", "01", "{\"a\" 1}", "\"\\x\"", "\"\\ud800\"", "\"a\nb\"",
                          "[1] 2", "", "{\"a\":1,\"a\":2}", "99999999999999999999", "tru", "[", "\"abc"}) {
    expect_value_error([&] { json::parse(bad, "where"); }, {"where: invalid JSON at byte"});
  }
  std::string deep(100, '[');
  expect_value_error([&] { json::parse(deep, "deep"); }, {"nesting"});
}

}  // namespace
}  // namespace mambatron
