// safetensors files and sharded checkpoints (model-0000K-of-0000N.safetensors plus
// model.safetensors.index.json), read and written without third-party libraries.
//
// Writing is atomic: the bytes go to PATH.tmp, which is flushed, fsync'ed and renamed
// over PATH. Tensors are laid out by decreasing item size (then by name), so every
// tensor of a file we write is aligned to its item size and can be mapped zero-copy.
// Reading validates the whole header first; every malformed input throws ValueError
// naming the file and the problem.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "mambatron/tensor.h"

namespace mambatron {

using TensorMap = std::map<std::string, Tensor>;
using StringMap = std::map<std::string, std::string>;

// The safetensors dtype string of one of our dtypes ("F32", "BF16", "U16", ...).
const char* safetensors_dtype(DType dt);
// Ours for a safetensors dtype string; ValueError for strings safetensors does not
// define and for the ones we have no dtype for (BOOL, I8, I16, U32, U64, F8_*).
DType dtype_from_safetensors(const std::string& name);

// One tensor as a header describes it (no data read).
struct SafetensorsEntry {
  std::string name;
  std::string dtype;  // the safetensors string, e.g. "BF16" (may be one we cannot load)
  Shape shape;
  std::string file;   // the file holding it
  uint64_t begin = 0, end = 0;  // byte range in that file's data block, end exclusive
};

struct SafetensorsContents {
  TensorMap tensors;
  StringMap metadata;  // "__metadata__" (of the first shard, for a sharded checkpoint)
};

enum class LoadMode {
  copy,  // each tensor in its own CPU memory; the file is closed on return
  mmap,  // CPU tensors viewing a private (copy-on-write) mapping of the file: writes
         // to them never reach the file; a tensor whose offset is not aligned to its
         // item size (possible in files written elsewhere) is copied instead
};

// Writes one file. Tensors may be of any dtype, device and layout (CUDA and
// non-contiguous tensors are copied to contiguous CPU memory first).
void save_safetensors(const std::string& path, const TensorMap& tensors, const StringMap& metadata = {});

// Writes DIR/STEM.safetensors when the tensors' total size is at most
// max_shard_bytes, else DIR/STEM-0000K-of-0000N.safetensors shards (tensors in name
// order, a new shard when the next tensor would pass the limit; a tensor larger than
// the limit gets a shard of its own) and DIR/STEM.safetensors.index.json. Each shard
// carries `metadata`. The form not written (a stale single file or index) is removed
// so that a folder never holds both. Returns the paths written, index last.
std::vector<std::string> save_safetensors_sharded(const std::string& dir, const TensorMap& tensors,
                                                  const StringMap& metadata = {},
                                                  uint64_t max_shard_bytes = uint64_t(5) << 30,
                                                  const std::string& stem = "model");

// Reads a file, an index (*.index.json: the shards it names, checked against it), or
// a folder holding STEM.safetensors.index.json or STEM.safetensors.
SafetensorsContents load_safetensors(const std::string& path, LoadMode mode = LoadMode::copy,
                                     const std::string& stem = "model");

// Names, dtypes, shapes and byte ranges from the headers alone, in name order; the
// same paths as load_safetensors. `metadata`, when given, receives the metadata.
std::vector<SafetensorsEntry> list_safetensors(const std::string& path, StringMap* metadata = nullptr,
                                               const std::string& stem = "model");

}  // namespace mambatron
