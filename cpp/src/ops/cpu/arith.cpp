// CPU whole-tensor arithmetic: plain loops over contiguous f32/f64 buffers.
#include "arith.h"

#include <cmath>

#include "mambatron/dtype.h"

namespace mambatron::cpu {

namespace {
// out[i] = f(a[i], b[i]) for every element; b may be null for unary maps.
template <class F>
void map2(const char* op, const Tensor& a, const Tensor* b, Tensor& out, F&& f) {
  visit_f32_f64(a.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* pa = a.data<T>();
    const T* pb = b ? b->data<T>() : nullptr;
    T* po = out.data<T>();
    const int64_t n = a.numel();
#pragma omp parallel for if (n > (1 << 16))
    for (int64_t i = 0; i < n; ++i) po[i] = f(pa[i], pb ? pb[i] : T(0));
  });
}
}  // namespace

void add(const Tensor& a, const Tensor& b, Tensor& out) {
  map2("add", a, &b, out, [](auto x, auto y) { return x + y; });
}
void mul(const Tensor& a, const Tensor& b, Tensor& out) {
  map2("mul", a, &b, out, [](auto x, auto y) { return x * y; });
}
void neg_exp(const Tensor& x, Tensor& out) {
  map2("neg_exp", x, nullptr, out, [](auto v, auto) { return -std::exp(v); });
}

}  // namespace mambatron::cpu
