// Activations on CUDA: grid-stride elementwise kernels with 16-byte vector
// accesses when every pointer is aligned (a scalar loop covers the tail, or
// everything otherwise), f32 math. Each thread reads its elements before it
// writes them, so the unary ops may run in place as on the CPU.
#include "activation.h"
#include "dense.cuh"

namespace mambatron::cuda {

namespace {
constexpr int kThreads = 256;

// Numerically safe sigmoid: e^-|x| never overflows.
__device__ __forceinline__ float sigmoidf(float x) {
  if (x >= 0.f) return 1.f / (1.f + expf(-x));
  const float e = expf(x);
  return e / (1.f + e);
}

struct Gelu {
  __device__ float operator()(float x) const { return 0.5f * x * (1.f + erff(x * 0.70710678118654752f)); }
};
struct GeluGrad {  // Φ(x) + x φ(x)
  __device__ float operator()(float x) const {
    return 0.5f * (1.f + erff(x * 0.70710678118654752f)) + x * 0.39894228040143268f * expf(-0.5f * x * x);
  }
};
struct SquaredRelu {
  __device__ float operator()(float x) const { const float r = x > 0.f ? x : 0.f; return r * r; }
};
struct SquaredReluGrad {
  __device__ float operator()(float x) const { return x > 0.f ? 2.f * x : 0.f; }
};
struct Silu {
  __device__ float operator()(float x) const { return x * sigmoidf(x); }
};
struct SiluGrad {  // σ(x) (1 + x (1 − σ(x)))
  __device__ float operator()(float x) const { const float s = sigmoidf(x); return s * (1.f + x * (1.f - s)); }
};

// out[i] = f(x[i]) (G = false) or dout[i] · f(x[i]) (G = true, d = dout).
template <class T, class F, bool G>
__device__ __forceinline__ T apply(F f, T xv, T dv) {
  const float y = f(to_f32(xv));
  return from_f32<T>(G ? to_f32(dv) * y : y);
}

template <class T, class F, bool G>
__global__ void map_kernel(const T* x, const T* d, T* out, int64_t n,  // out may alias x or d
                           bool vec, F f) {
  using P = Pack<T>;
  const int64_t tid = blockIdx.x * int64_t(blockDim.x) + threadIdx.x, step = int64_t(gridDim.x) * blockDim.x;
  const int64_t packs = vec ? n / P::N : 0;
  for (int64_t p = tid; p < packs; p += step) {
    const P xp = reinterpret_cast<const P*>(x)[p];
    P dp, op;
    if constexpr (G) dp = reinterpret_cast<const P*>(d)[p];
#pragma unroll
    for (int k = 0; k < P::N; ++k) op.v[k] = apply<T, F, G>(f, xp.v[k], G ? dp.v[k] : T{});
    reinterpret_cast<P*>(out)[p] = op;
  }
  for (int64_t i = packs * P::N + tid; i < n; i += step) out[i] = apply<T, F, G>(f, x[i], G ? d[i] : T{});
}

template <class F>
void map(const char* op, const Tensor& x, const Tensor* dout, Tensor& out, F f) {
  const int dev = x.device().index;
  DeviceGuard guard(dev);
  const int64_t n = x.numel();
  if (n == 0) return;
  visit_bf16_f32(x.dtype(), op, "x", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* px = static_cast<const T*>(x.data_ptr());
    const T* pd = dout ? static_cast<const T*>(dout->data_ptr()) : nullptr;
    T* po = static_cast<T*>(out.data_ptr());
    const bool vec = aligned16({px, pd, po});
    const int64_t work = vec ? n / Pack<T>::N + Pack<T>::N : n;
    if (dout) map_kernel<T, F, true><<<grid_for(work, kThreads), kThreads, 0, stream(dev)>>>(px, pd, po, n, vec, f);
    else map_kernel<T, F, false><<<grid_for(work, kThreads), kThreads, 0, stream(dev)>>>(px, pd, po, n, vec, f);
    MT_CUDA_LAUNCH_CHECK();
  });
}

// x [rows, 2f]: a = x[r, j], b = x[r, f + j]. Forward: out [rows, f] = silu(a) · b.
// Backward: dx[r, j] = dout · b · silu'(a), dx[r, f + j] = dout · silu(a).
// A pack of V consecutive j never crosses a row when V divides f.
template <class T, bool Backward>
__global__ void swiglu_kernel(const T* __restrict__ x, const T* __restrict__ dout, T* __restrict__ y, int64_t rows,
                              int64_t f, bool vec) {
  using P = Pack<T>;
  const int64_t tid = blockIdx.x * int64_t(blockDim.x) + threadIdx.x, step = int64_t(gridDim.x) * blockDim.x;
  const int64_t width = vec ? P::N : 1, units = rows * f / width;
  for (int64_t u = tid; u < units; u += step) {
    const int64_t i = u * width, r = i / f, j = i - r * f;
    const int64_t ia = r * 2 * f + j, ib = ia + f;
    P a, b, d, o1, o2;
    if (vec) {
      a = *reinterpret_cast<const P*>(x + ia);
      b = *reinterpret_cast<const P*>(x + ib);
      if constexpr (Backward) d = *reinterpret_cast<const P*>(dout + i);
    } else {
      a.v[0] = x[ia];
      b.v[0] = x[ib];
      if constexpr (Backward) d.v[0] = dout[i];
    }
    for (int k = 0; k < width; ++k) {
      const float av = to_f32(a.v[k]), bv = to_f32(b.v[k]), s = sigmoidf(av);
      if constexpr (Backward) {
        const float dv = to_f32(d.v[k]);
        o1.v[k] = from_f32<T>(dv * bv * s * (1.f + av * (1.f - s)));
        o2.v[k] = from_f32<T>(dv * av * s);
      } else {
        o1.v[k] = from_f32<T>(av * s * bv);
      }
    }
    if (vec) {
      if constexpr (Backward) {
        *reinterpret_cast<P*>(y + ia) = o1;
        *reinterpret_cast<P*>(y + ib) = o2;
      } else {
        *reinterpret_cast<P*>(y + i) = o1;
      }
    } else if constexpr (Backward) {
      y[ia] = o1.v[0];
      y[ib] = o2.v[0];
    } else {
      y[i] = o1.v[0];
    }
  }
}

template <bool Backward>
void swiglu(const char* op, const Tensor& x, const Tensor* dout, Tensor& y, int64_t f) {
  const int dev = x.device().index;
  DeviceGuard guard(dev);
  const int64_t rows = f ? x.numel() / (2 * f) : 0;
  if (rows * f == 0) return;
  visit_bf16_f32(x.dtype(), op, "x", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* px = static_cast<const T*>(x.data_ptr());
    const T* pd = dout ? static_cast<const T*>(dout->data_ptr()) : nullptr;
    T* py = static_cast<T*>(y.data_ptr());
    const bool vec = f % Pack<T>::N == 0 && aligned16({px, pd, py});
    const int64_t units = rows * f / (vec ? Pack<T>::N : 1);
    swiglu_kernel<T, Backward><<<grid_for(units, kThreads), kThreads, 0, stream(dev)>>>(px, pd, py, rows, f, vec);
    MT_CUDA_LAUNCH_CHECK();
  });
}
}  // namespace

void gelu_forward(const Tensor& x, Tensor& out) { map("gelu_forward", x, nullptr, out, Gelu{}); }
void gelu_backward(const Tensor& dout, const Tensor& x, Tensor& dx) { map("gelu_backward", x, &dout, dx, GeluGrad{}); }
void squared_relu_forward(const Tensor& x, Tensor& out) { map("squared_relu_forward", x, nullptr, out, SquaredRelu{}); }
void squared_relu_backward(const Tensor& dout, const Tensor& x, Tensor& dx) {
  map("squared_relu_backward", x, &dout, dx, SquaredReluGrad{});
}
void silu_forward(const Tensor& x, Tensor& out) { map("silu_forward", x, nullptr, out, Silu{}); }
void silu_backward(const Tensor& dout, const Tensor& x, Tensor& dx) { map("silu_backward", x, &dout, dx, SiluGrad{}); }
void swiglu_forward(const Tensor& x, Tensor& out) { swiglu<false>("swiglu_forward", x, nullptr, out, out.size(-1)); }
void swiglu_backward(const Tensor& dout, const Tensor& x, Tensor& dx) {
  swiglu<true>("swiglu_backward", x, &dout, dx, dout.size(-1));
}

}  // namespace mambatron::cuda
