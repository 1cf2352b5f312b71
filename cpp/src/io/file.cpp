#include "file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "mambatron/error.h"

namespace mambatron::io {

namespace {
[[noreturn]] void fail(const char* what, const std::string& path) {
  throw Error(detail::cat(what, " ", path, ": ", std::strerror(errno)));
}
constexpr size_t kBufferBytes = size_t(1) << 20;
}  // namespace

ReadFile::ReadFile(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) fail("cannot open", path);
  struct stat st;
  if (::fstat(fd_, &st) != 0) {
    ::close(fd_);
    fail("cannot stat", path);
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd_);
    throw ValueError(detail::cat(path, " is a folder, expected a file"));
  }
  size_ = uint64_t(st.st_size);
}

ReadFile::~ReadFile() {
  if (fd_ >= 0) ::close(fd_);
}

void ReadFile::read_at(void* dst, size_t n, uint64_t offset) const {
  auto* p = static_cast<char*>(dst);
  while (n > 0) {
    ssize_t r = ::pread(fd_, p, n, off_t(offset));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) fail("cannot read", path_);
    if (r == 0) throw Error(detail::cat("cannot read ", path_, ": the file ended early (did it change while read?)"));
    p += r;
    n -= size_t(r);
    offset += uint64_t(r);
  }
}

std::shared_ptr<Mapping> Mapping::open(const std::string& path, bool writable) {
  ReadFile f(path);
  std::shared_ptr<Mapping> m(new Mapping());
  m->path_ = path;
  m->size_ = f.size();
  if (m->size_ == 0) return m;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail("cannot open", path);
  void* addr = ::mmap(nullptr, m->size_, writable ? PROT_READ | PROT_WRITE : PROT_READ,
                      writable ? MAP_PRIVATE : MAP_SHARED, fd, 0);
  ::close(fd);  // the mapping keeps the file alive
  if (addr == MAP_FAILED) fail("cannot memory-map", path);
  m->addr_ = addr;
  return m;
}

Mapping::~Mapping() {
  if (addr_) ::munmap(addr_, size_);
}

AtomicWriter::AtomicWriter(const std::string& path) : path_(path), tmp_(path + ".tmp") {
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) fail("cannot create", tmp_);
}

AtomicWriter::~AtomicWriter() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_.c_str());
  }
}

namespace {
void write_all(int fd, const char* p, size_t n, const std::string& path) {
  while (n > 0) {
    ssize_t r = ::write(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) fail("cannot write", path);
    p += r;
    n -= size_t(r);
  }
}
}  // namespace

void AtomicWriter::flush_buffer() {
  write_all(fd_, buffer_.data(), buffer_.size(), tmp_);
  buffer_.clear();
}

void AtomicWriter::write(const void* data, size_t n) {
  MT_CHECK(fd_ >= 0, Error, "AtomicWriter: ", path_, " is already committed");
  written_ += n;
  if (buffer_.size() + n > kBufferBytes) flush_buffer();
  if (n > kBufferBytes) {
    write_all(fd_, static_cast<const char*>(data), n, tmp_);  // large blocks go straight through
    return;
  }
  buffer_.append(static_cast<const char*>(data), n);
}

void AtomicWriter::commit() {
  MT_CHECK(fd_ >= 0, Error, "AtomicWriter: ", path_, " is already committed");
  flush_buffer();
  if (::fsync(fd_) != 0) fail("cannot fsync", tmp_);
  int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) {
    ::unlink(tmp_.c_str());
    fail("cannot close", tmp_);
  }
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
    int e = errno;
    ::unlink(tmp_.c_str());
    errno = e;
    fail("cannot rename the finished file to", path_);
  }
  // Make the rename itself durable.
  int dfd = ::open(dir_name(path_).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

bool path_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

bool is_directory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

void remove_file(const std::string& path) {
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) fail("cannot remove", path);
}

std::string join_path(const std::string& dir, const std::string& name) {
  if (dir.empty()) return name;
  return dir.back() == '/' ? dir + name : dir + "/" + name;
}

std::string dir_name(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace mambatron::io
