// Helpers for the embedding, norm and activation tests.
#pragma once
#include <omp.h>

#include <cmath>
#include <cstring>
#include <initializer_list>
#include <string>
#include <vector>

#include "testing.h"

namespace mambatron::testing::dense {

// Runs f and expects an exception of type E whose message contains every part.
// t's memory labelled as living on cuda:0, to reach the device checks on a machine
// without a GPU; the checks throw before any data is touched.
inline Tensor fake_cuda(const Tensor& t) {
  return Tensor::from_blob(t.data_ptr(), t.shape(), t.strides(), t.dtype(), Device::cuda(0), t.storage());
}

// A tensor of t's shape and dtype whose memory is not contiguous (every other column).
inline Tensor strided_like(const Tensor& t) {
  Shape wide = t.shape();
  wide.back() *= 2;
  return Tensor::empty(wide, t.dtype()).slice(t.dim() - 1, 0, wide.back(), 2);
}

// max |t − ref| / max |ref| over all elements; NaN anywhere fails.
inline double rel_error(const Tensor& t, const std::vector<double>& ref) {
  auto v = values(t);
  EXPECT_EQ(v.size(), ref.size());
  double err = 0, scale = 1e-300;
  for (size_t i = 0; i < v.size() && i < ref.size(); ++i) {
    if (std::isnan(v[i]) || std::isnan(ref[i])) return INFINITY;
    err = std::max(err, std::fabs(v[i] - ref[i]));
    scale = std::max(scale, std::fabs(ref[i]));
  }
  return err / scale;
}

// Runs f with `n` OpenMP threads, then restores the previous count.
template <class F>
void with_threads(int n, F&& f) {
  int before = omp_get_max_threads();
  omp_set_num_threads(n);
  f();
  omp_set_num_threads(before);
}

}  // namespace mambatron::testing::dense
