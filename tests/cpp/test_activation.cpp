// Activations: naive fp64 loops, finite differences, fp32 against fp64, in-place
// use, extreme inputs and argument checks.
#include <cmath>

#include "dense_testing.h"

namespace mt = mambatron;
using mt::DType;
using mt::Shape;
using mt::Tensor;
using namespace mt::testing;
using namespace mt::testing::dense;

namespace {
const Shape kShape = {2, 13, 37};

double ref_sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

struct Unary {
  const char* name;
  void (*forward)(const Tensor&, Tensor&);
  void (*backward)(const Tensor&, const Tensor&, Tensor&);
  double (*ref)(double);
};

const Unary kUnary[] = {
    {"gelu", mt::gelu_forward, mt::gelu_backward, [](double x) { return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))); }},
    {"squared_relu", mt::squared_relu_forward, mt::squared_relu_backward,
     [](double x) { return x > 0 ? x * x : 0.0; }},
    {"silu", mt::silu_forward, mt::silu_backward, [](double x) { return x * ref_sigmoid(x); }},
};

Tensor run_forward(const Unary& u, const Tensor& x) {
  Tensor out = poisoned(x.shape(), x.dtype());
  u.forward(x, out);
  return out;
}
Tensor run_backward(const Unary& u, const Tensor& dout, const Tensor& x) {
  Tensor dx = poisoned(x.shape(), x.dtype());
  u.backward(dout, x, dx);
  return dx;
}

Tensor swiglu(const Tensor& x) {
  Shape s = x.shape();
  s.back() /= 2;
  Tensor out = poisoned(s, x.dtype());
  mt::swiglu_forward(x, out);
  return out;
}
Tensor swiglu_grad(const Tensor& dout, const Tensor& x) {
  Tensor dx = poisoned(x.shape(), x.dtype());
  mt::swiglu_backward(dout, x, dx);
  return dx;
}
}  // namespace

TEST(ActivationUnary, ForwardMatchesNaiveLoop) {
  for (const Unary& u : kUnary) {
    SCOPED_TRACE(u.name);
    Tensor x = randn(kShape, DType::f64, 2.0);
    auto xv = values(x);
    std::vector<double> ref(xv.size());
    for (size_t i = 0; i < xv.size(); ++i) ref[i] = u.ref(xv[i]);
    EXPECT_LE(rel_error(run_forward(u, x), ref), 1e-14);
  }
}

TEST(ActivationUnary, BackwardMatchesFiniteDifferences) {
  for (const Unary& u : kUnary) {
    SCOPED_TRACE(u.name);
    Tensor x = randn(kShape, DType::f64, 2.0), w = randn(kShape);
    Tensor dx = run_backward(u, w, x);
    expect_gradient([&] { return dot(w, run_forward(u, x)); }, x, dx, "x");
  }
}

TEST(ActivationUnary, Float32MatchesFloat64) {
  for (const Unary& u : kUnary) {
    SCOPED_TRACE(u.name);
    Tensor x32 = randn(kShape, DType::f32, 2.0), g32 = randn(kShape, DType::f32);
    Tensor x64 = x32.to(DType::f64), g64 = g32.to(DType::f64);
    EXPECT_CLOSE(run_forward(u, x32), run_forward(u, x64), 1e-5);
    EXPECT_CLOSE(run_backward(u, g32, x32), run_backward(u, g64, x64), 1e-5);
  }
}

// The forward may overwrite x and the backward dout.
TEST(ActivationUnary, InPlaceEqualsOutOfPlace) {
  for (const Unary& u : kUnary) {
    SCOPED_TRACE(u.name);
    Tensor x = randn(kShape), g = randn(kShape);
    Tensor out = run_forward(u, x), dx = run_backward(u, g, x);
    Tensor g_in = g.clone();
    u.backward(g_in, x, g_in);
    EXPECT_TRUE(same_bits(g_in, dx));
    Tensor x_in = x.clone();
    u.forward(x_in, x_in);
    EXPECT_TRUE(same_bits(x_in, out));
  }
}

// Large |x| must not overflow exp into inf/inf = NaN.
TEST(ActivationUnary, ExtremeInputsStayFinite) {
  const double big[] = {-800.0, -100.0, -30.0, 30.0, 100.0, 800.0};
  for (DType dt : {DType::f32, DType::f64}) {
    Tensor x = Tensor::empty({6}, DType::f64);
    for (int i = 0; i < 6; ++i) x.data<double>()[i] = big[i];
    x = x.to(dt);
    Tensor g = Tensor::full({6}, 1.0, dt);
    for (const Unary& u : kUnary) {
      SCOPED_TRACE(u.name);
      auto out = values(run_forward(u, x)), dx = values(run_backward(u, g, x));
      for (int i = 0; i < 6; ++i) {
        EXPECT_TRUE(std::isfinite(out[i])) << big[i];
        EXPECT_TRUE(std::isfinite(dx[i])) << big[i];
      }
      EXPECT_EQ(out[0], 0.0);  // −800 maps to 0 (or −0) for all three
    }
    Tensor x2 = Tensor::full({1, 2}, -800.0, dt);
    EXPECT_TRUE(std::isfinite(values(swiglu(x2))[0]));
    EXPECT_TRUE(std::isfinite(values(swiglu_grad(Tensor::full({1, 1}, 1.0, dt), x2))[0]));
  }
}

TEST(ActivationUnary, RejectsBadArguments) {
  for (const Unary& u : kUnary) {
    SCOPED_TRACE(u.name);
    Tensor x = randn({3, 5}), g = randn({3, 5}), out = Tensor::empty({3, 5}, DType::f64);
    expect_error<mt::ValueError>([&] { Tensor o = Tensor::empty({3, 4}, DType::f64); u.forward(x, o); },
                                 {"'out'", "[3, 4]", "expected [3, 5]"});
    expect_error<mt::TypeError>([&] { Tensor o = Tensor::empty({3, 5}, DType::f32); u.forward(x, o); },
                                {"'out'", "f32", "f64"});
    expect_error<mt::TypeError>([&] { u.forward(Tensor::zeros({3, 5}, DType::i32), out); }, {"'x'", "i32"});
    expect_error<mt::ValueError>([&] { u.forward(Tensor(), out); }, {"'x'", "undefined"});
    expect_error<mt::ValueError>([&] { Tensor o = strided_like(x); u.forward(x, o); }, {"'out'", "contiguous"});
    expect_error<mt::ValueError>([&] { u.backward(randn({5, 3}), x, out); }, {"'dout'", "expected [3, 5]"});
    expect_error<mt::ValueError>([&] { Tensor d = Tensor::empty({15}, DType::f64); u.backward(g, x, d); },
                                 {"'dx'", "expected [3, 5]"});
    expect_error<mt::TypeError>([&] { Tensor o = fake_cuda(out); u.forward(x, o); }, {"'out'", "cuda"});
    expect_error<mt::TypeError>([&] { Tensor o = fake_cuda(out); u.forward(fake_cuda(x), o); },
                                {"_forward", "on CUDA"});
    expect_error<mt::TypeError>([&] { Tensor d = fake_cuda(out); u.backward(fake_cuda(g), fake_cuda(x), d); },
                                {"_backward", "on CUDA"});
  }
}

TEST(ActivationSwiglu, ForwardMatchesNaiveLoop) {
  const int64_t rows = 2 * 13, f = 37;
  Tensor x = randn({2, 13, 2 * f}, DType::f64, 2.0);
  auto xv = values(x);
  std::vector<double> ref(size_t(rows * f));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < f; ++j) {
      double a = xv[r * 2 * f + j], b = xv[r * 2 * f + f + j];
      ref[r * f + j] = a * ref_sigmoid(a) * b;
    }
  Tensor out = swiglu(x);
  EXPECT_EQ(out.shape(), (Shape{2, 13, f}));
  EXPECT_LE(rel_error(out, ref), 1e-14);
}

TEST(ActivationSwiglu, BackwardMatchesFiniteDifferences) {
  Tensor x = randn({2, 13, 74}, DType::f64, 2.0), w = randn({2, 13, 37});
  Tensor dx = swiglu_grad(w, x);
  expect_gradient([&] { return dot(w, swiglu(x)); }, x, dx, "x", 1e-6, 200);
}

TEST(ActivationSwiglu, Float32MatchesFloat64) {
  Tensor x32 = randn({2, 13, 74}, DType::f32, 2.0), g32 = randn({2, 13, 37}, DType::f32);
  Tensor x64 = x32.to(DType::f64), g64 = g32.to(DType::f64);
  EXPECT_CLOSE(swiglu(x32), swiglu(x64), 1e-5);
  EXPECT_CLOSE(swiglu_grad(g32, x32), swiglu_grad(g64, x64), 1e-5);
}

TEST(ActivationSwiglu, RejectsBadArguments) {
  Tensor x = randn({3, 10}), out = Tensor::empty({3, 5}, DType::f64), g = randn({3, 5});
  Tensor dx = Tensor::empty({3, 10}, DType::f64);
  expect_error<mt::ValueError>([&] { mt::swiglu_forward(randn({3, 9}), out); }, {"'x'", "[3, 9]", "2f"});
  expect_error<mt::ValueError>([&] { mt::swiglu_forward(Tensor::full({}, 1.0, DType::f64), out); }, {"'x'", "2f"});
  expect_error<mt::ValueError>([&] { Tensor o = Tensor::empty({3, 10}, DType::f64); mt::swiglu_forward(x, o); },
                               {"'out'", "expected [3, 5]"});
  expect_error<mt::TypeError>([&] { Tensor o = Tensor::empty({3, 5}, DType::f32); mt::swiglu_forward(x, o); },
                              {"'out'", "f32"});
  expect_error<mt::TypeError>([&] { mt::swiglu_forward(Tensor::zeros({3, 10}, DType::i64), out); }, {"'x'", "i64"});
  expect_error<mt::ValueError>([&] { mt::swiglu_backward(randn({3, 10}), x, dx); }, {"'dout'", "expected [3, 5]"});
  expect_error<mt::ValueError>([&] { Tensor d = Tensor::empty({3, 5}, DType::f64); mt::swiglu_backward(g, x, d); },
                               {"'dx'", "expected [3, 10]"});
  expect_error<mt::TypeError>([&] { mt::swiglu_backward(fake_cuda(g), x, dx); }, {"'dout'", "cuda"});
  expect_error<mt::TypeError>([&] { Tensor o = fake_cuda(out); mt::swiglu_forward(fake_cuda(x), o); },
                              {"swiglu_forward", "on CUDA"});
}
