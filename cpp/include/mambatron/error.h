// One exception hierarchy for the whole engine. The Python module maps
// ValueError/TypeError/OutOfMemoryError to the Python exceptions of the same
// meaning and every other Error to RuntimeError.
#pragma once
#include <cstdio>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace mambatron {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};
// A value is out of range, a shape does not fit, a file is malformed.
class ValueError : public Error {
 public:
  using Error::Error;
};
// A dtype or device of the wrong kind.
class TypeError : public Error {
 public:
  using Error::Error;
};
// An allocation failed even after the cache was released.
class OutOfMemoryError : public Error {
 public:
  using Error::Error;
};
// A CUDA runtime, driver or library call failed.
class CudaError : public Error {
 public:
  using Error::Error;
};

namespace detail {
// Message building without iostreams (no locale state is involved).
inline void append(std::string& s, const std::string& v) { s += v; }
inline void append(std::string& s, const char* v) { s += v ? v : "(null)"; }
inline void append(std::string& s, char v) { s += v; }
inline void append(std::string& s, bool v) { s += v ? "true" : "false"; }
template <class T, std::enable_if_t<std::is_integral_v<T>, int> = 0>
void append(std::string& s, T v) { s += std::to_string(v); }
template <class T, std::enable_if_t<std::is_floating_point_v<T>, int> = 0>
void append(std::string& s, T v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", double(v));
  s += buf;
}
template <class... Args>
std::string cat(const Args&... args) {
  std::string s;
  (append(s, args), ...);
  return s;
}
}  // namespace detail

}  // namespace mambatron

// MT_CHECK(cond, ValueError, "gemm: 'a' has ", a.dim(), " dims, expected 2 or 3")
#define MT_CHECK(cond, Kind, ...)                                  \
  do {                                                             \
    if (!(cond)) throw ::mambatron::Kind(::mambatron::detail::cat(__VA_ARGS__)); \
  } while (0)
