// Megatron indexed datasets: the writer and the memory-mapped reader.
#include <cmath>
#include <cstring>
#include <limits>

#include "file.h"
#include "mambatron/data.h"
#include "mambatron/error.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "indexed datasets are little-endian");

namespace mambatron {

namespace {

constexpr char kMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
constexpr uint64_t kVersion = 1;
constexpr uint64_t kHeaderBytes = 9 + 8 + 1 + 8 + 8;

// The .idx arrays sit at offsets that need not be aligned (lengths start at byte 34),
// so every read goes through memcpy.
template <class T>
T load(const uint8_t* base, int64_t i) {
  T v;
  std::memcpy(&v, base + i * int64_t(sizeof(T)), sizeof(T));
  return v;
}

template <class F>
decltype(auto) visit_code(int code, F&& f) {
  switch (code) {
    case 1: return f(TypeTag<uint8_t>{});
    case 2: return f(TypeTag<int8_t>{});
    case 3: return f(TypeTag<int16_t>{});
    case 4: return f(TypeTag<int32_t>{});
    case 5: return f(TypeTag<int64_t>{});
    case 6: return f(TypeTag<double>{});
    case 7: return f(TypeTag<float>{});
    case 8: return f(TypeTag<uint16_t>{});
  }
  throw ValueError(detail::cat("indexed dataset: unknown dtype code ", code, ", expected 1..8"));
}

// The largest magnitude a token may have in a float file and still be exact.
template <class T>
constexpr int64_t exact_limit() {
  return std::is_same_v<T, float> ? (int64_t(1) << 24) : (int64_t(1) << 53);
}

std::string bin_path(const std::string& prefix) { return prefix + ".bin"; }
std::string idx_path(const std::string& prefix) { return prefix + ".idx"; }

}  // namespace

size_t token_code_size(int code) {
  return visit_code(code, [](auto tag) { return sizeof(typename decltype(tag)::type); });
}

const char* token_code_name(int code) {
  static const char* names[] = {"", "uint8", "int8", "int16", "int32", "int64", "float64", "float32", "uint16"};
  token_code_size(code);  // validates
  return names[code];
}

int token_code_for_vocab(int64_t vocab_size) {
  MT_CHECK(vocab_size > 0, ValueError, "token_code_for_vocab: vocab_size ", vocab_size, " must be positive");
  return vocab_size < 65500 ? 8 : 4;
}

// ------------------------------------------------------------------ writer

struct IndexedDatasetWriter::Impl {
  explicit Impl(const std::string& prefix) : bin(bin_path(prefix)) {}
  io::AtomicWriter bin;
};

IndexedDatasetWriter::IndexedDatasetWriter(const std::string& prefix, int dtype_code)
    : prefix_(prefix), code_(dtype_code) {
  token_code_size(dtype_code);  // ValueError for a bad code before any file is made
  impl_ = std::make_unique<Impl>(prefix);
}

IndexedDatasetWriter::~IndexedDatasetWriter() = default;

void IndexedDatasetWriter::add_sequence(const int64_t* tokens, size_t n) {
  MT_CHECK(impl_, ValueError, "IndexedDatasetWriter: ", prefix_, " is already finalized");
  MT_CHECK(n <= size_t(std::numeric_limits<int32_t>::max()), ValueError, "IndexedDatasetWriter: ", prefix_,
           ": a sequence of ", n, " tokens exceeds the int32 lengths of the index");
  visit_code(code_, [&](auto tag) {
    using T = typename decltype(tag)::type;
    scratch_.resize(n * sizeof(T));
    T* out = reinterpret_cast<T*>(scratch_.data());
    for (size_t j = 0; j < n; ++j) {
      int64_t v = tokens[j];
      bool fits;
      if constexpr (std::is_floating_point_v<T>) fits = v >= -exact_limit<T>() && v <= exact_limit<T>();
      else fits = v >= int64_t(std::numeric_limits<T>::min()) && v <= int64_t(std::numeric_limits<T>::max());
      MT_CHECK(fits, ValueError, "IndexedDatasetWriter: ", prefix_, ": token ", v,
               " (position ", j, " of sequence ", lengths_.size(), ") does not fit the dtype ",
               token_code_name(code_));
      out[j] = T(v);
    }
  });
  impl_->bin.write(scratch_.data(), scratch_.size());
  lengths_.push_back(int32_t(n));
  tokens_ += int64_t(n);
}

void IndexedDatasetWriter::end_document() {
  MT_CHECK(impl_, ValueError, "IndexedDatasetWriter: ", prefix_, " is already finalized");
  doc_index_.push_back(int64_t(lengths_.size()));
}

void IndexedDatasetWriter::add_document(const int64_t* tokens, size_t n) {
  add_sequence(tokens, n);
  end_document();
}

void IndexedDatasetWriter::finalize() {
  MT_CHECK(impl_, ValueError, "IndexedDatasetWriter: ", prefix_, " is already finalized");
  if (doc_index_.back() != int64_t(lengths_.size())) end_document();
  io::AtomicWriter idx(idx_path(prefix_));
  uint64_t version = kVersion, n_seq = lengths_.size(), n_doc = doc_index_.size();
  uint8_t code = uint8_t(code_);
  idx.write(kMagic, 9);
  idx.write(&version, 8);
  idx.write(&code, 1);
  idx.write(&n_seq, 8);
  idx.write(&n_doc, 8);
  idx.write(lengths_.data(), lengths_.size() * 4);
  std::vector<int64_t> offsets(lengths_.size());
  int64_t at = 0, item = int64_t(token_code_size(code_));
  for (size_t i = 0; i < lengths_.size(); ++i) {
    offsets[i] = at;
    at += int64_t(lengths_[i]) * item;
  }
  idx.write(offsets.data(), offsets.size() * 8);
  idx.write(doc_index_.data(), doc_index_.size() * 8);
  impl_->bin.commit();
  idx.commit();
  impl_.reset();
}

void IndexedDatasetWriter::abort() { impl_.reset(); }

// ------------------------------------------------------------------ reader

IndexedDataset::IndexedDataset(const std::string& prefix) : prefix_(prefix) {
  const std::string ip = idx_path(prefix), bp = bin_path(prefix);
  auto idx = io::Mapping::open(ip, /*writable=*/false);
  idx_map_ = idx;
  const uint8_t* p = idx->data();
  uint64_t size = idx->size();
  MT_CHECK(size >= kHeaderBytes, ValueError, ip, ": truncated: ", size, " bytes, fewer than the ", kHeaderBytes,
           "-byte header");
  MT_CHECK(std::memcmp(p, kMagic, 9) == 0, ValueError, ip,
           ": bad magic: the file does not start with MMIDIDX\\x00\\x00 (not a Megatron index)");
  uint64_t version = load<uint64_t>(p + 9, 0);
  MT_CHECK(version == kVersion, ValueError, ip, ": version ", version, ", expected 1");
  code_ = p[17];
  MT_CHECK(code_ >= 1 && code_ <= 8, ValueError, ip, ": unknown dtype code ", code_,
           ", expected 1..8 (1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64, 7 float32, 8 uint16)");
  itemsize_ = token_code_size(code_);
  uint64_t n_seq = load<uint64_t>(p + 18, 0), n_doc = load<uint64_t>(p + 26, 0);
  uint64_t body = size - kHeaderBytes;
  MT_CHECK(n_seq <= body / 12 && n_doc <= body / 8 && 12 * n_seq + 8 * n_doc == body, ValueError, ip,
           ": sequence_count ", n_seq, " and document_count ", n_doc, " need ", kHeaderBytes, " + 12 x ", n_seq,
           " + 8 x ", n_doc, " bytes, but the file has ", size);
  MT_CHECK(n_doc >= 1, ValueError, ip, ": document_count is 0; the document index must hold at least its leading 0");
  n_seq_ = int64_t(n_seq);
  n_doc_index_ = int64_t(n_doc);
  lengths_ = reinterpret_cast<const int32_t*>(p + kHeaderBytes);
  offsets_ = reinterpret_cast<const int64_t*>(p + kHeaderBytes + 4 * n_seq);
  doc_index_ = reinterpret_cast<const int64_t*>(p + kHeaderBytes + 12 * n_seq);

  const auto* lb = reinterpret_cast<const uint8_t*>(lengths_);
  const auto* ob = reinterpret_cast<const uint8_t*>(offsets_);
  const auto* db = reinterpret_cast<const uint8_t*>(doc_index_);
  int64_t at = 0;
  for (int64_t i = 0; i < n_seq_; ++i) {
    int32_t len = load<int32_t>(lb, i);
    int64_t off = load<int64_t>(ob, i);
    MT_CHECK(len >= 0, ValueError, ip, ": sequence ", i, " has negative length ", len);
    MT_CHECK(off == at, ValueError, ip, ": sequence ", i, " has byte offset ", off, ", but the lengths before it (",
             itemsize_, "-byte tokens) put it at ", at);
    at += int64_t(len) * int64_t(itemsize_);
  }
  n_tokens_ = at / int64_t(itemsize_);
  MT_CHECK(load<int64_t>(db, 0) == 0, ValueError, ip, ": the document index starts at ", load<int64_t>(db, 0),
           ", expected 0");
  for (int64_t d = 1; d < n_doc_index_; ++d)
    MT_CHECK(load<int64_t>(db, d) >= load<int64_t>(db, d - 1), ValueError, ip, ": the document index decreases at entry ",
             d, " (", load<int64_t>(db, d - 1), " then ", load<int64_t>(db, d), ")");
  MT_CHECK(load<int64_t>(db, n_doc_index_ - 1) == n_seq_, ValueError, ip, ": the document index ends at ",
           load<int64_t>(db, n_doc_index_ - 1), ", expected sequence_count ", n_seq_);

  auto bin = io::Mapping::open(bp, /*writable=*/false);
  bin_map_ = bin;
  MT_CHECK(bin->size() >= uint64_t(at), ValueError, bp, ": ", bin->size(), " bytes, shorter than the ", at,
           " bytes that ", ip, " describes");
  MT_CHECK(bin->size() == uint64_t(at), ValueError, bp, ": ", bin->size(), " bytes, longer than the ", at,
           " bytes that ", ip, " describes");
  bin_ = bin->data();
}

IndexedDataset::~IndexedDataset() = default;

int64_t IndexedDataset::sequence_length(int64_t i) const {
  MT_CHECK(i >= 0 && i < n_seq_, ValueError, prefix_, ": sequence ", i, " is out of range [0, ", n_seq_, ")");
  return load<int32_t>(reinterpret_cast<const uint8_t*>(lengths_), i);
}

int64_t IndexedDataset::document_start(int64_t d) const {
  MT_CHECK(d >= 0 && d < n_doc_index_, ValueError, prefix_, ": document boundary ", d, " is out of range [0, ",
           n_doc_index_, ")");
  return load<int64_t>(reinterpret_cast<const uint8_t*>(doc_index_), d);
}

void IndexedDataset::check_range(int64_t i, int64_t offset, int64_t& length, const char* what) const {
  int64_t n = sequence_length(i);
  if (length < 0) length = n - offset;
  MT_CHECK(offset >= 0 && length >= 0 && offset + length <= n, ValueError, prefix_, ": ", what, ": tokens [",
           offset, ", ", offset + length, ") of sequence ", i, " are outside its ", n, " tokens");
}

Tensor IndexedDataset::sequence(int64_t i, int64_t offset, int64_t length) const {
  check_range(i, offset, length, "sequence");
  DType dt;
  switch (code_) {
    case 1: dt = DType::u8; break;
    case 4: dt = DType::i32; break;
    case 5: dt = DType::i64; break;
    case 6: dt = DType::f64; break;
    case 7: dt = DType::f32; break;
    case 8: dt = DType::u16; break;
    default:
      throw TypeError(detail::cat(prefix_, ": tokens of dtype ", token_code_name(code_),
                                  " have no tensor dtype; read them as int64"));
  }
  const uint8_t* at = bin_ + load<int64_t>(reinterpret_cast<const uint8_t*>(offsets_), i) + offset * int64_t(itemsize_);
  return Tensor::from_blob(const_cast<uint8_t*>(at), {length}, {1}, dt, Device::cpu(), bin_map_);
}

Tensor IndexedDataset::sequence_int64(int64_t i, int64_t offset, int64_t length) const {
  check_range(i, offset, length, "sequence_int64");
  Tensor t = Tensor::empty({length}, DType::i64);
  read(i, offset, length, t.data<int64_t>());
  return t;
}

const uint8_t* IndexedDataset::sequence_bytes(int64_t i) const {
  sequence_length(i);  // range check
  return bin_ + load<int64_t>(reinterpret_cast<const uint8_t*>(offsets_), i);
}

void IndexedDataset::read(int64_t i, int64_t offset, int64_t length, int64_t* out) const {
  check_range(i, offset, length, "read");
  const uint8_t* at = bin_ + load<int64_t>(reinterpret_cast<const uint8_t*>(offsets_), i) + offset * int64_t(itemsize_);
  visit_code(code_, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* src = reinterpret_cast<const T*>(at);  // aligned: offsets are multiples of the item size
    for (int64_t j = 0; j < length; ++j) out[j] = int64_t(src[j]);
  });
}

}  // namespace mambatron
