// One exception hierarchy for the whole engine. The Python module maps
// ValueError/TypeError/OutOfMemoryError to the Python exceptions of the same
// meaning and every other Error to RuntimeError.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

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
template <class... Args>
std::string cat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace mambatron

// MT_CHECK(cond, ValueError, "gemm: 'a' has ", a.dim(), " dims, expected 2 or 3")
#define MT_CHECK(cond, Kind, ...)                                  \
  do {                                                             \
    if (!(cond)) throw ::mambatron::Kind(::mambatron::detail::cat(__VA_ARGS__)); \
  } while (0)
