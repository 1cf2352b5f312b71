// Counter-based random numbers (Philox-4x32-10). A draw of n numbers uses
// counters [offset, offset + n) under the key `seed`, then advances offset, so the
// numbers depend only on (seed, offset, index) and are the same on every device.
#pragma once
#include <cstdint>

namespace mambatron {

class Generator {
 public:
  explicit Generator(uint64_t seed = 0) : seed_(seed) {}
  uint64_t seed() const { return seed_; }
  uint64_t offset() const { return offset_; }
  void manual_seed(uint64_t seed) { seed_ = seed; offset_ = 0; }
  void set_offset(uint64_t offset) { offset_ = offset; }
  // Reserves `n` counters and returns the first.
  uint64_t advance(uint64_t n) { uint64_t o = offset_; offset_ += n; return o; }

 private:
  uint64_t seed_;
  uint64_t offset_ = 0;
};

Generator& default_generator();
inline void manual_seed(uint64_t seed) { default_generator().manual_seed(seed); }

}  // namespace mambatron
