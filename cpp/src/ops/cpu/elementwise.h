// Helpers for CPU elementwise loops over strided tensors.
#pragma once
#include <type_traits>
#include <vector>

#include "mambatron/tensor.h"

namespace mambatron::cpu {

// Converts one value between element types, rounding to nearest-even into bf16/f16.
template <class D, class S>
inline D cast_value(S s) {
  constexpr bool s16 = std::is_same_v<S, bfloat16> || std::is_same_v<S, float16>;
  constexpr bool d16 = std::is_same_v<D, bfloat16> || std::is_same_v<D, float16>;
  if constexpr (std::is_same_v<D, S>) return s;
  else if constexpr (s16) return cast_value<D>(float(s));
  else if constexpr (d16 && std::is_integral_v<S>) return D(double(s));
  else if constexpr (d16) return D(s);
  else return static_cast<D>(s);
}

// Calls f(offset_a, offset_b) (in elements) for every index of `shape`, in
// row-major order, for two tensors with their own strides.
template <class F>
void for_each_offset2(const Shape& shape, const Shape& sa, const Shape& sb, F&& f) {
  int nd = int(shape.size());
  int64_t n = shape_numel(shape);
  if (n == 0) return;
  std::vector<int64_t> idx(nd, 0);
  int64_t oa = 0, ob = 0;
  for (int64_t i = 0; i < n; ++i) {
    f(oa, ob);
    for (int d = nd - 1; d >= 0; --d) {
      if (++idx[d] < shape[d]) { oa += sa[d]; ob += sb[d]; break; }
      oa -= sa[d] * (shape[d] - 1);
      ob -= sb[d] * (shape[d] - 1);
      idx[d] = 0;
    }
  }
}

}  // namespace mambatron::cpu
