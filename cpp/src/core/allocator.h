// Caching allocators: one for the CPU arena, one per CUDA device (cudaMalloc only).
// Freed blocks are kept and handed out again to requests of similar size, so a
// model that allocates the same activations every step stops calling the system.
#pragma once
#include <cstddef>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>

#include "mambatron/device.h"

namespace mambatron::detail {

class CachingAllocator {
 public:
  // raw_alloc returns nullptr when the system is out of memory.
  CachingAllocator(std::string name, std::function<void*(size_t)> raw_alloc, std::function<void(void*)> raw_free);
  void* allocate(size_t nbytes);  // never nullptr for nbytes > 0; throws OutOfMemoryError
  void release(void* ptr);
  void empty_cache();
  size_t allocated() const;
  size_t peak() const;
  size_t reserved() const;
  void reset_peak();

 private:
  static size_t round_size(size_t nbytes);
  std::string name_;
  std::function<void*(size_t)> raw_alloc_;
  std::function<void(void*)> raw_free_;
  mutable std::mutex mu_;
  std::multimap<size_t, void*> free_;        // cached blocks by size
  std::unordered_map<void*, size_t> live_;  // handed-out blocks and their sizes
  size_t allocated_ = 0, peak_ = 0, reserved_ = 0;
};

// The allocator that serves `device` (created on first use, never destroyed, so
// that no CUDA call runs after the runtime has shut down at exit).
CachingAllocator& allocator_for(Device device);

}  // namespace mambatron::detail
