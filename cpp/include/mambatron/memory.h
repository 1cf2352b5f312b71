// Memory statistics of the CPU arena and the CUDA caching allocator.
// Bytes counted are those held by live tensors (rounded to the block size).
#pragma once
#include <cstddef>

#include "mambatron/device.h"

namespace mambatron {

size_t memory_allocated(Device device);
size_t max_memory_allocated(Device device);
size_t memory_reserved(Device device);  // held by the allocator, in use or cached
void reset_peak_memory_stats(Device device);
void empty_cache(Device device);  // returns cached, unused blocks to the system

}  // namespace mambatron
