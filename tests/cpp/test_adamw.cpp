// AdamW and the global gradient norm: against loops written here, several steps, f32
// against f64, determinism over thread counts, clipping, non-finite norms, errors.
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "testing.h"

namespace mt = mambatron;
using mt::testing::expect_error;
using mt::AdamWOptions;
using mt::DType;
using mt::Tensor;
using mt::testing::max_rel_error;
using mt::testing::randn;
using mt::testing::values;

namespace {

Tensor random_decay_mask(int64_t n) {
  std::mt19937_64 rng(mt::testing::fresh_seed());
  Tensor m = Tensor::empty({n}, DType::u8);
  for (int64_t i = 0; i < n; ++i) m.data<uint8_t>()[i] = uint8_t(rng() % 2);
  return m;
}

// One AdamW step written out in f64, as ops.h states it.
void naive_adamw(std::vector<double>& p, const std::vector<double>& g, std::vector<double>& m, std::vector<double>& v,
                 const std::vector<double>& mask, const AdamWOptions& o) {
  for (size_t i = 0; i < p.size(); ++i) {
    m[i] = o.beta1 * m[i] + (1 - o.beta1) * g[i];
    v[i] = o.beta2 * v[i] + (1 - o.beta2) * g[i] * g[i];
    double mhat = m[i] / (1 - std::pow(o.beta1, double(o.step)));
    double vhat = v[i] / (1 - std::pow(o.beta2, double(o.step)));
    if (mask.empty() || mask[i] != 0) p[i] -= o.lr * o.weight_decay * p[i];
    p[i] -= o.lr * mhat / (std::sqrt(vhat) + o.eps);
  }
}

// The same memory labelled as a CUDA tensor: never read, it reaches only the device checks.
Tensor on_cuda(const Tensor& t) {
  return Tensor::from_blob(t.data_ptr(), t.shape(), t.strides(), t.dtype(), mt::Device::cuda(0), t.storage());
}

double naive_norm(const std::vector<Tensor>& ts) {
  long double s = 0;
  for (const Tensor& t : ts)
    for (double x : values(t)) s += (long double)x * x;
  return double(std::sqrt(s));
}

}  // namespace

TEST(AdamwUpdate, MatchesNaiveLoopOverSeveralSteps) {
  const int64_t N = 1037;
  for (bool with_mask : {true, false}) {
    Tensor p = randn({N}), m = Tensor::zeros({N}, DType::f64), v = Tensor::zeros({N}, DType::f64);
    Tensor mask = with_mask ? random_decay_mask(N) : Tensor();
    std::vector<double> P = values(p), M(N, 0.0), Vv(N, 0.0), MK;
    if (with_mask) MK = values(mask);
    AdamWOptions o;
    o.lr = 3e-3;
    for (int64_t t = 1; t <= 6; ++t) {
      o.step = t;
      o.lr *= 0.9;  // a schedule: the op must use the lr of each call
      Tensor g = randn({N}, DType::f64, 0.1 * double(t));
      mt::adamw_update(p, g, m, v, mask, o);
      naive_adamw(P, values(g), M, Vv, MK, o);
    }
    auto got_p = values(p), got_m = values(m), got_v = values(v);
    for (int64_t i = 0; i < N; ++i) {
      ASSERT_NEAR(got_p[i], P[i], 1e-14 * std::max(1.0, std::fabs(P[i]))) << i;
      ASSERT_NEAR(got_m[i], M[i], 1e-15) << i;
      ASSERT_NEAR(got_v[i], Vv[i], 1e-15) << i;
    }
  }
}

// Step 1 from zero state: m̂ = g and v̂ = g², so the step is lr·g/(|g| + eps) after decay.
TEST(AdamwUpdate, FirstStepClosedForm) {
  const int64_t N = 101;
  Tensor p = randn({N}), g = randn({N}), m = Tensor::zeros({N}, DType::f64), v = Tensor::zeros({N}, DType::f64);
  Tensor mask = random_decay_mask(N);
  auto P = values(p), G = values(g), MK = values(mask);
  AdamWOptions o;
  o.lr = 0.01;
  o.weight_decay = 0.3;
  o.eps = 1e-3;
  mt::adamw_update(p, g, m, v, mask, o);
  auto got = values(p);
  for (int64_t i = 0; i < N; ++i) {
    double decayed = MK[i] ? P[i] * (1 - o.lr * o.weight_decay) : P[i];
    EXPECT_NEAR(got[i], decayed - o.lr * G[i] / (std::fabs(G[i]) + o.eps), 1e-15) << i;
  }
}

// The overload with a working copy: the same step, and the copy holds the new params
// in its own dtype.
TEST(AdamwUpdate, WritesTheParamsCopy) {
  const int64_t N = 57;
  Tensor p = randn({N}), g = randn({N}), m = randn({N}), v = Tensor::full({N}, 0.5, DType::f64);
  Tensor p2 = p.clone(), m2 = m.clone(), v2 = v.clone(), copy = Tensor::full({N}, NAN, DType::f32);
  AdamWOptions o;
  o.step = 3;
  mt::adamw_update(p, g, m, v, Tensor(), o);
  mt::adamw_update(p2, g, m2, v2, Tensor(), o, copy);
  EXPECT_EQ(values(p2), values(p));
  EXPECT_EQ(values(copy), values(p.to(DType::f32)));
  Tensor bad = Tensor::empty({N}, DType::i32), short_copy = Tensor::empty({N - 1}, DType::f64);
  EXPECT_THROW(mt::adamw_update(p2, g, m2, v2, Tensor(), o, bad), mt::TypeError);
  EXPECT_THROW(mt::adamw_update(p2, g, m2, v2, Tensor(), o, short_copy), mt::ValueError);
}

TEST(AdamwUpdate, Fp32MatchesFp64) {
  const int64_t N = 4099;
  Tensor p32 = randn({N}, DType::f32), p64 = p32.to(DType::f64);
  Tensor m32 = randn({N}, DType::f32, 0.01), v32 = mt::testing::uniform({N}, 1e-4, 2e-4, DType::f32);
  Tensor m64 = m32.to(DType::f64), v64 = v32.to(DType::f64);
  Tensor mask = random_decay_mask(N);
  AdamWOptions o;
  o.lr = 1e-3;
  for (int64_t t = 5; t <= 8; ++t) {
    o.step = t;
    Tensor g32 = randn({N}, DType::f32, 0.01);
    mt::adamw_update(p32, g32, m32, v32, mask, o);
    mt::adamw_update(p64, g32.to(DType::f64), m64, v64, mask, o);
  }
  EXPECT_LE(max_rel_error(p32, p64), 1e-5);
  EXPECT_LE(max_rel_error(m32, m64), 1e-5);
  EXPECT_LE(max_rel_error(v32, v64), 1e-5);
}

TEST(AdamwUpdate, RejectsBadArguments) {
  const int64_t N = 7;
  Tensor p = randn({N}), g = randn({N}), m = randn({N}), v = Tensor::full({N}, 0.5, DType::f64);
  Tensor mask = random_decay_mask(N);
  AdamWOptions o;
  using mt::TypeError;
  using mt::ValueError;
  Tensor p2 = randn({N, 1}), pbf = p.to(DType::bf16), m32 = m.to(DType::f32), v_short = randn({N - 1});
  expect_error<ValueError>([&] { mt::adamw_update(p2, g, m, v, mask, o); }, "'params' has shape [7, 1]");
  expect_error<TypeError>([&] { mt::adamw_update(pbf, g, m, v, mask, o); }, "'params'");
  expect_error<ValueError>([&] { mt::adamw_update(p, randn({N + 1}), m, v, mask, o); },
                           "'grads' has shape [8], expected [7]");
  expect_error<TypeError>([&] { mt::adamw_update(p, g, m32, v, mask, o); }, "'exp_avg'");
  expect_error<ValueError>([&] { mt::adamw_update(p, g, m, v_short, mask, o); }, "'exp_avg_sq' has shape [6]");
  expect_error<TypeError>([&] { mt::adamw_update(p, g, m, v, mask.to(DType::f32), o); }, "'decay_mask'");
  expect_error<ValueError>([&] { mt::adamw_update(p, g, m, v, random_decay_mask(N + 2), o); }, "'decay_mask'");
  AdamWOptions bad = o;
  bad.step = 0;
  expect_error<ValueError>([&] { mt::adamw_update(p, g, m, v, mask, bad); }, "step");
  bad = o;
  bad.beta2 = 1.0;
  expect_error<ValueError>([&] { mt::adamw_update(p, g, m, v, mask, bad); }, "beta2");
  bad = o;
  bad.eps = 0;
  expect_error<ValueError>([&] { mt::adamw_update(p, g, m, v, mask, bad); }, "eps");
  bad = o;
  bad.lr = -1;
  expect_error<ValueError>([&] { mt::adamw_update(p, g, m, v, mask, bad); }, "lr");
  bad = o;
  bad.weight_decay = NAN;
  expect_error<ValueError>([&] { mt::adamw_update(p, g, m, v, mask, bad); }, "weight_decay");
  Tensor cp = on_cuda(p), cm = on_cuda(m), cv = on_cuda(v);
  expect_error<TypeError>([&] { mt::adamw_update(p, on_cuda(g), m, v, mask, o); }, "'grads' is on cuda:0");
  expect_error<TypeError>([&] { mt::adamw_update(p, g, m, v, on_cuda(mask), o); }, "'decay_mask' is on cuda:0");
  expect_error<TypeError>([&] { mt::adamw_update(cp, on_cuda(g), cm, cv, on_cuda(mask), o); }, "on CUDA");
}

TEST(AdamwGradNorm, MatchesNaiveAndSplitsFreely) {
  // Several tensors (one larger than a reduction block) equal their concatenation.
  std::vector<Tensor> parts = {randn({3, 37}), randn({40000}), randn({1}), randn({0}), randn({5, 7, 11})};
  int64_t total = 0;
  for (auto& t : parts) total += t.numel();
  Tensor flat = Tensor::empty({total}, DType::f64);
  int64_t o = 0;
  for (auto& t : parts)
    for (double x : values(t)) flat.data<double>()[o++] = x;
  double ref = naive_norm(parts);
  EXPECT_NEAR(mt::grad_norm(parts), ref, 1e-14 * ref);
  EXPECT_NEAR(mt::grad_norm({flat}), ref, 1e-14 * ref);
  EXPECT_EQ(mt::grad_norm({}), 0.0);
  EXPECT_EQ(mt::grad_norm({Tensor::zeros({9}, DType::f64)}), 0.0);
  // f32 elements are summed in f64: the result is the f64 norm of the f32 values.
  std::vector<Tensor> p32;
  for (auto& t : parts) p32.push_back(t.to(DType::f32));
  double ref32 = naive_norm(p32);
  EXPECT_NEAR(mt::grad_norm(p32), ref32, 1e-14 * ref32);
  EXPECT_NEAR(mt::grad_norm(p32), ref, 1e-6 * ref);
}

TEST(AdamwGradNorm, DeterministicOverThreadCounts) {
#ifdef _OPENMP
  std::vector<Tensor> g = {randn({100003}, DType::f32, 1e-3), randn({70001}, DType::f32)};
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  double one = mt::grad_norm(g);
  for (int threads : {2, 3, 7}) {
    omp_set_num_threads(threads);
    EXPECT_EQ(mt::grad_norm(g), one) << threads << " threads";
  }
  omp_set_num_threads(saved);
#else
  GTEST_SKIP() << "built without OpenMP";
#endif
}

TEST(AdamwGradNorm, HugeAndTinyF64ValuesDoNotOverflow) {
  for (double scale : {1e200, 1e-200}) {
    Tensor g = randn({5003}, DType::f64, scale);
    double ref = 0;
    {
      long double s = 0;
      for (double x : values(g)) s += (long double)(x / scale) * (x / scale);
      ref = double(std::sqrt(s)) * scale;
    }
    double got = mt::grad_norm({g});
    EXPECT_TRUE(std::isfinite(got));
    EXPECT_NEAR(got, ref, 1e-13 * ref) << scale;
  }
}

TEST(AdamwGradNorm, ClipScalesOnlyAboveMaxNorm) {
  std::vector<Tensor> g = {randn({301}), randn({17, 3})};
  std::vector<Tensor> before = {g[0].clone(), g[1].clone()};
  double norm = naive_norm(g);
  // Below the limit: nothing changes.
  EXPECT_NEAR(mt::clip_grad_norm(g, norm * 2), norm, 1e-14 * norm);
  EXPECT_EQ(max_rel_error(g[0], before[0]), 0.0);
  EXPECT_EQ(max_rel_error(g[1], before[1]), 0.0);
  // Above: scaled by max_norm / (norm + 1e-6), the norm returned is the one before.
  double max_norm = norm / 3;
  EXPECT_NEAR(mt::clip_grad_norm(g, max_norm), norm, 1e-14 * norm);
  double s = max_norm / (norm + 1e-6);
  for (int k = 0; k < 2; ++k) {
    auto a = values(g[k]), b = values(before[k]);
    for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(a[i], b[i] * s, 1e-15 * std::fabs(b[i]));
  }
  EXPECT_NEAR(mt::grad_norm(g), max_norm, 1e-6);
  // f32 gradients.
  Tensor g32 = randn({1001}, DType::f32, 10.0);
  double n32 = mt::clip_grad_norm({g32}, 1.0);
  EXPECT_GT(n32, 1.0);
  EXPECT_NEAR(mt::grad_norm({g32}), 1.0, 1e-5);
}

TEST(AdamwGradNorm, NonFiniteNormIsReportedAndGradsUntouched) {
  for (double bad : {std::numeric_limits<double>::infinity(), -std::numeric_limits<double>::infinity(),
                     std::nan("")}) {
    std::vector<Tensor> g = {randn({50}), randn({70000})};
    g[1].data<double>()[65000] = bad;
    std::vector<double> before = values(g[0]);
    double norm = mt::clip_grad_norm(g, 1.0);
    if (std::isnan(bad)) EXPECT_TRUE(std::isnan(norm));
    else EXPECT_EQ(norm, std::numeric_limits<double>::infinity());
    auto after = values(g[0]);
    for (size_t i = 0; i < after.size(); ++i) EXPECT_EQ(after[i], before[i]);
  }
  // NaN wins over inf.
  Tensor g = randn({10});
  g.data<double>()[2] = INFINITY;
  g.data<double>()[7] = NAN;
  EXPECT_TRUE(std::isnan(mt::grad_norm({g})));
}

TEST(AdamwGradNorm, RejectsBadArguments) {
  using mt::TypeError;
  using mt::ValueError;
  Tensor a = randn({5}), b = randn({6});
  expect_error<TypeError>([&] { mt::grad_norm({a, b.to(DType::f32)}); }, "'grads[1]' has dtype f32");
  expect_error<TypeError>([&] { mt::grad_norm({a.to(DType::i32)}); }, "'grads[0]'");
  expect_error<ValueError>([&] { mt::grad_norm({a, Tensor()}); }, "'grads[1]'");
  expect_error<ValueError>([&] { mt::grad_norm({randn({4, 3}).transpose(0, 1)}); }, "'grads[0]'");
  expect_error<ValueError>([&] { mt::clip_grad_norm({a}, 0.0); }, "max_norm");
  expect_error<ValueError>([&] { mt::clip_grad_norm({a}, NAN); }, "max_norm");
  expect_error<TypeError>([&] { mt::grad_norm({a, on_cuda(b)}); }, "'grads[1]' is on cuda:0");
  expect_error<TypeError>([&] { mt::clip_grad_norm({on_cuda(a)}, 1.0); }, "on CUDA");
}
