// Rotary position embedding on the CPU (rotate-half convention). Angles and
// their cos/sin are computed in double for every dtype, so f32 differs from f64
// only by the rounding of the rotation itself, even at large positions.
#include <cmath>
#include <vector>

#include "attention.h"

namespace mambatron::cpu {

namespace {

template <class T>
void rope_typed(const T* x, T* out, const int32_t* positions, int64_t b, int64_t l, int64_t h, int64_t p,
                int64_t rotary_dim, double base, bool inverse) {
  const int64_t half = rotary_dim / 2;
  std::vector<double> inv_freq(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) inv_freq[i] = std::pow(base, -2.0 * double(i) / double(rotary_dim));
  // The inverse rotation is the rotation by −θ: the same formula with sin negated.
  const double sign = inverse ? -1.0 : 1.0;
  // Small calls (a decode token) stay on the calling thread: a thread team costs more.
#pragma omp parallel if (b * l * h * p >= (int64_t(1) << 16))
  {
    std::vector<T> cs(static_cast<size_t>(half)), sn(static_cast<size_t>(half));
#pragma omp for schedule(static)
    for (int64_t t = 0; t < b * l; ++t) {
      const double pos = positions ? double(positions[t]) : double(t % l);
      for (int64_t i = 0; i < half; ++i) {
        const double angle = pos * inv_freq[i];
        cs[i] = T(std::cos(angle));
        sn[i] = T(sign * std::sin(angle));
      }
      for (int64_t hh = 0; hh < h; ++hh) {
        const T* xr = x + (t * h + hh) * p;
        T* o = out + (t * h + hh) * p;
        for (int64_t i = 0; i < half; ++i) {
          const T x1 = xr[i], x2 = xr[i + half];  // both read before either is written: out may be x
          o[i] = x1 * cs[i] - x2 * sn[i];
          o[i + half] = x2 * cs[i] + x1 * sn[i];
        }
        if (o != xr)
          for (int64_t i = rotary_dim; i < p; ++i) o[i] = xr[i];
      }
    }
  }
}

}  // namespace

void rope_apply(const Tensor& x, Tensor& out, const Tensor& positions, int64_t rotary_dim, double base,
                bool inverse) {
  const int32_t* pos = positions.data_or_null<int32_t>();
  visit_f32_f64(x.dtype(), inverse ? "rope_backward" : "rope_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    rope_typed<T>(x.data<T>(), out.data<T>(), pos, x.size(0), x.size(1), x.size(2), x.size(3), rotary_dim, base,
                  inverse);
  });
}

}  // namespace mambatron::cpu
