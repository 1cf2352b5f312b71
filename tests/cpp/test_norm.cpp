// Norms (RMSNorm, LayerNorm-1p, gated grouped RMSNorm): forward and saved
// statistics against naive fp64 loops, every gradient against finite differences,
// fp32 against fp64, parameter gradients bitwise equal across thread counts, and
// the argument checks.
#include <cmath>

#include "dense_testing.h"

namespace mt = mambatron;
using mt::DType;
using mt::Shape;
using mt::Tensor;
using namespace mt::testing;
using namespace mt::testing::dense;

namespace {
const double kEps = 1e-5;
const Shape kShape = {2, 13, 37}, kRows = {2, 13};

double sigm(double x) { return 1.0 / (1.0 + std::exp(-x)); }

struct Rms {
  Tensor out, rstd;
};
Rms rms(const Tensor& x, const Tensor& w) {
  Shape rows(x.shape().begin(), x.shape().end() - 1);
  Rms r{poisoned(x.shape(), x.dtype()), poisoned(rows, x.dtype())};
  mt::rmsnorm_forward(x, w, kEps, r.out, r.rstd);
  return r;
}

struct Ln {
  Tensor out, mean, rstd;
};
Ln ln(const Tensor& x, const Tensor& gamma, const Tensor& beta) {
  Shape rows(x.shape().begin(), x.shape().end() - 1);
  Ln r{poisoned(x.shape(), x.dtype()), poisoned(rows, x.dtype()), poisoned(rows, x.dtype())};
  mt::layernorm1p_forward(x, gamma, beta, kEps, r.out, r.mean, r.rstd);
  return r;
}

Rms gated(const Tensor& y, const Tensor& z, const Tensor& w, int64_t groups) {
  Shape gs = y.shape();
  gs.back() = groups;
  Rms r{poisoned(y.shape(), y.dtype()), poisoned(gs, y.dtype())};
  mt::gated_rmsnorm_forward(y, z, w, groups, kEps, r.out, r.rstd);
  return r;
}
}  // namespace

// ---------------------------------------------------------------- RMSNorm

TEST(NormRms, ForwardMatchesNaiveLoop) {
  const int64_t rows = 26, d = 37;
  Tensor x = randn(kShape), w = randn({d});
  auto xv = values(x), wv = values(w);
  std::vector<double> out(xv.size()), rstd(rows);
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t j = 0; j < d; ++j) ss += xv[r * d + j] * xv[r * d + j];
    rstd[r] = 1.0 / std::sqrt(ss / d + kEps);
    for (int64_t j = 0; j < d; ++j) out[r * d + j] = xv[r * d + j] * rstd[r] * wv[j];
  }
  Rms got = rms(x, w);
  EXPECT_LE(rel_error(got.out, out), 1e-14);
  EXPECT_LE(rel_error(got.rstd, rstd), 1e-14);
}

TEST(NormRms, BackwardMatchesFiniteDifferences) {
  Tensor x = randn(kShape), w = randn({37}), g = randn(kShape);
  Rms f = rms(x, w);
  Tensor dx = poisoned(kShape), dw = poisoned({37});
  mt::rmsnorm_backward(g, x, w, f.rstd, dx, dw);
  auto loss = [&] { return dot(g, rms(x, w).out); };
  expect_gradient(loss, x, dx, "x");
  expect_gradient(loss, w, dw, "weight");
}

TEST(NormRms, Float32MatchesFloat64) {
  Tensor x = randn(kShape, DType::f32), w = randn({37}, DType::f32), g = randn(kShape, DType::f32);
  Tensor x64 = x.to(DType::f64), w64 = w.to(DType::f64), g64 = g.to(DType::f64);
  Rms a = rms(x, w), b = rms(x64, w64);
  EXPECT_CLOSE(a.out, b.out, 1e-5);
  EXPECT_CLOSE(a.rstd, b.rstd, 1e-5);
  Tensor dx = poisoned(kShape, DType::f32), dw = poisoned({37}, DType::f32);
  Tensor dx64 = poisoned(kShape), dw64 = poisoned({37});
  mt::rmsnorm_backward(g, x, w, a.rstd, dx, dw);
  mt::rmsnorm_backward(g64, x64, w64, b.rstd, dx64, dw64);
  EXPECT_CLOSE(dx, dx64, 1e-5);
  EXPECT_CLOSE(dw, dw64, 1e-5);
}

TEST(NormRms, RejectsBadArguments) {
  const char* op = "rmsnorm_forward";
  Tensor x = randn({3, 4, 5}), w = randn({5}), out = poisoned({3, 4, 5}), rstd = poisoned({3, 4});
  expect_error<mt::ValueError>([&] { mt::rmsnorm_forward(x, randn({4}), kEps, out, rstd); },
                               {op, "'weight'", "[4]", "expected [5]"});
  expect_error<mt::ValueError>([&] { Tensor r = poisoned({12}); mt::rmsnorm_forward(x, w, kEps, out, r); },
                               {"'rstd'", "expected [3, 4]"});
  expect_error<mt::ValueError>([&] { Tensor o = poisoned({3, 4, 6}); mt::rmsnorm_forward(x, w, kEps, o, rstd); },
                               {"'out'", "expected [3, 4, 5]"});
  expect_error<mt::ValueError>([&] { mt::rmsnorm_forward(Tensor::full({}, 1.0, DType::f64), w, kEps, out, rstd); },
                               {"'x'", "[..., d]"});
  expect_error<mt::ValueError>([&] { mt::rmsnorm_forward(x, w, -1.0, out, rstd); }, {op, "eps"});
  expect_error<mt::TypeError>([&] { mt::rmsnorm_forward(x, w.to(DType::f32), kEps, out, rstd); },
                              {"'weight'", "f32"});
  expect_error<mt::TypeError>([&] { mt::rmsnorm_forward(x.to(DType::i64), w, kEps, out, rstd); }, {"'x'", "i64"});
  expect_error<mt::ValueError>([&] { Tensor o = strided_like(out); mt::rmsnorm_forward(x, w, kEps, o, rstd); },
                               {"'out'", "contiguous"});
  expect_error<mt::TypeError>([&] { Tensor r = fake_cuda(rstd); mt::rmsnorm_forward(x, w, kEps, out, r); },
                              {"'rstd'", "cuda"});
  expect_error<mt::TypeError>(
      [&] { Tensor o = fake_cuda(out), r = fake_cuda(rstd); mt::rmsnorm_forward(fake_cuda(x), fake_cuda(w), kEps, o, r); },
      {op, "on CUDA"});
  Tensor dx = poisoned({3, 4, 5}), dw = poisoned({5});
  expect_error<mt::ValueError>([&] { mt::rmsnorm_backward(randn({3, 4, 4}), x, w, rstd, dx, dw); },
                               {"rmsnorm_backward", "'dout'", "expected [3, 4, 5]"});
  expect_error<mt::ValueError>([&] { mt::rmsnorm_backward(out, x, w, randn({3, 5}), dx, dw); },
                               {"'rstd'", "expected [3, 4]"});
  expect_error<mt::ValueError>([&] { Tensor d = poisoned({3, 20}); mt::rmsnorm_backward(out, x, w, rstd, d, dw); },
                               {"'dx'", "expected [3, 4, 5]"});
  expect_error<mt::ValueError>([&] { Tensor d = poisoned({1, 5}); mt::rmsnorm_backward(out, x, w, rstd, dx, d); },
                               {"'dweight'", "expected [5]"});
  expect_error<mt::TypeError>([&] { mt::rmsnorm_backward(out.to(DType::f32), x, w, rstd, dx, dw); },
                              {"'dout'", "f32"});
}

// ---------------------------------------------------------------- LayerNorm-1p

TEST(NormLayer1p, ForwardMatchesNaiveLoop) {
  const int64_t rows = 26, d = 37;
  Tensor x = randn(kShape, DType::f64, 3.0), gamma = randn({d}, DType::f64, 0.3), beta = randn({d});
  {  // a large common offset, so a one-pass variance would lose digits
    double* p = x.data<double>();
    for (int64_t i = 0; i < x.numel(); ++i) p[i] += 100.0;
  }
  auto xv = values(x), gv = values(gamma), bv = values(beta);
  std::vector<double> out(xv.size()), mean(rows), rstd(rows);
  for (int64_t r = 0; r < rows; ++r) {
    double s = 0, v = 0;
    for (int64_t j = 0; j < d; ++j) s += xv[r * d + j];
    mean[r] = s / d;
    for (int64_t j = 0; j < d; ++j) v += (xv[r * d + j] - mean[r]) * (xv[r * d + j] - mean[r]);
    rstd[r] = 1.0 / std::sqrt(v / d + kEps);
    for (int64_t j = 0; j < d; ++j) out[r * d + j] = (xv[r * d + j] - mean[r]) * rstd[r] * (1.0 + gv[j]) + bv[j];
  }
  Ln got = ln(x, gamma, beta);
  EXPECT_LE(rel_error(got.out, out), 1e-13);
  EXPECT_LE(rel_error(got.mean, mean), 1e-14);
  EXPECT_LE(rel_error(got.rstd, rstd), 1e-13);
}

TEST(NormLayer1p, BackwardMatchesFiniteDifferences) {
  Tensor x = randn(kShape, DType::f64, 2.0), gamma = randn({37}, DType::f64, 0.3), beta = randn({37});
  Tensor g = randn(kShape);
  Ln f = ln(x, gamma, beta);
  Tensor dx = poisoned(kShape), dgamma = poisoned({37}), dbeta = poisoned({37});
  mt::layernorm1p_backward(g, x, gamma, f.mean, f.rstd, dx, dgamma, dbeta);
  auto loss = [&] { return dot(g, ln(x, gamma, beta).out); };
  expect_gradient(loss, x, dx, "x");
  expect_gradient(loss, gamma, dgamma, "gamma");
  expect_gradient(loss, beta, dbeta, "beta");
}

TEST(NormLayer1p, Float32MatchesFloat64) {
  Tensor x = randn(kShape, DType::f32, 2.0), gamma = randn({37}, DType::f32, 0.3), beta = randn({37}, DType::f32);
  Tensor g = randn(kShape, DType::f32);
  Tensor x64 = x.to(DType::f64), ga64 = gamma.to(DType::f64), be64 = beta.to(DType::f64), g64 = g.to(DType::f64);
  Ln a = ln(x, gamma, beta), b = ln(x64, ga64, be64);
  EXPECT_CLOSE(a.out, b.out, 1e-5);
  EXPECT_CLOSE(a.mean, b.mean, 1e-5);
  EXPECT_CLOSE(a.rstd, b.rstd, 1e-5);
  Tensor dx = poisoned(kShape, DType::f32), dga = poisoned({37}, DType::f32), dbe = poisoned({37}, DType::f32);
  Tensor dx64 = poisoned(kShape), dga64 = poisoned({37}), dbe64 = poisoned({37});
  mt::layernorm1p_backward(g, x, gamma, a.mean, a.rstd, dx, dga, dbe);
  mt::layernorm1p_backward(g64, x64, ga64, b.mean, b.rstd, dx64, dga64, dbe64);
  EXPECT_CLOSE(dx, dx64, 1e-5);
  EXPECT_CLOSE(dga, dga64, 1e-5);
  EXPECT_CLOSE(dbe, dbe64, 1e-5);
}

TEST(NormLayer1p, RejectsBadArguments) {
  Tensor x = randn({3, 5}), ga = randn({5}), be = randn({5});
  Tensor out = poisoned({3, 5}), mean = poisoned({3}), rstd = poisoned({3});
  expect_error<mt::ValueError>([&] { mt::layernorm1p_forward(x, ga, randn({6}), kEps, out, mean, rstd); },
                               {"layernorm1p_forward", "'beta'", "expected [5]"});
  expect_error<mt::ValueError>([&] { mt::layernorm1p_forward(x, randn({3}), be, kEps, out, mean, rstd); },
                               {"'gamma'", "expected [5]"});
  expect_error<mt::ValueError>([&] { Tensor m = poisoned({3, 1}); mt::layernorm1p_forward(x, ga, be, kEps, out, m, rstd); },
                               {"'mean'", "expected [3]"});
  expect_error<mt::TypeError>(
      [&] { Tensor r = poisoned({3}, DType::f32); mt::layernorm1p_forward(x, ga, be, kEps, out, mean, r); },
      {"'rstd'", "f32"});
  expect_error<mt::ValueError>([&] { mt::layernorm1p_forward(x, ga, be, NAN, out, mean, rstd); }, {"eps"});
  expect_error<mt::TypeError>(
      [&] { Tensor o = fake_cuda(out), m = fake_cuda(mean), r = fake_cuda(rstd);
            mt::layernorm1p_forward(fake_cuda(x), fake_cuda(ga), fake_cuda(be), kEps, o, m, r); },
      {"layernorm1p_forward", "on CUDA"});
  Tensor dx = poisoned({3, 5}), dga = poisoned({5}), dbe = poisoned({5});
  expect_error<mt::ValueError>([&] { Tensor b = poisoned({3, 5}); mt::layernorm1p_backward(out, x, ga, mean, rstd, dx, dga, b); },
                               {"layernorm1p_backward", "'dbeta'", "expected [5]"});
  expect_error<mt::ValueError>([&] { Tensor a = poisoned({4}); mt::layernorm1p_backward(out, x, ga, mean, rstd, dx, a, dbe); },
                               {"'dgamma'", "expected [5]"});
  expect_error<mt::ValueError>([&] { mt::layernorm1p_backward(out, x, ga, randn({5}), rstd, dx, dga, dbe); },
                               {"'mean'", "expected [3]"});
  expect_error<mt::TypeError>([&] { mt::layernorm1p_backward(out, x, ga, mean, fake_cuda(rstd), dx, dga, dbe); },
                              {"'rstd'", "cuda"});
}

// ---------------------------------------------------------------- gated grouped RMSNorm

TEST(NormGated, ForwardMatchesNaiveLoop) {
  const int64_t rows = 26, d = 39;
  for (int64_t groups : {1, 3, 13}) {
    SCOPED_TRACE(groups);
    const int64_t gs = d / groups;
    Tensor y = randn({2, 13, d}), z = randn({2, 13, d}, DType::f64, 2.0), w = randn({d});
    auto yv = values(y), zv = values(z), wv = values(w);
    std::vector<double> out(yv.size()), rstd(size_t(rows * groups));
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t k = 0; k < groups; ++k) {
        double ss = 0;
        for (int64_t j = k * gs; j < (k + 1) * gs; ++j) {
          double u = yv[r * d + j] * zv[r * d + j] * sigm(zv[r * d + j]);
          ss += u * u;
        }
        double rs = rstd[r * groups + k] = 1.0 / std::sqrt(ss / gs + kEps);
        for (int64_t j = k * gs; j < (k + 1) * gs; ++j)
          out[r * d + j] = yv[r * d + j] * zv[r * d + j] * sigm(zv[r * d + j]) * rs * wv[j];
      }
    Rms got = gated(y, z, w, groups);
    EXPECT_LE(rel_error(got.out, out), 1e-14);
    EXPECT_LE(rel_error(got.rstd, rstd), 1e-14);
  }
}

TEST(NormGated, BackwardMatchesFiniteDifferences) {
  const int64_t d = 39;
  for (int64_t groups : {1, 3}) {
    SCOPED_TRACE(groups);
    Tensor y = randn({2, 13, d}), z = randn({2, 13, d}, DType::f64, 2.0), w = randn({d}), g = randn({2, 13, d});
    Rms f = gated(y, z, w, groups);
    Tensor dy = poisoned(y.shape()), dz = poisoned(y.shape()), dw = poisoned({d});
    mt::gated_rmsnorm_backward(g, y, z, w, f.rstd, groups, dy, dz, dw);
    auto loss = [&] { return dot(g, gated(y, z, w, groups).out); };
    expect_gradient(loss, y, dy, "y");
    expect_gradient(loss, z, dz, "z");
    expect_gradient(loss, w, dw, "weight");
  }
}

TEST(NormGated, Float32MatchesFloat64) {
  const int64_t d = 39, groups = 3;
  Tensor y = randn({2, 13, d}, DType::f32), z = randn({2, 13, d}, DType::f32, 2.0), w = randn({d}, DType::f32);
  Tensor g = randn({2, 13, d}, DType::f32);
  Tensor y64 = y.to(DType::f64), z64 = z.to(DType::f64), w64 = w.to(DType::f64), g64 = g.to(DType::f64);
  Rms a = gated(y, z, w, groups), b = gated(y64, z64, w64, groups);
  EXPECT_CLOSE(a.out, b.out, 1e-5);
  EXPECT_CLOSE(a.rstd, b.rstd, 1e-5);
  Tensor dy = poisoned(y.shape(), DType::f32), dz = poisoned(y.shape(), DType::f32), dw = poisoned({d}, DType::f32);
  Tensor dy64 = poisoned(y.shape()), dz64 = poisoned(y.shape()), dw64 = poisoned({d});
  mt::gated_rmsnorm_backward(g, y, z, w, a.rstd, groups, dy, dz, dw);
  mt::gated_rmsnorm_backward(g64, y64, z64, w64, b.rstd, groups, dy64, dz64, dw64);
  EXPECT_CLOSE(dy, dy64, 1e-5);
  EXPECT_CLOSE(dz, dz64, 1e-5);
  EXPECT_CLOSE(dw, dw64, 1e-5);
}

TEST(NormGated, RejectsBadArguments) {
  const char* op = "gated_rmsnorm_forward";
  Tensor y = randn({3, 6}), z = randn({3, 6}), w = randn({6}), out = poisoned({3, 6}), rstd = poisoned({3, 2});
  expect_error<mt::ValueError>([&] { mt::gated_rmsnorm_forward(y, z, w, 4, kEps, out, rstd); },
                               {op, "groups is 4", "d = 6"});
  expect_error<mt::ValueError>([&] { mt::gated_rmsnorm_forward(y, z, w, 0, kEps, out, rstd); }, {op, "groups is 0"});
  expect_error<mt::ValueError>([&] { mt::gated_rmsnorm_forward(y, z, w, 3, kEps, out, rstd); },
                               {"'rstd'", "expected [3, 3]"});
  expect_error<mt::ValueError>([&] { mt::gated_rmsnorm_forward(y, randn({3, 5}), w, 2, kEps, out, rstd); },
                               {"'z'", "expected [3, 6]"});
  expect_error<mt::ValueError>([&] { mt::gated_rmsnorm_forward(y, z, randn({3}), 2, kEps, out, rstd); },
                               {"'weight'", "expected [6]"});
  expect_error<mt::TypeError>([&] { mt::gated_rmsnorm_forward(y, z.to(DType::f32), w, 2, kEps, out, rstd); },
                              {"'z'", "f32"});
  expect_error<mt::TypeError>([&] { mt::gated_rmsnorm_forward(y, fake_cuda(z), w, 2, kEps, out, rstd); },
                              {"'z'", "cuda"});
  expect_error<mt::TypeError>(
      [&] { Tensor o = fake_cuda(out), r = fake_cuda(rstd);
            mt::gated_rmsnorm_forward(fake_cuda(y), fake_cuda(z), fake_cuda(w), 2, kEps, o, r); },
      {op, "on CUDA"});
  Tensor dy = poisoned({3, 6}), dz = poisoned({3, 6}), dw = poisoned({6});
  expect_error<mt::ValueError>([&] { Tensor b = poisoned({6, 3}); mt::gated_rmsnorm_backward(out, y, z, w, rstd, 2, dy, b, dw); },
                               {"gated_rmsnorm_backward", "'dz'", "expected [3, 6]"});
  expect_error<mt::ValueError>([&] { Tensor a = poisoned({3}); mt::gated_rmsnorm_backward(out, y, z, w, rstd, 2, a, dz, dw); },
                               {"'dy'", "expected [3, 6]"});
  expect_error<mt::ValueError>([&] { mt::gated_rmsnorm_backward(out, y, z, w, rstd, 1, dy, dz, dw); },
                               {"'rstd'", "expected [3, 1]"});
  expect_error<mt::ValueError>([&] { Tensor c = poisoned({7}); mt::gated_rmsnorm_backward(out, y, z, w, rstd, 2, dy, dz, c); },
                               {"'dweight'", "expected [6]"});
}

// ---------------------------------------------------------------- all three

// Parameter gradients are sums over rows; their bits must not depend on the threads.
// The residual stream's gradient is added in the norm's own pass: a separate add's
// result up to rounding (the sum may be contracted into one fma), the same bits when
// dresidual is dx itself; the parameter gradients do not change.
TEST(NormResidual, BackwardAddsTheResidualGradientLikeASeparateAdd) {
  for (DType dt : {DType::f32, DType::f64}) {
    const double tol = dt == DType::f32 ? 1e-6 : 1e-15;
    Tensor x = randn(kShape, dt), w = randn({37}, dt), beta = randn({37}, dt), g = randn(kShape, dt);
    Tensor dres = randn(kShape, dt);
    Rms r = rms(x, w);
    Tensor dx = poisoned(kShape, dt), dw = poisoned({37}, dt);
    mt::rmsnorm_backward(g, x, w, r.rstd, dx, dw);
    Tensor expected = poisoned(kShape, dt);
    mt::add(dres, dx, expected);
    Tensor fused = poisoned(kShape, dt), fused_dw = poisoned({37}, dt);
    mt::rmsnorm_backward(g, x, w, r.rstd, fused, fused_dw, dres);
    EXPECT_CLOSE(fused, expected, tol);
    EXPECT_TRUE(same_bits(fused_dw, dw));
    Tensor inplace = dres.clone();
    mt::rmsnorm_backward(g, x, w, r.rstd, inplace, fused_dw, inplace);
    EXPECT_TRUE(same_bits(inplace, fused));

    Ln l = ln(x, w, beta);
    Tensor dg = poisoned({37}, dt), db = poisoned({37}, dt);
    mt::layernorm1p_backward(g, x, w, l.mean, l.rstd, dx, dg, db);
    mt::add(dres, dx, expected);
    inplace = dres.clone();
    Tensor dg2 = poisoned({37}, dt), db2 = poisoned({37}, dt);
    mt::layernorm1p_backward(g, x, w, l.mean, l.rstd, inplace, dg2, db2, inplace);
    EXPECT_CLOSE(inplace, expected, tol);
    EXPECT_TRUE(same_bits(dg2, dg));
    EXPECT_TRUE(same_bits(db2, db));
  }
  Tensor x = randn(kShape), w = randn({37}), g = randn(kShape), dx = poisoned(kShape), dw = poisoned({37});
  Tensor rstd = rms(x, w).rstd;
  EXPECT_THROW(mt::rmsnorm_backward(g, x, w, rstd, dx, dw, randn({2, 13, 36})), mt::ValueError);
  EXPECT_THROW(mt::rmsnorm_backward(g, x, w, rstd, dx, dw, randn(kShape, DType::f32)), mt::TypeError);
}

TEST(NormParamGrads, BitsDoNotDependOnThreadCount) {
  const Shape shape = {5, 301, 96};  // above the threshold where the loops go parallel
  for (DType dt : {DType::f32, DType::f64}) {
    SCOPED_TRACE(mt::dtype_name(dt));
    Tensor x = randn(shape, dt), z = randn(shape, dt), w = randn({96}, dt), b = randn({96}, dt), g = randn(shape, dt);
    auto run = [&](int threads) {
      std::vector<Tensor> r;
      with_threads(threads, [&] {
        Rms f = rms(x, w);
        Tensor dx = poisoned(shape, dt), dw = poisoned({96}, dt);
        mt::rmsnorm_backward(g, x, w, f.rstd, dx, dw);
        Ln l = ln(x, w, b);
        Tensor dx2 = poisoned(shape, dt), dga = poisoned({96}, dt), dbe = poisoned({96}, dt);
        mt::layernorm1p_backward(g, x, w, l.mean, l.rstd, dx2, dga, dbe);
        Rms q = gated(x, z, w, 4);
        Tensor dy = poisoned(shape, dt), dz = poisoned(shape, dt), dw3 = poisoned({96}, dt);
        mt::gated_rmsnorm_backward(g, x, z, w, q.rstd, 4, dy, dz, dw3);
        r = {dw, dga, dbe, dw3};
      });
      return r;
    };
    auto one = run(1), many = run(3);
    for (size_t i = 0; i < one.size(); ++i) EXPECT_TRUE(same_bits(one[i], many[i])) << "gradient " << i;
  }
}

// No rows: nothing to normalise, and the parameter gradients are sums over nothing.
TEST(NormParamGrads, NoRowsGiveZeroGradients) {
  Tensor x = randn({0, 7}), w = randn({7}), g = randn({0, 7});
  Tensor out = poisoned({0, 7}), rstd = poisoned({0}), mean = poisoned({0}), dx = poisoned({0, 7});
  Tensor dw = poisoned({7}), dbe = poisoned({7}), dw3 = poisoned({7});
  mt::rmsnorm_forward(x, w, kEps, out, rstd);
  mt::rmsnorm_backward(g, x, w, rstd, dx, dw);
  mt::layernorm1p_forward(x, w, w, kEps, out, mean, rstd);
  mt::layernorm1p_backward(g, x, w, mean, rstd, dx, dw, dbe);
  Tensor r7 = poisoned({0, 7}), dz = poisoned({0, 7});
  mt::gated_rmsnorm_backward(g, x, x, w, r7, 7, dx, dz, dw3);
  for (const Tensor& t : {dw, dbe, dw3})
    for (double v : values(t)) EXPECT_EQ(v, 0.0);
}
