// safetensors reading, writing and sharded checkpoints (layout in ECOSYSTEM.md).
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <set>

#include "file.h"
#include "json.h"
#include "mambatron/checkpoint.h"
#include "mambatron/error.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors I/O assumes a little-endian host");

namespace mambatron {

namespace {

struct StType {
  const char* name;
  size_t itemsize;
  int ours;  // int(DType), or -1 where we have no such dtype
};
constexpr StType kTypes[] = {
    {"F32", 4, int(DType::f32)},  {"F64", 8, int(DType::f64)}, {"BF16", 2, int(DType::bf16)},
    {"F16", 2, int(DType::f16)},  {"I32", 4, int(DType::i32)}, {"I64", 8, int(DType::i64)},
    {"U16", 2, int(DType::u16)},  {"U8", 1, int(DType::u8)},   {"BOOL", 1, -1},
    {"I8", 1, -1},                {"I16", 2, -1},              {"U32", 4, -1},
    {"U64", 8, -1},               {"F8_E4M3", 1, -1},          {"F8_E5M2", 1, -1},
    {"F8_E8M0", 1, -1},
};

const StType* find_type(const std::string& name) {
  for (const auto& t : kTypes)
    if (name == t.name) return &t;
  return nullptr;
}

// Real headers are kilobytes to a few megabytes; a larger length is corruption.
constexpr uint64_t kMaxHeaderBytes = uint64_t(100) << 20;

std::string quoted(const std::string& name) { return "'" + name + "'"; }

std::string offsets_str(uint64_t b, uint64_t e) { return detail::cat("[", b, ", ", e, "]"); }

// The validated header of one file.
struct Header {
  std::vector<SafetensorsEntry> entries;  // by data offset
  StringMap metadata;
  uint64_t data_start = 0;  // 8 + header length
};

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

SafetensorsEntry parse_entry(const std::string& path, const std::string& name, const json::Value& v) {
  auto bad = [&](const std::string& what) {
    return ValueError(detail::cat(path, ": tensor ", quoted(name), ": ", what));
  };
  if (!v.is_object()) throw bad(detail::cat("expected an object, got a ", json::kind_name(v.kind)));
  for (const auto& kv : v.object)
    if (kv.first != "dtype" && kv.first != "shape" && kv.first != "data_offsets")
      throw bad(detail::cat("unexpected key ", json::quote(kv.first),
                            " (expected dtype, shape and data_offsets)"));
  const json::Value* dt = v.find("dtype");
  const json::Value* shape = v.find("shape");
  const json::Value* offs = v.find("data_offsets");
  if (!dt || !shape || !offs) throw bad("missing one of dtype, shape, data_offsets");
  if (!dt->is_string()) throw bad("dtype is not a string");
  const StType* type = find_type(dt->string);
  if (!type) throw bad(detail::cat("unknown dtype ", json::quote(dt->string)));
  SafetensorsEntry e;
  e.name = name;
  e.dtype = dt->string;
  e.file = path;
  if (!shape->is_array()) throw bad("shape is not an array");
  uint64_t numel = 1;
  bool overflow = false;
  for (const auto& d : shape->array) {
    if (!d.is_int() || d.integer < 0) throw bad("shape holds something other than a non-negative integer");
    e.shape.push_back(d.integer);
    overflow |= __builtin_mul_overflow(numel, uint64_t(d.integer), &numel);
  }
  if (!offs->is_array() || offs->array.size() != 2 || !offs->array[0].is_int() || !offs->array[1].is_int() ||
      offs->array[0].integer < 0 || offs->array[1].integer < 0)
    throw bad("data_offsets is not a pair of non-negative integers");
  e.begin = uint64_t(offs->array[0].integer);
  e.end = uint64_t(offs->array[1].integer);
  if (e.end < e.begin) throw bad(detail::cat("data_offsets ", offsets_str(e.begin, e.end), " end before they begin"));
  uint64_t bytes = 0;
  overflow |= __builtin_mul_overflow(numel, uint64_t(type->itemsize), &bytes);
  overflow |= numel > uint64_t(INT64_MAX);  // our shapes are int64
  if (overflow || bytes != e.end - e.begin)
    throw bad(detail::cat("shape ", shape_str(e.shape), " x ", type->itemsize, " bytes (", e.dtype, ") = ",
                          overflow ? std::string("an overflowing size") : std::to_string(bytes),
                          " bytes, but data_offsets ", offsets_str(e.begin, e.end), " hold ", e.end - e.begin));
  return e;
}

Header read_header(const io::ReadFile& f) {
  const std::string& path = f.path();
  MT_CHECK(f.size() >= 8, ValueError, path, ": truncated: the file has ", f.size(),
           " bytes, fewer than the 8-byte header length");
  uint8_t len_bytes[8];
  f.read_at(len_bytes, 8, 0);
  uint64_t n = read_u64_le(len_bytes);
  MT_CHECK(n <= f.size() - 8, ValueError, path, ": the header length ", n, " runs past the end of the file (",
           f.size(), " bytes)");
  MT_CHECK(n <= kMaxHeaderBytes, ValueError, path, ": the header length ", n, " exceeds the limit of ",
           kMaxHeaderBytes, " bytes (a corrupt length field?)");
  std::string text(size_t(n), '\0');
  f.read_at(text.data(), size_t(n), 8);
  MT_CHECK(n > 0 && text[0] == '{', ValueError, path, ": the header does not start with '{'");
  json::Value root = json::parse(text, path + ": header");
  MT_CHECK(root.is_object(), ValueError, path, ": the header is not a JSON object");

  Header h;
  h.data_start = 8 + n;
  uint64_t data_size = f.size() - h.data_start;
  for (const auto& kv : root.object) {
    if (kv.first == "__metadata__") {
      MT_CHECK(kv.second.is_object(), ValueError, path, ": __metadata__ is not an object");
      for (const auto& m : kv.second.object) {
        MT_CHECK(m.second.is_string(), ValueError, path, ": __metadata__ value of ", json::quote(m.first),
                 " is a ", json::kind_name(m.second.kind), ", expected a string");
        h.metadata[m.first] = m.second.string;
      }
      continue;
    }
    h.entries.push_back(parse_entry(path, kv.first, kv.second));
  }
  std::sort(h.entries.begin(), h.entries.end(), [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t expected = 0;
  const SafetensorsEntry* prev = nullptr;
  for (const auto& e : h.entries) {
    MT_CHECK(e.end <= data_size, ValueError, path, ": tensor ", quoted(e.name), ": data_offsets ",
             offsets_str(e.begin, e.end), " run past the end of the data block (", data_size, " bytes)");
    MT_CHECK(e.begin >= expected, ValueError, path, ": tensor ", quoted(e.name), ": data_offsets ",
             offsets_str(e.begin, e.end), " overlap tensor ", quoted(prev ? prev->name : ""), " ",
             offsets_str(prev ? prev->begin : 0, prev ? prev->end : 0));
    MT_CHECK(e.begin == expected, ValueError, path, ": tensor ", quoted(e.name), ": data_offsets ",
             offsets_str(e.begin, e.end), " leave a hole: the previous tensor ends at byte ", expected);
    expected = e.end;
    prev = &e;
  }
  MT_CHECK(expected == data_size, ValueError, path, ": the tensors end at byte ", expected,
           " of the data block, but the file holds ", data_size, " bytes of data after the header");
  return h;
}

// Reads the header and turns each entry into a tensor of the right dtype.
void load_file(const std::string& path, LoadMode mode, SafetensorsContents& out, bool take_metadata) {
  io::ReadFile f(path);
  Header h = read_header(f);
  for (const auto& e : h.entries) dtype_from_safetensors(e.dtype);  // fail before reading anything
  std::shared_ptr<io::Mapping> map;
  if (mode == LoadMode::mmap) {
    map = io::Mapping::open(path, /*writable=*/true);
    MT_CHECK(map->size() == f.size(), Error, path, ": the file changed size while being opened");
  }
  for (const auto& e : h.entries) {
    MT_CHECK(!out.tensors.count(e.name), ValueError, path, ": tensor ", quoted(e.name),
             " is also in another file of the checkpoint");
    DType dt = dtype_from_safetensors(e.dtype);
    uint64_t at = h.data_start + e.begin;
    if (map && at % dtype_size(dt) == 0 && e.end > e.begin) {
      std::shared_ptr<void> owner = map;
      out.tensors[e.name] = Tensor::from_blob(map->mutable_data() + at, e.shape, contiguous_strides(e.shape), dt,
                                              Device::cpu(), owner);
      continue;
    }
    Tensor t = Tensor::empty(e.shape, dt);
    if (e.end > e.begin) {
      if (map) std::memcpy(t.data_ptr(), map->data() + at, e.end - e.begin);
      else f.read_at(t.data_ptr(), e.end - e.begin, at);
    }
    out.tensors[e.name] = std::move(t);
  }
  if (take_metadata) out.metadata = std::move(h.metadata);
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// The checkpoint a path names: one file, or an index and the shards it maps.
struct Source {
  std::string file;   // a single file, or empty
  std::string index;  // the index, or empty
  std::map<std::string, std::string> weight_map;  // name -> shard path
  std::vector<std::string> shards;                // sorted
};

Source resolve(const std::string& path, const std::string& stem) {
  Source s;
  if (io::is_directory(path)) {
    std::string index = io::join_path(path, stem + ".safetensors.index.json");
    std::string single = io::join_path(path, stem + ".safetensors");
    if (io::path_exists(index)) s.index = index;
    else if (io::path_exists(single)) s.file = single;
    else throw ValueError(detail::cat(path, ": the folder holds neither ", stem, ".safetensors nor ", stem,
                                      ".safetensors.index.json"));
  } else if (ends_with(path, ".index.json")) {
    s.index = path;
  } else {
    s.file = path;
    return s;
  }
  if (s.file.empty()) {
    io::ReadFile f(s.index);
    std::string text(size_t(f.size()), '\0');
    f.read_at(text.data(), text.size(), 0);
    json::Value root = json::parse(text, s.index);
    MT_CHECK(root.is_object(), ValueError, s.index, ": expected a JSON object");
    const json::Value* wm = root.find("weight_map");
    MT_CHECK(wm && wm->is_object(), ValueError, s.index, ": no \"weight_map\" object");
    const json::Value* md = root.find("metadata");
    MT_CHECK(!md || md->is_object(), ValueError, s.index, ": \"metadata\" is not an object");
    std::string dir = io::dir_name(s.index);
    std::set<std::string> shards;
    for (const auto& kv : wm->object) {
      MT_CHECK(kv.second.is_string() && !kv.second.string.empty(), ValueError, s.index, ": weight_map entry ",
               json::quote(kv.first), " is not a file name");
      MT_CHECK(kv.second.string.find('/') == std::string::npos, ValueError, s.index, ": weight_map entry ",
               json::quote(kv.first), " names ", json::quote(kv.second.string),
               ", expected a file in the index's folder");
      std::string shard = io::join_path(dir, kv.second.string);
      s.weight_map[kv.first] = shard;
      shards.insert(shard);
    }
    s.shards.assign(shards.begin(), shards.end());
  }
  return s;
}

// Every tensor of every shard is where the index says, and nothing is missing.
void check_against_index(const Source& s, const std::vector<SafetensorsEntry>& entries) {
  std::set<std::string> seen;
  for (const auto& e : entries) {
    auto it = s.weight_map.find(e.name);
    MT_CHECK(it != s.weight_map.end(), ValueError, s.index, ": tensor ", quoted(e.name), " of ", e.file,
             " is not in the weight_map");
    MT_CHECK(it->second == e.file, ValueError, s.index, ": tensor ", quoted(e.name), " is in ", e.file,
             ", but the weight_map puts it in ", it->second);
    seen.insert(e.name);
  }
  for (const auto& kv : s.weight_map)
    MT_CHECK(seen.count(kv.first), ValueError, s.index, ": tensor ", quoted(kv.first), " is missing from ",
             kv.second);
}

void make_dir(const std::string& dir) {
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST)
    throw Error(detail::cat("cannot create the folder ", dir, ": ", std::strerror(errno)));
}

}  // namespace

const char* safetensors_dtype(DType dt) {
  for (const auto& t : kTypes)
    if (t.ours == int(dt)) return t.name;
  throw TypeError(detail::cat("safetensors: no safetensors dtype for ", dtype_name(dt)));
}

DType dtype_from_safetensors(const std::string& name) {
  const StType* t = find_type(name);
  MT_CHECK(t, ValueError, "safetensors: unknown dtype ", json::quote(name));
  MT_CHECK(t->ours >= 0, ValueError, "safetensors: dtype ", name,
           " has no mambatron dtype (supported: F32 F64 BF16 F16 I32 I64 U16 U8)");
  return DType(t->ours);
}

void save_safetensors(const std::string& path, const TensorMap& tensors, const StringMap& metadata) {
  // Decreasing item size keeps every tensor aligned to its item size (the data block
  // starts at a multiple of 8).
  std::vector<std::pair<std::string, Tensor>> order;
  for (const auto& kv : tensors) {
    MT_CHECK(kv.second.defined(), ValueError, "save_safetensors: ", path, ": tensor ", quoted(kv.first),
             " is undefined");
    MT_CHECK(kv.first != "__metadata__", ValueError, "save_safetensors: ", path,
             ": '__metadata__' is reserved and cannot name a tensor");
    order.emplace_back(kv.first, kv.second);
  }
  std::stable_sort(order.begin(), order.end(),
                   [](const auto& a, const auto& b) { return a.second.itemsize() > b.second.itemsize(); });
  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool first = true;
    for (const auto& kv : metadata) {
      header += (first ? "" : ",") + json::quote(kv.first) + ":" + json::quote(kv.second);
      first = false;
    }
    header += "}";
  }
  uint64_t offset = 0;
  for (const auto& [name, t] : order) {
    if (header.size() > 1) header += ",";
    header += json::quote(name) + ":{\"dtype\":\"" + safetensors_dtype(t.dtype()) + "\",\"shape\":[";
    for (int d = 0; d < t.dim(); ++d) header += (d ? "," : "") + std::to_string(t.size(d));
    header += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + t.nbytes()) + "]}";
    offset += t.nbytes();
  }
  header += "}";
  header.append((8 - header.size() % 8) % 8, ' ');

  io::AtomicWriter w(path);
  uint64_t n = header.size();
  w.write(&n, 8);
  w.write(header.data(), header.size());
  for (const auto& [name, t] : order) {
    if (t.numel() == 0) continue;
    Tensor c = t.to(Device::cpu()).contiguous();  // one tensor at a time
    w.write(c.data_ptr(), c.nbytes());
  }
  w.commit();
}

std::vector<std::string> save_safetensors_sharded(const std::string& dir, const TensorMap& tensors,
                                                  const StringMap& metadata, uint64_t max_shard_bytes,
                                                  const std::string& stem) {
  MT_CHECK(max_shard_bytes > 0, ValueError, "save_safetensors_sharded: max_shard_bytes must be positive");
  MT_CHECK(!stem.empty() && stem.find('/') == std::string::npos, ValueError,
           "save_safetensors_sharded: stem ", json::quote(stem), " must be a plain file name");
  make_dir(dir);
  std::string single = io::join_path(dir, stem + ".safetensors");
  std::string index = io::join_path(dir, stem + ".safetensors.index.json");
  uint64_t total = 0;
  for (const auto& kv : tensors) total += kv.second.defined() ? kv.second.nbytes() : 0;
  if (total <= max_shard_bytes) {
    save_safetensors(single, tensors, metadata);
    io::remove_file(index);
    return {single};
  }
  std::vector<TensorMap> shards(1);
  uint64_t in_shard = 0;
  for (const auto& kv : tensors) {
    uint64_t bytes = kv.second.defined() ? kv.second.nbytes() : 0;
    if (!shards.back().empty() && in_shard + bytes > max_shard_bytes) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().insert(kv);
    in_shard += bytes;
  }
  MT_CHECK(shards.size() <= 99999, ValueError, "save_safetensors_sharded: ", shards.size(),
           " shards exceed the 5-digit naming; raise max_shard_bytes");
  std::vector<std::string> written;
  std::string weight_map;
  for (size_t k = 0; k < shards.size(); ++k) {
    char name[64];
    std::snprintf(name, sizeof name, "-%05zu-of-%05zu.safetensors", k + 1, shards.size());
    std::string file = stem + name;
    save_safetensors(io::join_path(dir, file), shards[k], metadata);
    written.push_back(io::join_path(dir, file));
    for (const auto& kv : shards[k])
      weight_map += (weight_map.empty() ? "\n    " : ",\n    ") + json::quote(kv.first) + ": " + json::quote(file);
  }
  std::string text = "{\n  \"metadata\": {\"total_size\": " + std::to_string(total) + "},\n  \"weight_map\": {" +
                     weight_map + "\n  }\n}\n";
  io::AtomicWriter w(index);
  w.write(text.data(), text.size());
  w.commit();
  io::remove_file(single);
  written.push_back(index);
  return written;
}

SafetensorsContents load_safetensors(const std::string& path, LoadMode mode, const std::string& stem) {
  Source s = resolve(path, stem);
  SafetensorsContents out;
  if (!s.file.empty()) {
    load_file(s.file, mode, out, true);
    return out;
  }
  check_against_index(s, list_safetensors(s.index, nullptr, stem));
  for (size_t k = 0; k < s.shards.size(); ++k) load_file(s.shards[k], mode, out, k == 0);
  return out;
}

std::vector<SafetensorsEntry> list_safetensors(const std::string& path, StringMap* metadata,
                                               const std::string& stem) {
  Source s = resolve(path, stem);
  std::vector<std::string> files = s.file.empty() ? s.shards : std::vector<std::string>{s.file};
  std::vector<SafetensorsEntry> all;
  std::set<std::string> names;
  for (size_t k = 0; k < files.size(); ++k) {
    io::ReadFile f(files[k]);
    Header h = read_header(f);
    if (metadata && k == 0) *metadata = h.metadata;
    for (auto& e : h.entries) {
      MT_CHECK(names.insert(e.name).second, ValueError, files[k], ": tensor ", quoted(e.name),
               " is also in another file of the checkpoint");
      all.push_back(std::move(e));
    }
  }
  if (!s.index.empty()) check_against_index(s, all);
  std::sort(all.begin(), all.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  return all;
}

}  // namespace mambatron
