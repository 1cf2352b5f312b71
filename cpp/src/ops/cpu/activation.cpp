// Activations on the CPU: elementwise loops in the input dtype, threaded by OpenMP
// over elements (SwiGLU over rows). Each element is read before its output is
// written, so the unary ops may run in place.
#include "activation.h"

#include <cmath>

#include "mambatron/dtype.h"

namespace mambatron::cpu {

namespace {
constexpr int64_t kParallelMin = 1 << 15;  // elements; fewer run on one thread
constexpr double kSqrtHalf = 0.70710678118654752440;     // 1/√2
constexpr double kInvSqrt2Pi = 0.39894228040143267794;  // 1/√(2π)

template <class T>
inline T gelu(T x) { return T(0.5) * x * (T(1) + std::erf(x * T(kSqrtHalf))); }
// d gelu / dx = Φ(x) + x φ(x).
template <class T>
inline T gelu_grad(T x) {
  return T(0.5) * (T(1) + std::erf(x * T(kSqrtHalf))) + x * T(kInvSqrt2Pi) * std::exp(T(-0.5) * x * x);
}

// out[i] = f(x[i]) for a contiguous f32/f64 tensor.
template <class F>
void unary(const char* op, const Tensor& x, Tensor& out, F f) {
  visit_f32_f64(x.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* px = x.data<T>();
    T* po = out.data<T>();
    int64_t n = x.numel();
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
    for (int64_t i = 0; i < n; ++i) po[i] = f(px[i]);
  });
}

// dx[i] = dout[i] · f'(x[i]).
template <class F>
void unary_grad(const char* op, const Tensor& dout, const Tensor& x, Tensor& dx, F fprime) {
  visit_f32_f64(x.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* pd = dout.data<T>();
    const T* px = x.data<T>();
    T* pg = dx.data<T>();
    int64_t n = x.numel();
#pragma omp parallel for schedule(static) if (n >= kParallelMin)
    for (int64_t i = 0; i < n; ++i) pg[i] = pd[i] * fprime(px[i]);
  });
}
}  // namespace

void gelu_forward(const Tensor& x, Tensor& out) {
  unary("gelu_forward", x, out, [](auto v) { return gelu(v); });
}
void gelu_backward(const Tensor& dout, const Tensor& x, Tensor& dx) {
  unary_grad("gelu_backward", dout, x, dx, [](auto v) { return gelu_grad(v); });
}

void squared_relu_forward(const Tensor& x, Tensor& out) {
  unary("squared_relu_forward", x, out, [](auto v) {
    auto r = v > 0 ? v : decltype(v)(0);
    return r * r;
  });
}
void squared_relu_backward(const Tensor& dout, const Tensor& x, Tensor& dx) {
  unary_grad("squared_relu_backward", dout, x, dx, [](auto v) { return v > 0 ? 2 * v : decltype(v)(0); });
}

void silu_forward(const Tensor& x, Tensor& out) {
  unary("silu_forward", x, out, [](auto v) { return silu(v); });
}
void silu_backward(const Tensor& dout, const Tensor& x, Tensor& dx) {
  unary_grad("silu_backward", dout, x, dx, [](auto v) { return silu_grad(v); });
}

// x is [rows, 2f]: a = x[:, :f], b = x[:, f:]; out [rows, f] = silu(a) · b.
void swiglu_forward(const Tensor& x, Tensor& out) {
  visit_f32_f64(x.dtype(), "swiglu_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t f = out.size(-1), rows = f ? out.numel() / f : 0;
    const T* px = x.data<T>();
    T* po = out.data<T>();
#pragma omp parallel for schedule(static) if (rows * f >= kParallelMin)
    for (int64_t r = 0; r < rows; ++r) {
      const T* a = px + r * 2 * f;
      const T* b = a + f;
      T* o = po + r * f;
      for (int64_t j = 0; j < f; ++j) o[j] = silu(a[j]) * b[j];
    }
  });
}

// da = dout · b · silu'(a), db = dout · silu(a); dx = [da | db].
void swiglu_backward(const Tensor& dout, const Tensor& x, Tensor& dx) {
  visit_f32_f64(x.dtype(), "swiglu_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t f = dout.size(-1), rows = f ? dout.numel() / f : 0;
    const T* pd = dout.data<T>();
    const T* px = x.data<T>();
    T* pg = dx.data<T>();
#pragma omp parallel for schedule(static) if (rows * f >= kParallelMin)
    for (int64_t r = 0; r < rows; ++r) {
      const T* a = px + r * 2 * f;
      const T* b = a + f;
      const T* d = pd + r * f;
      T* da = pg + r * 2 * f;
      T* db = da + f;
      for (int64_t j = 0; j < f; ++j) {
        T s = sigmoid(a[j]);
        da[j] = d[j] * b[j] * s * (T(1) + a[j] * (T(1) - s));
        db[j] = d[j] * a[j] * s;
      }
    }
  });
}

}  // namespace mambatron::cpu
