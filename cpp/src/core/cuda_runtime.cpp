#include <mutex>
#include <vector>

#include "mambatron/cuda.h"
#include "mambatron/error.h"
#ifdef MAMBATRON_WITH_CUDA
#include "allocator.h"
#include "cuda_context.h"
#endif

namespace mambatron {

#ifdef MAMBATRON_WITH_CUDA

namespace {
struct DeviceState {
  cudaStream_t stream = nullptr;  // legacy default stream until set_current_stream
  cublasLtHandle_t lt = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};
std::mutex g_mu;
std::vector<DeviceState>& states() {
  static auto* s = new std::vector<DeviceState>(device_count());
  return *s;
}
DeviceState& state(int device) {
  int n = device_count();
  MT_CHECK(device >= 0 && device < n, TypeError, "CUDA device ", device, " does not exist: ", n,
           " CUDA device(s) visible");
  return states()[device];
}
}  // namespace

bool built_with_cuda() { return true; }

int device_count() {
  static const int count = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) { cudaGetLastError(); return 0; }
    return n;
  }();
  return count;
}

bool cuda_available() { return device_count() > 0; }

void synchronize(Device device) {
  if (!device.is_cuda()) return;
  cuda::DeviceGuard g(device.index);
  MT_CUDA_CHECK(cudaStreamSynchronize(cuda::stream(device.index)));
}

void* current_stream(int device) {
  std::lock_guard<std::mutex> l(g_mu);
  return state(device).stream;
}

void set_current_stream(int device, void* stream) {
  cudaStream_t old;
  {
    std::lock_guard<std::mutex> l(g_mu);
    old = state(device).stream;
  }
  cuda::DeviceGuard g(device);
  MT_CUDA_CHECK(cudaStreamSynchronize(old));
  std::lock_guard<std::mutex> l(g_mu);
  state(device).stream = static_cast<cudaStream_t>(stream);
}

void stream_wait(int device, void* waiting, void* producer) {
  if (waiting == producer) return;
  cuda::DeviceGuard g(device);
  cudaEvent_t ev;
  MT_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
  MT_CUDA_CHECK(cudaEventRecord(ev, static_cast<cudaStream_t>(producer)));
  MT_CUDA_CHECK(cudaStreamWaitEvent(static_cast<cudaStream_t>(waiting), ev, 0));
  MT_CUDA_CHECK(cudaEventDestroy(ev));
}

namespace cuda {

DeviceGuard::DeviceGuard(int device) {
  MT_CUDA_CHECK(cudaGetDevice(&prev_));
  if (prev_ != device) MT_CUDA_CHECK(cudaSetDevice(device));
}
DeviceGuard::~DeviceGuard() {
  int cur = -1;
  if (cudaGetDevice(&cur) == cudaSuccess && cur != prev_) cudaSetDevice(prev_);
}

cudaStream_t stream(int device) { return static_cast<cudaStream_t>(current_stream(device)); }

cublasLtHandle_t cublaslt(int device) {
  std::lock_guard<std::mutex> l(g_mu);
  DeviceState& s = state(device);
  if (!s.lt) {
    DeviceGuard g(device);
    MT_CUBLAS_CHECK(cublasLtCreate(&s.lt));
  }
  return s.lt;
}

void* cublaslt_workspace(int device, size_t* bytes) {
  std::lock_guard<std::mutex> l(g_mu);
  DeviceState& s = state(device);
  if (!s.workspace) {
    s.workspace_bytes = size_t(32) << 20;  // what cuBLAS asks for on Hopper
    s.workspace = detail::allocator_for(Device::cuda(device)).allocate(s.workspace_bytes);
  }
  *bytes = s.workspace_bytes;
  return s.workspace;
}

}  // namespace cuda

#else  // CPU-only build

bool built_with_cuda() { return false; }
int device_count() { return 0; }
bool cuda_available() { return false; }
void synchronize(Device device) {
  MT_CHECK(device.is_cpu(), TypeError, "synchronize(", device.str(), "): mambatron was built without CUDA");
}
void* current_stream(int device) {
  throw TypeError("current_stream(" + std::to_string(device) + "): mambatron was built without CUDA");
}
void set_current_stream(int device, void*) {
  throw TypeError("set_current_stream(" + std::to_string(device) + "): mambatron was built without CUDA");
}
void stream_wait(int device, void*, void*) {
  throw TypeError("stream_wait(" + std::to_string(device) + "): mambatron was built without CUDA");
}

#endif

}  // namespace mambatron
