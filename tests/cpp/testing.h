// Helpers shared by the C++ tests: random inputs, comparisons, finite differences.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <type_traits>

#include "mambatron/mambatron.h"

namespace mambatron::testing {

// A fresh seed for every call, so each test draws new inputs (printed on failure).
inline uint64_t fresh_seed() {
  static std::mt19937_64 rng(std::random_device{}());
  return rng();
}

// Random normal values (scaled) in a new contiguous tensor.
inline Tensor randn(const Shape& shape, DType dt = DType::f64, double scale = 1.0, Device dev = Device::cpu()) {
  Generator g(fresh_seed());
  Tensor t = Tensor::randn(shape, dt, dev, &g);
  if (scale != 1.0) {
    Tensor c = t.to(Device::cpu(), DType::f64);
    double* p = c.data<double>();
    for (int64_t i = 0; i < c.numel(); ++i) p[i] *= scale;
    t = c.to(dev, dt);
  }
  return t;
}

// Uniform in [lo, hi).
inline Tensor uniform(const Shape& shape, double lo, double hi, DType dt = DType::f64) {
  Generator g(fresh_seed());
  Tensor t = Tensor::rand(shape, DType::f64, Device::cpu(), &g);
  double* p = t.data<double>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = lo + (hi - lo) * p[i];
  return t.to(dt);
}

// A tensor of NaN, to catch outputs that a kernel leaves unwritten.
inline Tensor poisoned(const Shape& shape, DType dt = DType::f64, Device dev = Device::cpu()) {
  return Tensor::full(shape, std::nan(""), dt, dev);
}

// Element i (row-major over the shape) as double, whatever the dtype, strides or device.
inline std::vector<double> values(const Tensor& t) {
  Tensor c = t.to(Device::cpu(), DType::f64).contiguous();
  const double* p = c.data<double>();
  return std::vector<double>(p, p + c.numel());
}

// max |a - b| / max(max |b|, tiny): one number that says how close two tensors are.
inline double max_rel_error(const Tensor& a, const Tensor& b) {
  auto va = values(a), vb = values(b);
  EXPECT_EQ(va.size(), vb.size());
  double err = 0, scale = 1e-30;
  for (size_t i = 0; i < va.size(); ++i) {
    if (std::isnan(va[i]) || std::isnan(vb[i])) return INFINITY;
    err = std::max(err, std::fabs(va[i] - vb[i]));
    scale = std::max(scale, std::fabs(vb[i]));
  }
  return err / scale;
}

#define EXPECT_CLOSE(a, b, rtol) EXPECT_LE(::mambatron::testing::max_rel_error((a), (b)), (rtol)) << "shape " << ::mambatron::shape_str((a).shape())

// Central finite differences of a scalar loss with respect to the f64 CPU tensor x,
// compared with the analytic gradient `grad`, at up to max_points elements spread over x.
// loss() must read x afresh on each call.
inline void expect_gradient(const std::function<double()>& loss, Tensor x, const Tensor& grad, const char* what,
                            double rtol = 1e-6, int max_points = 48, double eps = 1e-6) {
  ASSERT_EQ(x.dtype(), DType::f64);
  ASSERT_TRUE(x.is_contiguous());
  auto g = values(grad);
  ASSERT_EQ(int64_t(g.size()), x.numel()) << what;
  double* p = x.data<double>();
  int64_t n = x.numel(), step = std::max<int64_t>(1, n / max_points);
  double gscale = 1e-12;
  for (double v : g) gscale = std::max(gscale, std::fabs(v));
  for (int64_t i = 0; i < n; i += step) {
    double orig = p[i];
    p[i] = orig + eps;
    double lp = loss();
    p[i] = orig - eps;
    double lm = loss();
    p[i] = orig;
    double fd = (lp - lm) / (2 * eps);
    EXPECT_NEAR(g[i], fd, rtol * gscale + 1e-9) << what << " element " << i << " of " << n;
  }
}

// sum(w ⊙ y): a scalar loss whose gradient with respect to y is w.
inline double dot(const Tensor& w, const Tensor& y) {
  auto a = values(w), b = values(y);
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Runs f and expects an exception of type E whose message contains every part:
//   expect_error<ValueError>([&] { op(...); }, "argument 'x'", "expected [2, 3]");
//   expect_error<ValueError>([&] { op(...); }, {"argument 'x'", "expected [2, 3]"});
template <class E, class F>
void expect_error(F&& f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "no exception; expected one mentioning \"" << *parts.begin() << "\"";
  } catch (const E& e) {
    const std::string msg = e.what();
    for (const auto& part : parts) EXPECT_NE(msg.find(part), std::string::npos) << "\"" << part << "\" not in: " << msg;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type; message: " << e.what();
  }
}
template <class E, class F, class... S,
          class = std::enable_if_t<(sizeof...(S) > 0) && (std::is_convertible_v<const S&, std::string> && ...)>>
void expect_error(F&& f, const S&... parts) {
  expect_error<E>(std::forward<F>(f), {std::string(parts)...});
}

inline bool has_gpu() { return cuda_available(); }
#define SKIP_WITHOUT_GPU() \
  if (!::mambatron::testing::has_gpu()) GTEST_SKIP() << "no CUDA device visible"

// Whether two tensors hold the same bytes (on any device; two undefined ones are equal).
inline bool same_bits(const Tensor& a, const Tensor& b) {
  if (!a.defined() || !b.defined()) return a.defined() == b.defined();
  Tensor ca = a.to(Device::cpu()).contiguous(), cb = b.to(Device::cpu()).contiguous();
  return ca.nbytes() == cb.nbytes() && std::memcmp(ca.data_ptr(), cb.data_ptr(), ca.nbytes()) == 0;
}

// An input of a CUDA-vs-CPU test: values rounded to dt, on the GPU and as the f32 and
// f64 CPU copies that DESIGN.md's rule compares against.
struct Input {
  Tensor dev, f32, f64;
};
inline Input input_from(const Tensor& values, DType dt) {
  Tensor r = values.to(dt);
  return {r.to(Device::cuda(0)), r.to(DType::f32), r.to(DType::f64)};
}
inline Input input(const Shape& s, DType dt, double scale = 1.0) {
  return input_from(randn(s, DType::f32, scale), dt);
}
// One form of an optional input (an undefined tensor when the input is absent).
inline Tensor opt(const Input& in, Tensor Input::*form) { return in.*form; }

}  // namespace mambatron::testing

namespace mambatron::testing {

inline double max_abs_diff(const Tensor& a, const Tensor& b) {
  auto va = values(a), vb = values(b);
  double e = 0;
  for (size_t i = 0; i < va.size(); ++i) {
    if (std::isnan(va[i]) || std::isnan(vb[i])) return INFINITY;
    e = std::max(e, std::fabs(va[i] - vb[i]));
  }
  return e;
}

// DESIGN.md's rule for CUDA results: the error against an f64 reference is at most
// twice the error of the same computation in the same precision on the CPU, plus a
// small absolute term relative to the reference's scale. `scale_floor` is for outputs
// that cancel to almost nothing (a norm's dx at d = 1): the terms that cancelled set
// the size of the rounding, not the tiny result.
inline void expect_within_rule(const Tensor& cuda_out, const Tensor& cpu_same_precision, const Tensor& ref64,
                               const char* what, double atol_rel = 1e-6, double scale_floor = 0.0) {
  double scale = scale_floor;
  for (double v : values(ref64)) scale = std::max(scale, std::fabs(v));
  double err_cuda = max_abs_diff(cuda_out, ref64), err_cpu = max_abs_diff(cpu_same_precision, ref64);
  EXPECT_LE(err_cuda, 2 * err_cpu + atol_rel * scale)
      << what << ": CUDA error " << err_cuda << ", CPU error " << err_cpu << ", scale " << scale;
}

// A CUDA result `gpu` against the f64 reference, the CPU's own error being `cpu32`
// (the CPU op in f32) rounded to gpu's dtype. `floor`: the size of terms that cancel.
inline void check_cuda(const Tensor& gpu, const Tensor& cpu32, const Tensor& ref64, const std::string& what,
                       double floor = 0.0) {
  ASSERT_TRUE(gpu.is_cuda()) << what;
  Tensor same = cpu32.to(gpu.dtype()).to(DType::f64);
  expect_within_rule(gpu, same, ref64, what.c_str(), 1e-5, floor);
}

// Random document ids i32 [b, l], non-decreasing along each row: a new document starts
// at any token with probability 1 / one_in (ids may skip, as packed data allows).
inline Tensor random_doc_ids(int64_t b, int64_t l, int one_in) {
  std::mt19937_64 rng(fresh_seed());
  Tensor s = Tensor::empty({b, l}, DType::i32);
  for (int64_t i = 0; i < b; ++i) {
    int32_t id = int32_t(rng() % 5);
    for (int64_t t = 0; t < l; ++t) {
      if (t > 0 && rng() % uint64_t(one_in) == 0) id += 1 + int32_t(rng() % 2);
      s.data<int32_t>()[i * l + t] = id;
    }
  }
  return s;
}

}  // namespace mambatron::testing
