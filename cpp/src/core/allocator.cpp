#include "allocator.h"

#include <cstdlib>
#include <memory>
#include <vector>

#include "mambatron/cuda.h"
#include "mambatron/error.h"
#include "mambatron/memory.h"
#ifdef MAMBATRON_WITH_CUDA
#include "cuda_context.h"
#endif

namespace mambatron::detail {

CachingAllocator::CachingAllocator(std::string name, std::function<void*(size_t)> raw_alloc,
                                   std::function<void(void*)> raw_free)
    : name_(std::move(name)), raw_alloc_(std::move(raw_alloc)), raw_free_(std::move(raw_free)) {}

size_t CachingAllocator::round_size(size_t n) {
  const size_t small = 512, large = size_t(2) << 20;
  return n <= (size_t(1) << 20) ? (n + small - 1) / small * small : (n + large - 1) / large * large;
}

void* CachingAllocator::allocate(size_t nbytes) {
  if (nbytes == 0) return nullptr;
  size_t size = round_size(nbytes);
  std::lock_guard<std::mutex> lock(mu_);
  void* ptr = nullptr;
  auto it = free_.lower_bound(size);
  if (it != free_.end() && it->first <= 2 * size) {  // reuse, wasting at most half the block
    size = it->first;
    ptr = it->second;
    free_.erase(it);
  } else {
    ptr = raw_alloc_(size);
    if (!ptr && !free_.empty()) {  // give the cache back and try once more
      for (auto& [s, p] : free_) { raw_free_(p); reserved_ -= s; }
      free_.clear();
      ptr = raw_alloc_(size);
    }
    MT_CHECK(ptr, OutOfMemoryError, name_, " out of memory: tried to allocate ", double(nbytes) / (1 << 20),
             " MiB with ", double(allocated_) / (1 << 20), " MiB in use by mambatron tensors");
    reserved_ += size;
  }
  live_[ptr] = size;
  allocated_ += size;
  if (allocated_ > peak_) peak_ = allocated_;
  return ptr;
}

void CachingAllocator::release(void* ptr) {
  if (!ptr) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(ptr);
  if (it == live_.end()) return;
  allocated_ -= it->second;
  free_.emplace(it->second, ptr);
  live_.erase(it);
}

void CachingAllocator::empty_cache() {
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& [s, p] : free_) { raw_free_(p); reserved_ -= s; }
  free_.clear();
}

size_t CachingAllocator::allocated() const { std::lock_guard<std::mutex> l(mu_); return allocated_; }
size_t CachingAllocator::peak() const { std::lock_guard<std::mutex> l(mu_); return peak_; }
size_t CachingAllocator::reserved() const { std::lock_guard<std::mutex> l(mu_); return reserved_; }
void CachingAllocator::reset_peak() { std::lock_guard<std::mutex> l(mu_); peak_ = allocated_; }

CachingAllocator& allocator_for(Device device) {
  if (device.is_cpu()) {
    static auto* cpu = new CachingAllocator(
        "cpu", [](size_t n) { return std::aligned_alloc(256, n); }, [](void* p) { std::free(p); });
    return *cpu;
  }
#ifdef MAMBATRON_WITH_CUDA
  static std::mutex mu;
  static auto* per_device = new std::vector<std::unique_ptr<CachingAllocator>>();
  int n = device_count();
  MT_CHECK(n > 0, TypeError, "device ", device.str(), " requested, but no CUDA device is visible");
  MT_CHECK(device.index >= 0 && device.index < n, TypeError, "device ", device.str(), " does not exist: ", n,
           " CUDA device(s) visible");
  std::lock_guard<std::mutex> lock(mu);
  if (per_device->empty()) per_device->resize(n);
  auto& slot = (*per_device)[device.index];
  if (!slot) {
    int d = device.index;
    slot = std::make_unique<CachingAllocator>(
        device.str(),
        [d](size_t bytes) -> void* {
          DeviceGuard guard(d);
          void* p = nullptr;
          cudaError_t e = cudaMalloc(&p, bytes);
          if (e == cudaErrorMemoryAllocation) { cudaGetLastError(); return nullptr; }
          MT_CUDA_CHECK(e);
          return p;
        },
        [d](void* p) { DeviceGuard guard(d); MT_CUDA_CHECK(cudaFree(p)); });
  }
  return *slot;
#else
  throw TypeError("device " + device.str() + " requested, but mambatron was built without CUDA");
#endif
}

}  // namespace mambatron::detail

namespace mambatron {

size_t memory_allocated(Device d) { return detail::allocator_for(d).allocated(); }
size_t max_memory_allocated(Device d) { return detail::allocator_for(d).peak(); }
size_t memory_reserved(Device d) { return detail::allocator_for(d).reserved(); }
void reset_peak_memory_stats(Device d) { detail::allocator_for(d).reset_peak(); }
void empty_cache(Device d) {
  if (d.is_cuda()) synchronize(d);  // cached blocks may still be read by queued work
  detail::allocator_for(d).empty_cache();
}

}  // namespace mambatron
