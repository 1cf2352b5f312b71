// selective_scan_forward / _backward / _step: against a naive loop, finite
// differences, f32 against f64, decoding token by token (with conv1d_step), packed
// documents, groups, argument checks.
#ifdef _OPENMP
#include <omp.h>
#endif

#include <random>
#include <string>

#include "testing.h"

namespace mt = mambatron;
using mt::testing::expect_error;
using mt::DType;
using mt::Shape;
using mt::Tensor;
namespace T = mt::testing;

namespace {

struct Case {
  int64_t b = 2, l = 13, d = 37, n = 5, g = 1;
  bool D = true, z = true, bias = true, softplus = true, init = true, seq = false;
};

struct Inputs {
  Tensor u, delta, A, B, C, D, z, bias, init, seq;
};

Tensor cast(const Tensor& t, DType dt) { return t.defined() ? t.to(dt) : Tensor(); }
Inputs cast(const Inputs& in, DType dt) {
  return {cast(in.u, dt), cast(in.delta, dt), cast(in.A, dt),    cast(in.B, dt),    cast(in.C, dt),
          cast(in.D, dt), cast(in.z, dt),     cast(in.bias, dt), cast(in.init, dt), in.seq};
}

std::string describe(const Case& cs) {
  return "d=" + std::to_string(cs.d) + " g=" + std::to_string(cs.g) + " l=" + std::to_string(cs.l) +
         " D=" + std::to_string(cs.D) + " z=" + std::to_string(cs.z) + " bias=" + std::to_string(cs.bias) +
         " softplus=" + std::to_string(cs.softplus) + " init=" + std::to_string(cs.init) +
         " seq=" + std::to_string(cs.seq);
}

Tensor random_seq_idx(int64_t b, int64_t l) {
  std::mt19937_64 rng(T::fresh_seed());
  Tensor s = Tensor::empty({b, l}, DType::i32);
  int32_t* p = s.data<int32_t>();
  for (int64_t i = 0; i < b; ++i) {
    int32_t id = int32_t(rng() % 5);
    for (int64_t t = 0; t < l; ++t) {
      if (t > 0 && rng() % 5 == 0) id += 1 + int32_t(rng() % 2);
      p[i * l + t] = id;
    }
  }
  return s;
}

Inputs make_inputs(const Case& cs) {
  Inputs in;
  in.u = T::randn({cs.b, cs.l, cs.d});
  if (cs.softplus) {
    in.delta = T::uniform({cs.b, cs.l, cs.d}, -3.0, 1.0);
    // A few values past softplus's linear threshold (20), away from it.
    double* p = in.delta.data<double>();
    for (int64_t e = 7; e < in.delta.numel(); e += 101) p[e] = 20.5 + 0.01 * double(e % 13);
  } else {
    in.delta = T::uniform({cs.b, cs.l, cs.d}, 0.05, 1.0);
  }
  in.A = T::uniform({cs.d, cs.n}, -2.0, -0.3);
  in.B = T::randn({cs.b, cs.l, cs.g, cs.n});
  in.C = T::randn({cs.b, cs.l, cs.g, cs.n});
  if (cs.D) in.D = T::randn({cs.d});
  if (cs.z) in.z = T::randn({cs.b, cs.l, cs.d});
  // Without softplus Δ = delta + bias is used as is: keep it positive (a decaying state).
  if (cs.bias) in.bias = cs.softplus ? T::randn({cs.d}, DType::f64, 0.5) : T::uniform({cs.d}, 0.0, 0.3);
  if (cs.init) in.init = T::randn({cs.b, cs.d, cs.n});
  if (cs.seq) in.seq = random_seq_idx(cs.b, cs.l);
  return in;
}

struct Outputs {
  Tensor y, final_state;
};

Outputs forward(const Inputs& in, const Case& cs, DType dt = DType::f64) {
  Outputs o{T::poisoned({cs.b, cs.l, cs.d}, dt), T::poisoned({cs.b, cs.d, cs.n}, dt)};
  mt::selective_scan_forward(in.u, in.delta, in.A, in.B, in.C, in.D, in.z, in.bias, in.init, in.seq, o.y,
                             o.final_state, {cs.softplus});
  return o;
}

struct Grads {
  Tensor du, ddelta, dA, dB, dC, dD, dz, dbias, dinit;
};

Grads backward(const Inputs& in, const Case& cs, const Tensor& dy, const Tensor& dfinal, DType dt = DType::f64) {
  Grads g{T::poisoned({cs.b, cs.l, cs.d}, dt),
          T::poisoned({cs.b, cs.l, cs.d}, dt),
          T::poisoned({cs.d, cs.n}, dt),
          T::poisoned({cs.b, cs.l, cs.g, cs.n}, dt),
          T::poisoned({cs.b, cs.l, cs.g, cs.n}, dt),
          T::poisoned({cs.d}, dt),
          cs.z ? T::poisoned({cs.b, cs.l, cs.d}, dt) : Tensor(),
          T::poisoned({cs.d}, dt),
          T::poisoned({cs.b, cs.d, cs.n}, dt)};
  mt::selective_scan_backward(dy, dfinal, in.u, in.delta, in.A, in.B, in.C, in.D, in.z, in.bias, in.init, in.seq,
                              g.du, g.ddelta, g.dA, g.dB, g.dC, g.dD, g.dz, g.dbias, g.dinit, {cs.softplus});
  return g;
}

// The recurrence as MODELS.md writes it, one channel at a time.
Outputs naive(const Inputs& in, const Case& cs) {
  const int64_t b = cs.b, l = cs.l, d = cs.d, n = cs.n, g = cs.g;
  auto u = T::values(in.u), delta = T::values(in.delta), A = T::values(in.A), B = T::values(in.B),
       C = T::values(in.C);
  auto opt = [](const Tensor& t, size_t size) { return t.defined() ? T::values(t) : std::vector<double>(size, 0.0); };
  auto D = opt(in.D, d), z = opt(in.z, b * l * d), bias = opt(in.bias, d), init = opt(in.init, b * d * n),
       seq = opt(in.seq, b * l);
  Outputs o{Tensor::empty({b, l, d}, DType::f64), Tensor::empty({b, d, n}, DType::f64)};
  double* y = o.y.data<double>();
  double* fin = o.final_state.data<double>();
  for (int64_t i = 0; i < b; ++i)
    for (int64_t c = 0; c < d; ++c) {
      int64_t gr = c / (d / g);
      std::vector<double> h(init.begin() + (i * d + c) * n, init.begin() + (i * d + c + 1) * n);
      for (int64_t t = 0; t < l; ++t) {
        if (t > 0 && seq[i * l + t] != seq[i * l + t - 1]) std::fill(h.begin(), h.end(), 0.0);
        int64_t idx = (i * l + t) * d + c;
        double v = delta[idx] + bias[c];
        double dt = cs.softplus && v <= 20 ? std::log1p(std::exp(v)) : v;
        double acc = D[c] * u[idx];
        for (int64_t j = 0; j < n; ++j) {
          int64_t bj = ((i * l + t) * g + gr) * n + j;
          h[j] = std::exp(dt * A[c * n + j]) * h[j] + dt * B[bj] * u[idx];
          acc += h[j] * C[bj];
        }
        if (cs.z) acc *= z[idx] / (1 + std::exp(-z[idx]));
        y[idx] = acc;
      }
      std::copy(h.begin(), h.end(), fin + (i * d + c) * n);
    }
  return o;
}

// Shapes: one block (d/g <= 32), two blocks of one group, two groups of two blocks,
// three small groups.
std::vector<Case> shapes() {
  std::vector<Case> s(4);
  s[0].d = 9, s[0].g = 3;
  s[1].d = 37, s[1].g = 1;
  s[2].d = 70, s[2].g = 2;
  s[3].d = 24, s[3].g = 1;
  return s;
}

}  // namespace

TEST(SelectiveScanForward, MatchesNaiveLoop) {
  for (Case cs : shapes())
    for (int flags = 0; flags < 64; ++flags) {
      cs.D = flags & 1, cs.z = flags & 2, cs.bias = flags & 4, cs.softplus = flags & 8, cs.init = flags & 16,
      cs.seq = flags & 32;
      Inputs in = make_inputs(cs);
      Outputs got = forward(in, cs), want = naive(in, cs);
      EXPECT_LE(T::max_rel_error(got.y, want.y), 1e-13) << describe(cs);
      EXPECT_LE(T::max_rel_error(got.final_state, want.final_state), 1e-13) << describe(cs);
    }
}

TEST(SelectiveScanForward, LongSequenceAndEmptySequence) {
  Case cs;
  cs.l = 200;
  cs.seq = true;
  Inputs in = make_inputs(cs);
  Outputs got = forward(in, cs), want = naive(in, cs);
  EXPECT_LE(T::max_rel_error(got.y, want.y), 1e-13);
  EXPECT_LE(T::max_rel_error(got.final_state, want.final_state), 1e-13);
  cs.l = 0;
  cs.seq = false;
  in = make_inputs(cs);
  EXPECT_EQ(T::max_rel_error(forward(in, cs).final_state, in.init), 0.0);
}

TEST(SelectiveScanForward, PackedDocumentsEqualDocumentsOneByOne) {
  // Row 0: documents of 5, 1, 7 tokens; row 1: 2 and 11.
  const std::vector<std::vector<int64_t>> docs = {{5, 1, 7}, {2, 11}};
  for (Case cs : shapes()) {
    cs.seq = true;
    Inputs in = make_inputs(cs);
    int32_t* seq = in.seq.data<int32_t>();
    for (int64_t i = 0; i < 2; ++i) {
      int64_t t = 0;
      for (size_t k = 0; k < docs[i].size(); ++k)
        for (int64_t j = 0; j < docs[i][k]; ++j) seq[i * cs.l + t++] = int32_t(7 * i + 2 * k);
    }
    Outputs packed = forward(in, cs);
    for (int64_t i = 0; i < 2; ++i) {
      int64_t t0 = 0;
      for (size_t k = 0; k < docs[i].size(); ++k) {
        Case one = cs;
        one.b = 1;
        one.l = docs[i][k];
        one.seq = false;
        one.init = k == 0;  // the initial state feeds the row's first document only
        auto part = [&](const Tensor& t) { return t.narrow(0, i, 1).narrow(1, t0, one.l).contiguous(); };
        Inputs sub{part(in.u), part(in.delta), in.A, part(in.B), part(in.C), in.D, part(in.z), in.bias,
                   one.init ? in.init.narrow(0, i, 1).contiguous() : Tensor(), Tensor()};
        Outputs alone = forward(sub, one);
        EXPECT_LE(T::max_rel_error(part(packed.y), alone.y), 1e-15) << describe(cs) << " row " << i << " doc " << k;
        if (k + 1 == docs[i].size())
          EXPECT_LE(T::max_rel_error(packed.final_state.narrow(0, i, 1), alone.final_state), 1e-15) << describe(cs);
        t0 += one.l;
      }
    }
  }
}

TEST(SelectiveScanBackward, MatchesFiniteDifferences) {
  std::vector<Case> cases;
  for (Case cs : shapes()) {
    cs.n = 3;
    for (bool seq : {false, true}) {
      cs.seq = seq;
      cases.push_back(cs);
    }
  }
  Case plain;  // no gate, no softplus
  plain.z = false, plain.softplus = false, plain.seq = true;
  cases.push_back(plain);
  Case longer;  // several chunks of recomputed states
  longer.l = 150, longer.d = 35, longer.n = 2, longer.b = 1, longer.seq = true;
  cases.push_back(longer);
  longer.seq = false;
  cases.push_back(longer);
  for (const Case& cs : cases) {
    Inputs in = make_inputs(cs);
    Tensor wy = T::randn({cs.b, cs.l, cs.d}), wf = T::randn({cs.b, cs.d, cs.n});
    auto loss = [&] {
      Outputs o = forward(in, cs);
      return T::dot(wy, o.y) + T::dot(wf, o.final_state);
    };
    Grads g = backward(in, cs, wy, wf);
    std::string what = describe(cs);
    T::expect_gradient(loss, in.u, g.du, ("du " + what).c_str());
    T::expect_gradient(loss, in.delta, g.ddelta, ("ddelta " + what).c_str());
    T::expect_gradient(loss, in.A, g.dA, ("dA " + what).c_str());
    T::expect_gradient(loss, in.B, g.dB, ("dB " + what).c_str());
    T::expect_gradient(loss, in.C, g.dC, ("dC " + what).c_str());
    T::expect_gradient(loss, in.D, g.dD, ("dD " + what).c_str());
    if (cs.z) T::expect_gradient(loss, in.z, g.dz, ("dz " + what).c_str());
    T::expect_gradient(loss, in.bias, g.dbias, ("ddelta_bias " + what).c_str());
    T::expect_gradient(loss, in.init, g.dinit, ("d_initial_state " + what).c_str());
  }
}

TEST(SelectiveScanBackward, AbsentInputsEqualZeros) {
  // Absent D, delta_bias, initial_state and d_final_state act as zeros; the optional
  // gradients may be skipped.
  Case cs;
  cs.seq = true;
  cs.l = 70;
  Inputs in = make_inputs(cs);
  Inputs zero = in;
  zero.D = Tensor::zeros({cs.d}, DType::f64);
  zero.bias = Tensor::zeros({cs.d}, DType::f64);
  zero.init = Tensor::zeros({cs.b, cs.d, cs.n}, DType::f64);
  Tensor dy = T::randn({cs.b, cs.l, cs.d});
  Grads full = backward(zero, cs, dy, Tensor::zeros({cs.b, cs.d, cs.n}, DType::f64));
  Inputs absent = in;
  absent.D = absent.bias = absent.init = Tensor();
  Grads g = backward(absent, cs, dy, Tensor());
  for (auto [got, want] : {std::pair{g.du, full.du}, {g.ddelta, full.ddelta}, {g.dA, full.dA}, {g.dB, full.dB},
                           {g.dC, full.dC}, {g.dD, full.dD}, {g.dz, full.dz}, {g.dbias, full.dbias},
                           {g.dinit, full.dinit}})
    EXPECT_EQ(T::max_rel_error(got, want), 0.0);
  Tensor none;
  Grads h = g;
  for (Tensor* t : {&h.du, &h.ddelta, &h.dA, &h.dB, &h.dC, &h.dz}) *t = T::poisoned(t->shape());
  mt::selective_scan_backward(dy, none, absent.u, absent.delta, absent.A, absent.B, absent.C, none, absent.z, none,
                              none, absent.seq, h.du, h.ddelta, h.dA, h.dB, h.dC, none, h.dz, none, none,
                              {cs.softplus});
  for (auto [got, want] : {std::pair{h.du, g.du}, {h.ddelta, g.ddelta}, {h.dA, g.dA}, {h.dB, g.dB},
                           {h.dC, g.dC}, {h.dz, g.dz}})
    EXPECT_EQ(T::max_rel_error(got, want), 0.0);
}

TEST(SelectiveScanBackward, EmptySequencePassesTheStateGradient) {
  // No tokens: d_initial_state is d_final_state and the parameter gradients are zero.
  Case cs;
  cs.l = 0;
  Inputs in = make_inputs(cs);
  Tensor dfinal = T::randn({cs.b, cs.d, cs.n});
  Grads g = backward(in, cs, T::randn({cs.b, cs.l, cs.d}), dfinal);
  EXPECT_EQ(T::max_rel_error(g.dinit, dfinal), 0.0);
  for (const Tensor& t : {g.dA, g.dD, g.dbias})
    for (double v : T::values(t)) EXPECT_EQ(v, 0.0);
}

TEST(SelectiveScan, Float32MatchesFloat64) {
  for (Case cs : shapes())
    for (int64_t l : {13, 100}) {
      cs.l = l;
      cs.seq = l == 100;
      Inputs in = make_inputs(cs), in32 = cast(in, DType::f32);
      Outputs o64 = forward(in, cs), o32 = forward(in32, cs, DType::f32);
      EXPECT_LE(T::max_rel_error(o32.y, o64.y), 1e-5) << describe(cs);
      EXPECT_LE(T::max_rel_error(o32.final_state, o64.final_state), 1e-5) << describe(cs);
      Tensor dy = T::randn({cs.b, cs.l, cs.d}), dfinal = T::randn({cs.b, cs.d, cs.n});
      Grads g64 = backward(in, cs, dy, dfinal);
      Grads g32 = backward(in32, cs, dy.to(DType::f32), dfinal.to(DType::f32), DType::f32);
      const char* names[] = {"du", "ddelta", "dA", "dB", "dC", "dD", "dz", "ddelta_bias", "d_initial_state"};
      Tensor* a[] = {&g32.du, &g32.ddelta, &g32.dA, &g32.dB, &g32.dC, &g32.dD, &g32.dz, &g32.dbias, &g32.dinit};
      Tensor* b[] = {&g64.du, &g64.ddelta, &g64.dA, &g64.dB, &g64.dC, &g64.dD, &g64.dz, &g64.dbias, &g64.dinit};
      for (int k = 0; k < 9; ++k) EXPECT_LE(T::max_rel_error(*a[k], *b[k]), 1e-5) << names[k] << " " << describe(cs);
    }
}

TEST(SelectiveScan, ResultsDoNotDependOnThreadCount) {
#ifndef _OPENMP
  GTEST_SKIP() << "built without OpenMP";
#else
  Case cs;
  cs.d = 70, cs.g = 2, cs.l = 200, cs.seq = true;  // large enough to run on several threads
  Inputs in = make_inputs(cs);
  Tensor dy = T::randn({cs.b, cs.l, cs.d}), dfinal = T::randn({cs.b, cs.d, cs.n});
  int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  Outputs o1 = forward(in, cs);
  Grads g1 = backward(in, cs, dy, dfinal);
  omp_set_num_threads(3);
  Outputs o3 = forward(in, cs);
  Grads g3 = backward(in, cs, dy, dfinal);
  omp_set_num_threads(threads);
  EXPECT_EQ(T::max_rel_error(o1.y, o3.y), 0.0);
  for (auto [x, y] : {std::pair{g1.du, g3.du}, {g1.ddelta, g3.ddelta}, {g1.dA, g3.dA}, {g1.dB, g3.dB},
                      {g1.dC, g3.dC}, {g1.dD, g3.dD}, {g1.dbias, g3.dbias}, {g1.dinit, g3.dinit}})
    EXPECT_EQ(T::max_rel_error(x, y), 0.0);
#endif
}

TEST(SelectiveScanStep, TokenByTokenEqualsForward) {
  for (Case cs : shapes())
    for (DType dt : {DType::f64, DType::f32}) {
      cs.l = 20;
      Inputs in = cast(make_inputs(cs), dt);
      Outputs full = forward(in, cs, dt);
      Tensor state = in.init.clone();
      for (int64_t t = 0; t < cs.l; ++t) {
        auto tok = [&](const Tensor& x) { return x.select(1, t).contiguous(); };
        Tensor y = T::poisoned({cs.b, cs.d}, dt);
        mt::selective_scan_step(tok(in.u), tok(in.delta), in.A, tok(in.B), tok(in.C), in.D, tok(in.z), in.bias,
                                state, y, {cs.softplus});
        EXPECT_LE(T::max_rel_error(y, full.y.select(1, t)), dt == DType::f64 ? 1e-14 : 1e-6)
            << describe(cs) << " token " << t;
      }
      EXPECT_LE(T::max_rel_error(state, full.final_state), dt == DType::f64 ? 1e-14 : 1e-6) << describe(cs);
    }
}

// The Mamba-1 mixer's recurrent core: conv (+SiLU) feeding the scan. Decoding one
// token at a time from the given states reproduces the full forward and its states.
TEST(SelectiveScanStep, ConvAndScanDecodeEqualsForward) {
  for (DType dt : {DType::f64, DType::f32}) {
    Case cs;
    cs.d = 40, cs.g = 2, cs.l = 17;
    const int64_t w = 4;
    Inputs in = cast(make_inputs(cs), dt);
    Tensor x = T::randn({cs.b, cs.l, cs.d}, dt), wconv = T::randn({cs.d, w}, dt, 0.5), bconv = T::randn({cs.d}, dt);
    Tensor conv0 = T::randn({cs.b, cs.d, w - 1}, dt);
    Tensor xc = T::poisoned({cs.b, cs.l, cs.d}, dt), conv_final = T::poisoned({cs.b, cs.d, w - 1}, dt), none;
    mt::conv1d_forward(x, wconv, bconv, conv0, none, xc, conv_final, {true});
    in.u = xc;
    Outputs full = forward(in, cs, dt);

    Tensor conv_state = conv0.clone(), ssm_state = in.init.clone();
    for (int64_t t = 0; t < cs.l; ++t) {
      auto tok = [&](const Tensor& v) { return v.select(1, t).contiguous(); };
      Tensor u = T::poisoned({cs.b, cs.d}, dt), y = T::poisoned({cs.b, cs.d}, dt);
      mt::conv1d_step(tok(x), wconv, bconv, conv_state, u, {true});
      mt::selective_scan_step(u, tok(in.delta), in.A, tok(in.B), tok(in.C), in.D, tok(in.z), in.bias, ssm_state, y,
                              {cs.softplus});
      EXPECT_LE(T::max_rel_error(y, full.y.select(1, t)), dt == DType::f64 ? 1e-14 : 1e-6) << "token " << t;
    }
    EXPECT_EQ(T::max_rel_error(conv_state, conv_final), 0.0);
    EXPECT_LE(T::max_rel_error(ssm_state, full.final_state), dt == DType::f64 ? 1e-14 : 1e-6);
  }
}

TEST(SelectiveScan, RejectsBadArguments) {
  Case cs;
  cs.g = 1;
  Inputs in = make_inputs(cs);  // b 2, l 13, d 37, n 5
  Tensor y = T::poisoned({2, 13, 37}), fin = T::poisoned({2, 37, 5}), none;
  using VE = mt::ValueError;
  using TE = mt::TypeError;
  auto fwd = [&](Inputs a, Tensor& out, Tensor& f) {
    mt::selective_scan_forward(a.u, a.delta, a.A, a.B, a.C, a.D, a.z, a.bias, a.init, a.seq, out, f, {true});
  };
  auto with = [&](Tensor Inputs::*field, Tensor v) {
    Inputs a = in;
    a.*field = v;
    return a;
  };
  fwd(in, y, fin);  // the valid call
  expect_error<VE>([&] { fwd(with(&Inputs::u, none), y, fin); }, "'u'", "undefined");
  expect_error<TE>([&] { fwd(with(&Inputs::u, in.u.to(DType::bf16)), y, fin); }, "'u'", "f32 or f64");
  expect_error<VE>([&] { fwd(with(&Inputs::u, in.u.view({26, 37})), y, fin); }, "'u'", "[b, l, d]");
  expect_error<VE>([&] { fwd(with(&Inputs::delta, T::randn({2, 13, 36})), y, fin); }, "'delta'", "[2, 13, 37]");
  expect_error<TE>([&] { fwd(with(&Inputs::delta, in.delta.to(DType::f32)), y, fin); }, "'delta'", "f32");
  expect_error<VE>([&] { fwd(with(&Inputs::A, T::randn({36, 5})), y, fin); }, "'A'", "[37, 5]");
  expect_error<VE>([&] { fwd(with(&Inputs::B, T::randn({2, 13, 5})), y, fin); }, "'B'", "[b, l, g, n]");
  expect_error<VE>([&] { fwd(with(&Inputs::B, T::randn({2, 13, 2, 5})), y, fin); }, "'B'", "divide d = 37");
  expect_error<VE>([&] { fwd(with(&Inputs::B, T::randn({2, 13, 1, 4})), y, fin); }, "'B'", "[2, 13, 1, 5]");
  expect_error<VE>([&] { fwd(with(&Inputs::C, T::randn({2, 12, 1, 5})), y, fin); }, "'C'", "[2, 13, 1, 5]");
  expect_error<VE>([&] { fwd(with(&Inputs::D, T::randn({38})), y, fin); }, "'D'", "[37]");
  expect_error<VE>([&] { fwd(with(&Inputs::z, T::randn({2, 13, 38})), y, fin); }, "'z'", "[2, 13, 37]");
  expect_error<VE>([&] { fwd(with(&Inputs::bias, T::randn({1, 37})), y, fin); }, "'delta_bias'", "[37]");
  expect_error<VE>([&] { fwd(with(&Inputs::init, T::randn({2, 5, 37})), y, fin); }, "'initial_state'",
                          "[2, 37, 5]");
  expect_error<TE>([&] { fwd(with(&Inputs::seq, Tensor::zeros({2, 13}, DType::i64)), y, fin); }, "'seq_idx'",
                          "i32");
  expect_error<VE>([&] { fwd(with(&Inputs::seq, Tensor::zeros({13, 2}, DType::i32)), y, fin); }, "'seq_idx'",
                          "[2, 13]");
  Tensor bad_seq = Tensor::zeros({2, 13}, DType::i32);
  bad_seq.data<int32_t>()[13 + 4] = 2;  // row 1: 0 0 0 0 2 0 ...
  expect_error<VE>([&] { fwd(with(&Inputs::seq, bad_seq), y, fin); }, "'seq_idx'", "row 1");
  Tensor A_t = T::randn({5, 37}).transpose(0, 1);
  expect_error<VE>([&] { fwd(with(&Inputs::A, A_t), y, fin); }, "'A'", "not contiguous");
  Tensor y_bad = T::poisoned({2, 13, 36}), fin_bad = T::poisoned({2, 37, 4});
  expect_error<VE>([&] { fwd(in, y_bad, fin); }, "'y'", "[2, 13, 37]");
  expect_error<VE>([&] { fwd(in, y, fin_bad); }, "'final_state'", "[2, 37, 5]");
  auto on_cuda = [](const Tensor& t) {
    return Tensor::from_blob(t.data_ptr(), t.shape(), t.strides(), t.dtype(), mt::Device::cuda(0), t.storage());
  };
  expect_error<TE>([&] { fwd(with(&Inputs::C, on_cuda(in.C)), y, fin); }, "'C'", "cuda");
  {
    Inputs c{on_cuda(in.u), on_cuda(in.delta), on_cuda(in.A), on_cuda(in.B), on_cuda(in.C)};
    Tensor yc = on_cuda(y);
    expect_error<TE>([&] { fwd(c, yc, none); }, "selective_scan_forward", "bf16 or f32 on CUDA");
  }

  expect_error<TE>(
      [&] {
        Tensor st_c = on_cuda(fin);
        mt::selective_scan_step(in.u.select(1, 0).contiguous(), in.delta.select(1, 0).contiguous(), in.A,
                                in.B.select(1, 0).contiguous(), in.C.select(1, 0).contiguous(), none, none, none,
                                st_c, y);
      },
      "'state'", "cuda");

  // Backward: gradient shapes, and dz exactly when z.
  Grads g = backward(in, cs, T::randn({2, 13, 37}), none);
  auto bwd = [&](Grads h, const Tensor& dy, const Tensor& z) {
    mt::selective_scan_backward(dy, none, in.u, in.delta, in.A, in.B, in.C, in.D, z, in.bias, in.init, in.seq,
                                h.du, h.ddelta, h.dA, h.dB, h.dC, h.dD, h.dz, h.dbias, h.dinit, {true});
  };
  Tensor dy = T::randn({2, 13, 37});
  auto changed = [&](Tensor Grads::*field, Tensor v) {
    Grads h = g;
    h.*field = v;
    return h;
  };
  expect_error<VE>([&] { bwd(g, T::randn({2, 13, 36}), in.z); }, "'dy'", "[2, 13, 37]");
  expect_error<VE>([&] { bwd(changed(&Grads::du, T::poisoned({2, 13, 36})), dy, in.z); }, "'du'", "[2, 13, 37]");
  expect_error<VE>([&] { bwd(changed(&Grads::ddelta, none), dy, in.z); }, "'ddelta'", "undefined");
  expect_error<VE>([&] { bwd(changed(&Grads::dA, T::poisoned({37, 4})), dy, in.z); }, "'dA'", "[37, 5]");
  expect_error<VE>([&] { bwd(changed(&Grads::dB, T::poisoned({2, 13, 5})), dy, in.z); }, "'dB'", "[2, 13, 1, 5]");
  expect_error<TE>([&] { bwd(changed(&Grads::dC, T::poisoned({2, 13, 1, 5}, DType::f32)), dy, in.z); }, "'dC'",
                          "f32");
  expect_error<VE>([&] { bwd(changed(&Grads::dD, T::poisoned({36})), dy, in.z); }, "'dD'", "[37]");
  expect_error<VE>([&] { bwd(changed(&Grads::dz, none), dy, in.z); }, "'dz'", "undefined");
  expect_error<VE>([&] { bwd(g, dy, none); }, "'dz'", "'z' is not");
  expect_error<VE>([&] { bwd(changed(&Grads::dbias, T::poisoned({2})), dy, in.z); }, "'ddelta_bias'", "[37]");
  expect_error<VE>([&] { bwd(changed(&Grads::dinit, T::poisoned({2, 37, 4})), dy, in.z); }, "'d_initial_state'",
                          "[2, 37, 5]");
  expect_error<TE>([&] { bwd(changed(&Grads::dB, on_cuda(g.dB)), dy, in.z); }, "'dB'", "cuda");

  // Step: one token's shapes.
  Tensor u1 = T::randn({2, 37}), dt1 = T::randn({2, 37}), B1 = T::randn({2, 1, 5}), C1 = T::randn({2, 1, 5});
  Tensor st = T::randn({2, 37, 5}), y1 = T::poisoned({2, 37}), st_bad = T::randn({2, 37, 4}), y1_bad = T::poisoned({37});
  expect_error<VE>([&] { mt::selective_scan_step(u1, dt1, in.A, B1, C1, none, none, none, st_bad, y1); },
                          "'state'", "[2, 37, 5]");
  expect_error<VE>([&] { mt::selective_scan_step(u1, dt1, in.A, B1, C1, none, none, none, st, y1_bad); },
                          "'y'", "[2, 37]");
  expect_error<VE>([&] { mt::selective_scan_step(in.u, dt1, in.A, B1, C1, none, none, none, st, y1); }, "'u'",
                          "[b, d]");
  expect_error<VE>([&] { mt::selective_scan_step(u1, dt1, in.A, in.B, C1, none, none, none, st, y1); }, "'B'",
                          "[b, g, n]");
  expect_error<VE>([&] { mt::selective_scan_step(u1, dt1, in.A, B1, in.C, none, none, none, st, y1); }, "'C'",
                          "[2, 1, 5]");
}
