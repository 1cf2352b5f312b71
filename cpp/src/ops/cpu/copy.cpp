// Elementwise copy with dtype conversion, and fill.
#include "../backend.h"
#include "elementwise.h"

namespace mambatron::cpu {

void copy(const Tensor& src, Tensor& dst) {
  visit_dtype(src.dtype(), [&](auto stag) {
    using S = typename decltype(stag)::type;
    visit_dtype(dst.dtype(), [&](auto dtag) {
      using D = typename decltype(dtag)::type;
      const S* s = static_cast<const S*>(src.data_ptr());
      D* d = static_cast<D*>(dst.data_ptr());
      if (src.is_contiguous() && dst.is_contiguous()) {
        int64_t n = dst.numel();
#pragma omp parallel for if (n > (1 << 16))
        for (int64_t i = 0; i < n; ++i) d[i] = cast_value<D>(s[i]);
      } else {
        for_each_offset2(dst.shape(), src.strides(), dst.strides(),
                         [&](int64_t os, int64_t od) { d[od] = cast_value<D>(s[os]); });
      }
    });
  });
}

void fill(Tensor& dst, double value) {
  visit_dtype(dst.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    T v = cast_value<T>(value);
    T* d = static_cast<T*>(dst.data_ptr());
    for_each_offset2(dst.shape(), dst.strides(), dst.strides(), [&](int64_t o, int64_t) { d[o] = v; });
  });
}

}  // namespace mambatron::cpu
