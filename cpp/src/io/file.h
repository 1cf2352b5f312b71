// POSIX file helpers for the readers and writers of cpp/src/io: a read-only file
// with exact positional reads, a whole-file memory mapping, and an atomic writer
// (PATH.tmp, fsync, rename). System call failures throw Error naming the file and
// strerror(errno).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace mambatron::io {

class ReadFile {
 public:
  explicit ReadFile(const std::string& path);
  ~ReadFile();
  ReadFile(const ReadFile&) = delete;
  ReadFile& operator=(const ReadFile&) = delete;
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Reads exactly n bytes at offset (the caller has checked the range against size()).
  void read_at(void* dst, size_t n, uint64_t offset) const;

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

// The whole file mapped read-only-shared (writable = false) or copy-on-write private
// (writable = true); unmapped when the last shared_ptr goes. An empty file maps to
// data() == nullptr.
class Mapping {
 public:
  static std::shared_ptr<Mapping> open(const std::string& path, bool writable);
  ~Mapping();
  const uint8_t* data() const { return static_cast<const uint8_t*>(addr_); }
  uint8_t* mutable_data() const { return static_cast<uint8_t*>(addr_); }
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  Mapping() = default;
  std::string path_;
  void* addr_ = nullptr;
  uint64_t size_ = 0;
};

// Writes PATH.tmp; commit() flushes, fsyncs and renames it over PATH. Destroyed
// without commit(), it removes PATH.tmp, so a failed write leaves PATH as it was.
class AtomicWriter {
 public:
  explicit AtomicWriter(const std::string& path);
  ~AtomicWriter();
  AtomicWriter(const AtomicWriter&) = delete;
  AtomicWriter& operator=(const AtomicWriter&) = delete;
  void write(const void* data, size_t n);
  uint64_t written() const { return written_; }
  void commit();
  const std::string& path() const { return path_; }

 private:
  void flush_buffer();
  std::string path_, tmp_;
  int fd_ = -1;
  uint64_t written_ = 0;
  std::string buffer_;  // small writes are gathered here
};

bool path_exists(const std::string& path);
bool is_directory(const std::string& path);
// Removes a file if it exists (a missing file is not an error).
void remove_file(const std::string& path);
// "dir/name", without doubling a trailing slash.
std::string join_path(const std::string& dir, const std::string& name);
// The folder part of a path ("." when there is none).
std::string dir_name(const std::string& path);

}  // namespace mambatron::io
