// Rotary position embedding on CUDA (rotate-half). One thread per (token, pair
// i < rotary_dim / 2) forms the angle and its cos/sin in f64, as the CPU op does,
// rounds them once to f32 and rotates that pair in every head of the token; threads
// past the pairs copy the pass-through dims. Each thread reads an element pair
// before writing it, so out may be x.
#include <cmath>

#include "attention.h"
#include "dense.cuh"

namespace mambatron::cuda {

namespace {
constexpr int kThreads = 256;

template <class T>
__global__ void rope_kernel(const T* x, T* out, const int32_t* __restrict__ positions, int64_t tokens, int64_t l,
                            int64_t heads, int64_t p, int64_t rotary_dim, double base, double sign) {
  const int64_t half = rotary_dim / 2, cols = half + (p - rotary_dim), n = tokens * cols;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n; idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = idx / cols, c = idx % cols;
    const T* xt = x + t * heads * p;
    T* ot = out + t * heads * p;
    if (c < half) {
      const double pos = positions ? double(positions[t]) : double(t % l);
      const double angle = pos * pow(base, -2.0 * double(c) / double(rotary_dim));
      double sn, cs;
      sincos(angle, &sn, &cs);
      const float cf = float(cs), sf = float(sign * sn);
      for (int64_t h = 0; h < heads; ++h) {
        const float x1 = to_f32(xt[h * p + c]), x2 = to_f32(xt[h * p + c + half]);
        ot[h * p + c] = from_f32<T>(x1 * cf - x2 * sf);
        ot[h * p + c + half] = from_f32<T>(x2 * cf + x1 * sf);
      }
    } else if (ot != xt) {
      const int64_t e = rotary_dim + (c - half);
      for (int64_t h = 0; h < heads; ++h) ot[h * p + e] = xt[h * p + e];
    }
  }
}
}  // namespace

void rope_apply(const Tensor& x, Tensor& out, const Tensor& positions, int64_t rotary_dim, double base,
                bool inverse) {
  const char* op = inverse ? "rope_backward" : "rope_forward";
  const int dev = x.device().index;
  DeviceGuard guard(dev);
  const int64_t b = x.size(0), l = x.size(1), heads = x.size(2), p = x.size(3);
  const int64_t cols = rotary_dim / 2 + (p - rotary_dim), n = b * l * cols;
  if (n == 0 || heads == 0) return;
  const int32_t* pos = positions.defined() ? static_cast<const int32_t*>(positions.data_ptr()) : nullptr;
  visit_bf16_f32(x.dtype(), op, inverse ? "dout" : "x", [&](auto tag) {
    using T = typename decltype(tag)::type;
    rope_kernel<T><<<grid_for(n, kThreads), kThreads, 0, stream(dev)>>>(
        static_cast<const T*>(x.data_ptr()), static_cast<T*>(out.data_ptr()), pos, b * l, l, heads, p, rotary_dim,
        base, inverse ? -1.0 : 1.0);
    MT_CUDA_LAUNCH_CHECK();
  });
}

}  // namespace mambatron::cuda
