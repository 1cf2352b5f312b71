// CUDA whole-tensor arithmetic: one grid-stride kernel with 16-byte vector
// accesses when every pointer is aligned (a scalar loop covers the tail). Each
// thread reads its elements before writing them, so out may alias an input.
#include "arith.h"
#include "dense.cuh"

namespace mambatron::cuda {

namespace {
constexpr int kThreads = 256;

struct Add {
  __device__ float operator()(float a, float b) const { return a + b; }
};
struct Mul {
  __device__ float operator()(float a, float b) const { return a * b; }
};
struct NegExp {
  __device__ float operator()(float a, float) const { return -expf(a); }
};

template <class T, class F>
__global__ void map2_kernel(const T* a, const T* b, T* out, int64_t n, bool vec, F f) {
  using P = Pack<T>;
  const int64_t tid = blockIdx.x * int64_t(blockDim.x) + threadIdx.x, step = int64_t(gridDim.x) * blockDim.x;
  const int64_t packs = vec ? n / P::N : 0;
  for (int64_t p = tid; p < packs; p += step) {
    const P ap = reinterpret_cast<const P*>(a)[p];
    P bp, op;
    if (b) bp = reinterpret_cast<const P*>(b)[p];
#pragma unroll
    for (int k = 0; k < P::N; ++k) op.v[k] = from_f32<T>(f(to_f32(ap.v[k]), b ? to_f32(bp.v[k]) : 0.f));
    reinterpret_cast<P*>(out)[p] = op;
  }
  for (int64_t i = packs * P::N + tid; i < n; i += step) out[i] = from_f32<T>(f(to_f32(a[i]), b ? to_f32(b[i]) : 0.f));
}

template <class F>
void map2(const char* op, const Tensor& a, const Tensor* b, Tensor& out, F f) {
  const int dev = a.device().index;
  DeviceGuard guard(dev);
  const int64_t n = a.numel();
  if (n == 0) return;
  visit_bf16_f32(a.dtype(), op, "a", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* pa = static_cast<const T*>(a.data_ptr());
    const T* pb = b ? static_cast<const T*>(b->data_ptr()) : nullptr;
    T* po = static_cast<T*>(out.data_ptr());
    const bool vec = aligned16({pa, pb, po});
    const int64_t work = vec ? n / Pack<T>::N + Pack<T>::N : n;
    map2_kernel<T, F><<<grid_for(work, kThreads), kThreads, 0, stream(dev)>>>(pa, pb, po, n, vec, f);
    MT_CUDA_LAUNCH_CHECK();
  });
}
}  // namespace

void add(const Tensor& a, const Tensor& b, Tensor& out) { map2("add", a, &b, out, Add{}); }
void mul(const Tensor& a, const Tensor& b, Tensor& out) { map2("mul", a, &b, out, Mul{}); }
void neg_exp(const Tensor& x, Tensor& out) { map2("neg_exp", x, nullptr, out, NegExp{}); }

}  // namespace mambatron::cuda
