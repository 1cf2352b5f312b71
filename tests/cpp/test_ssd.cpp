// SSD (Mamba-2 scan) on the CPU: forward against a naive loop, chunked against
// sequential, packed documents, decode steps, fp32 against fp64, and every
// gradient against finite differences; and the same numbers as the Mamba-1
// selective scan with one A per head. Argument checks: test_ssd_checks.cpp.
#include "ssd_testing.h"

namespace mt = mambatron;
using mt::DType;
using mt::Shape;
using mt::SsdOptions;
using mt::Tensor;
using namespace mt::testing;
using namespace mt::testing::ssd;

namespace {

void expect_forward_matches_naive(const Inputs& in, const SsdOptions& opt, double tol = 1e-12) {
  Outputs got = forward(in, opt), want = naive(in, opt);
  EXPECT_LE(max_rel_error(got.y, want.y), tol) << "y, chunk_size " << opt.chunk_size;
  EXPECT_LE(max_rel_error(got.final_state, want.final_state), tol) << "final_state, chunk_size " << opt.chunk_size;
}

}  // namespace

TEST(SsdForward, MatchesNaiveLoop) {
  Inputs in = random_inputs({2, 13, 4, 37, 2, 11});
  for (int64_t q : {0, 1, 4, 7, 13, 64}) expect_forward_matches_naive(in, options(q));
}

TEST(SsdForward, MatchesNaiveLoopWithoutOptionalInputs) {
  Inputs in = random_inputs({2, 13, 3, 5, 1, 7}, {false, false, false}, /*positive_dt=*/true);
  for (int64_t q : {0, 5, 64}) expect_forward_matches_naive(in, options(q, /*softplus=*/false));
}

TEST(SsdForward, GroupsOneAndPerHead) {
  for (int64_t g : {1, 6}) {
    Inputs in = random_inputs({2, 19, 6, 5, g, 8});
    for (int64_t q : {0, 8}) expect_forward_matches_naive(in, options(q));
  }
}

TEST(SsdForward, DtLimitsClamp) {
  Inputs in = random_inputs({2, 17, 3, 4, 1, 6});
  SsdOptions opt = options(0);
  opt.dt_min = 0.15;
  opt.dt_max = 0.3;
  for (int64_t q : {0, 6}) {
    opt.chunk_size = q;
    expect_forward_matches_naive(in, opt);
  }
  // The limits change the result: these inputs give Δ on both sides of them.
  EXPECT_GT(max_rel_error(forward(in, opt).y, forward(in, options(0)).y), 1e-3);
}

TEST(SsdForward, ChunkedEqualsSequential) {
  for (int64_t l : {1, 13, 200, 257}) {
    Inputs in = random_inputs({2, l, 4, 8, 2, 16});
    Outputs seq = forward(in, options(0));
    for (int64_t q : {1, 7, 64, 128}) {
      Outputs ch = forward(in, options(q));
      EXPECT_LE(max_rel_error(ch.y, seq.y), 1e-12) << "l " << l << " Q " << q;
      EXPECT_LE(max_rel_error(ch.final_state, seq.final_state), 1e-12) << "l " << l << " Q " << q;
    }
  }
}

// A packed batch with seq_idx gives each document the result it has alone; the
// initial state feeds each row's first document, and final_state is its last one's.
TEST(SsdForward, PackedDocumentsEqualOneByOne) {
  std::vector<std::vector<int>> docs = {{5, 9, 1, 12}, {27}};
  const int64_t l = 27, h = 4, p = 6, g = 2, n = 5;
  Inputs in = random_inputs({2, l, h, p, g, n});
  in.seq_idx = seq_idx_from_lengths(docs, l);
  for (int64_t q : {0, 4, 7, 64}) {
    Outputs packed = forward(in, options(q));
    for (int64_t bi = 0; bi < 2; ++bi) {
      int64_t start = 0;
      for (size_t d = 0; d < docs[bi].size(); ++d) {
        int64_t len = docs[bi][d];
        Inputs one = in;
        one.s = {1, len, h, p, g, n};
        one.seq_idx = Tensor();
        one.x = in.x.narrow(0, bi, 1).narrow(1, start, len).contiguous();
        one.dt = in.dt.narrow(0, bi, 1).narrow(1, start, len).contiguous();
        one.B = in.B.narrow(0, bi, 1).narrow(1, start, len).contiguous();
        one.C = in.C.narrow(0, bi, 1).narrow(1, start, len).contiguous();
        one.initial_state = d == 0 ? in.initial_state.narrow(0, bi, 1).contiguous() : Tensor();
        Outputs alone = forward(one, options(q));
        Tensor part = packed.y.narrow(0, bi, 1).narrow(1, start, len);
        EXPECT_LE(max_rel_error(part, alone.y), 1e-12) << "row " << bi << " doc " << d << " Q " << q;
        if (d + 1 == docs[bi].size())
          EXPECT_LE(max_rel_error(packed.final_state.narrow(0, bi, 1), alone.final_state), 1e-12);
        start += len;
      }
    }
    expect_forward_matches_naive(in, options(q));
  }
}

TEST(SsdForward, Fp32MatchesFp64) {
  Inputs in32 = random_inputs({2, 150, 4, 16, 2, 32}).to(DType::f32);
  Inputs in64 = in32.to(DType::f64);  // the same rounded values
  for (int64_t q : {0, 64}) {
    Outputs a = forward(in32, options(q)), b = forward(in64, options(q));
    EXPECT_EQ(a.y.dtype(), DType::f32);
    EXPECT_LE(max_rel_error(a.y, b.y), 1e-5) << "Q " << q;
    EXPECT_LE(max_rel_error(a.final_state, b.final_state), 1e-5) << "Q " << q;
  }
}

TEST(SsdForward, EmptySequenceKeepsState) {
  Inputs in = random_inputs({2, 0, 3, 4, 1, 5});
  for (int64_t q : {0, 8}) {
    Outputs o = forward(in, options(q));
    EXPECT_EQ(max_rel_error(o.final_state, in.initial_state), 0.0);
  }
}

// Decode: ssd_step token by token from the initial state gives the forward's y
// at every position and its final state.
TEST(SsdStep, TokenByTokenEqualsForward) {
  for (DType dt : {DType::f64, DType::f32}) {
    Inputs in = random_inputs({3, 21, 4, 7, 2, 9}).to(dt);
    SsdOptions opt = options(0);
    opt.dt_max = 0.5;  // the step applies the same Δ transform
    Tensor state = in.initial_state.clone();
    Tensor ys = Tensor::empty(in.x.shape(), dt);
    for (int64_t t = 0; t < in.s.l; ++t) {
      Tensor x = in.x.select(1, t).contiguous(), dtt = in.dt.select(1, t).contiguous();
      Tensor B = in.B.select(1, t).contiguous(), C = in.C.select(1, t).contiguous();
      Tensor y = poisoned(x.shape(), dt);
      mt::ssd_step(x, dtt, in.A, B, C, in.D, in.dt_bias, state, y, opt);
      ys.select(1, t).copy_(y);
    }
    double tol = dt == DType::f64 ? 1e-12 : 1e-6;
    for (int64_t q : {0, 8}) {
      opt.chunk_size = q;
      Outputs full = forward(in, opt);
      EXPECT_LE(max_rel_error(ys, full.y), tol) << dtype_name(dt) << " Q " << q;
      EXPECT_LE(max_rel_error(state, full.final_state), tol) << dtype_name(dt) << " Q " << q;
    }
  }
}

TEST(SsdStep, WithoutOptionalInputsMatchesNaive) {
  Inputs in = random_inputs({2, 1, 4, 5, 4, 3}, {false, false, false}, /*positive_dt=*/true);
  Tensor state = Tensor::zeros(in.state_shape(), DType::f64);
  Tensor y = poisoned({2, 4, 5});
  mt::ssd_step(in.x.select(1, 0).contiguous(), in.dt.select(1, 0).contiguous(), in.A,
               in.B.select(1, 0).contiguous(), in.C.select(1, 0).contiguous(), Tensor(), Tensor(), state, y,
               options(0, false));
  Outputs want = naive(in, options(0, false));
  EXPECT_LE(max_rel_error(y, want.y.select(1, 0)), 1e-14);
  EXPECT_LE(max_rel_error(state, want.final_state), 1e-14);
}

// ---------------------------------------------------------------- backward

namespace {

// Every gradient of loss = ⟨wy, y⟩ + ⟨wf, final_state⟩ against central differences.
void expect_gradients_match_fd(Inputs in, const SsdOptions& opt) {
  Tensor wy = randn(in.x.shape()), wf = randn(in.state_shape());
  Gradients g = backward(in, wy, wf, opt);
  auto loss = [&] {
    Outputs o = forward(in, opt);
    return dot(wy, o.y) + dot(wf, o.final_state);
  };
  std::string q = " (chunk_size " + std::to_string(opt.chunk_size) + ")";
  expect_gradient(loss, in.x, g.dx, ("dx" + q).c_str());
  expect_gradient(loss, in.dt, g.ddt, ("ddt" + q).c_str());
  expect_gradient(loss, in.A, g.dA, ("dA" + q).c_str());
  expect_gradient(loss, in.B, g.dB, ("dB" + q).c_str());
  expect_gradient(loss, in.C, g.dC, ("dC" + q).c_str());
  expect_gradient(loss, in.D, g.dD, ("dD" + q).c_str());
  expect_gradient(loss, in.dt_bias, g.ddt_bias, ("ddt_bias" + q).c_str());
  expect_gradient(loss, in.initial_state, g.d_initial_state, ("d_initial_state" + q).c_str());
}

}  // namespace

TEST(SsdBackward, FiniteDifferences) {
  Inputs in = random_inputs({2, 11, 4, 3, 2, 5});
  for (int64_t q : {0, 1, 4, 16}) expect_gradients_match_fd(in, options(q));
}

TEST(SsdBackward, FiniteDifferencesWithDocumentsAndOneGroup) {
  Inputs in = random_inputs({2, 12, 3, 4, 1, 3});
  in.seq_idx = seq_idx_from_lengths({{4, 1, 7}, {6, 6}}, 12);
  for (int64_t q : {0, 5}) expect_gradients_match_fd(in, options(q));
}

TEST(SsdBackward, FiniteDifferencesWithDtLimitsAndNoSoftplus) {
  Inputs in = random_inputs({2, 9, 2, 3, 2, 4}, {}, /*positive_dt=*/true);
  SsdOptions opt = options(0, /*softplus=*/false);
  opt.dt_min = 0.2;
  opt.dt_max = 0.45;
  for (int64_t q : {0, 4}) {
    opt.chunk_size = q;
    expect_gradients_match_fd(in, opt);
  }
  // Where Δ is clamped, ddt is exactly 0.
  Gradients g = backward(in, randn(in.x.shape()), Tensor(), opt);
  auto dt = values(in.dt), bias = values(in.dt_bias), ddt = values(g.ddt);
  int clamped = 0;
  for (size_t i = 0; i < dt.size(); ++i) {
    double v = dt[i] + bias[i % in.s.h];
    if (v < 0.2 || v > 0.45) {
      EXPECT_EQ(ddt[i], 0.0) << "element " << i;
      ++clamped;
    }
  }
  EXPECT_GT(clamped, 0);
}

// Without d_final_state, and with D, dt_bias and initial_state absent: the
// optional gradients are those at zero.
TEST(SsdBackward, AbsentOptionalInputs) {
  Inputs in = random_inputs({2, 10, 2, 3, 1, 4}, {false, false, false});
  Inputs zeros = in;
  zeros.D = Tensor::zeros({2}, DType::f64);
  zeros.dt_bias = Tensor::zeros({2}, DType::f64);
  zeros.initial_state = Tensor::zeros(in.state_shape(), DType::f64);
  Tensor dy = randn(in.x.shape());
  for (int64_t q : {0, 3}) {
    Gradients a = backward(in, dy, Tensor(), options(q)), b = backward(zeros, dy, Tensor(), options(q));
    for (size_t i = 0; i < a.named().size(); ++i)
      EXPECT_LE(max_rel_error(a.named()[i].second, b.named()[i].second), 1e-15) << a.named()[i].first;
  }
  auto loss = [&] { return dot(dy, forward(zeros, options(0)).y); };
  Gradients g = backward(in, dy, Tensor(), options(0));
  expect_gradient(loss, zeros.D, g.dD, "dD at zero");
  expect_gradient(loss, zeros.initial_state, g.d_initial_state, "d_initial_state at zero");
}

TEST(SsdBackward, ChunkedEqualsSequential) {
  for (int64_t l : {1, 13, 200, 257}) {
    Inputs in = random_inputs({2, l, 4, 6, 2, 8});
    if (l == 200) in.seq_idx = seq_idx_from_lengths({{70, 1, 129}, {200}}, l);
    Tensor dy = randn(in.x.shape()), df = randn(in.state_shape());
    Gradients seq = backward(in, dy, df, options(0));
    for (int64_t q : {1, 7, 64, 128}) {
      Gradients ch = backward(in, dy, df, options(q));
      for (size_t i = 0; i < seq.named().size(); ++i)
        EXPECT_LE(max_rel_error(ch.named()[i].second, seq.named()[i].second), 1e-11)
            << seq.named()[i].first << " l " << l << " Q " << q;
    }
  }
}

TEST(SsdBackward, Fp32MatchesFp64) {
  Inputs in32 = random_inputs({2, 150, 4, 16, 2, 32}).to(DType::f32);
  Inputs in64 = in32.to(DType::f64);
  Tensor dy = randn(in32.x.shape(), DType::f32), df = randn(in32.state_shape(), DType::f32);
  for (int64_t q : {0, 64}) {
    Gradients a = backward(in32, dy, df, options(q)), b = backward(in64, dy.to(DType::f64), df.to(DType::f64), options(q));
    for (size_t i = 0; i < a.named().size(); ++i)
      EXPECT_LE(max_rel_error(a.named()[i].second, b.named()[i].second), 1e-5) << a.named()[i].first << " Q " << q;
  }
}

// ---------------------------------------------------------------- SSD as a selective scan

namespace {

// Repeats each of the `groups` blocks of `per` consecutive values `times` times:
// a per-head value becomes a per-channel one (channel c = head·p + i).
Tensor repeat_each(const Tensor& t, const Shape& shape, int64_t times) {
  auto v = values(t);
  Tensor r = Tensor::empty(shape, DType::f64);
  double* p = r.data<double>();
  for (size_t i = 0; i < v.size(); ++i)
    for (int64_t k = 0; k < times; ++k) p[i * times + k] = v[i];
  return r;
}

// The sum of each run of `times` consecutive values: a per-channel gradient
// becomes a per-head one.
Tensor sum_each(const Tensor& t, const Shape& shape, int64_t times) {
  auto v = values(t);
  Tensor r = Tensor::zeros(shape, DType::f64);
  double* p = r.data<double>();
  for (size_t i = 0; i < v.size(); ++i) p[i / times] += v[i];
  return r;
}

}  // namespace

// SSD is the Mamba-1 selective scan with one A per head: channels c = head·p + i,
// A[c, :] = A[head], delta = dt repeated over p, and B, C unchanged (the g groups
// split heads and channels alike).
TEST(SsdSelectiveScan, SameResultsAsTheMamba1Scan) {
  const Sizes s{2, 23, 4, 3, 2, 5};
  const int64_t d = s.h * s.p;
  Inputs in = random_inputs(s);
  in.seq_idx = seq_idx_from_lengths({{10, 13}, {23}}, s.l);
  Tensor u = in.x.view({s.b, s.l, d});
  Tensor delta = repeat_each(in.dt, {s.b, s.l, d}, s.p);
  Tensor A = repeat_each(in.A, {d, s.n}, s.p * s.n);
  Tensor D = repeat_each(in.D, {d}, s.p), bias = repeat_each(in.dt_bias, {d}, s.p);
  Tensor h0 = in.initial_state.view({s.b, d, s.n});
  mt::SelectiveScanOptions sopt;
  sopt.delta_softplus = true;

  Tensor y = poisoned({s.b, s.l, d}), fs = poisoned({s.b, d, s.n});
  mt::selective_scan_forward(u, delta, A, in.B, in.C, D, Tensor(), bias, h0, in.seq_idx, y, fs, sopt);
  Tensor wy = randn(in.x.shape()), wf = randn(in.state_shape());
  Tensor du = poisoned(u.shape()), ddelta = poisoned(delta.shape()), dA = poisoned(A.shape()),
         dB = poisoned(in.B.shape()), dC = poisoned(in.C.shape()), dD = poisoned({d}), dz,
         dbias = poisoned({d}), dh0 = poisoned(h0.shape());
  mt::selective_scan_backward(wy.view({s.b, s.l, d}), wf.view({s.b, d, s.n}), u, delta, A, in.B, in.C, D, Tensor(),
                              bias, h0, in.seq_idx, du, ddelta, dA, dB, dC, dD, dz, dbias, dh0, sopt);

  for (int64_t q : {0, 8}) {
    Outputs o = forward(in, options(q));
    EXPECT_LE(max_rel_error(o.y, y.view(in.x.shape())), 1e-12) << "Q " << q;
    EXPECT_LE(max_rel_error(o.final_state, fs.view(in.state_shape())), 1e-12) << "Q " << q;
    Gradients g = backward(in, wy, wf, options(q));
    EXPECT_LE(max_rel_error(g.dx, du.view(in.x.shape())), 1e-12) << "Q " << q;
    EXPECT_LE(max_rel_error(g.ddt, sum_each(ddelta, in.dt.shape(), s.p)), 1e-12) << "Q " << q;
    EXPECT_LE(max_rel_error(g.dA, sum_each(dA, {s.h}, s.p * s.n)), 1e-12) << "Q " << q;
    EXPECT_LE(max_rel_error(g.dB, dB), 1e-12) << "Q " << q;
    EXPECT_LE(max_rel_error(g.dC, dC), 1e-12) << "Q " << q;
    EXPECT_LE(max_rel_error(g.dD, sum_each(dD, {s.h}, s.p)), 1e-12) << "Q " << q;
    EXPECT_LE(max_rel_error(g.ddt_bias, sum_each(dbias, {s.h}, s.p)), 1e-12) << "Q " << q;
    EXPECT_LE(max_rel_error(g.d_initial_state, dh0.view(in.state_shape())), 1e-12) << "Q " << q;
  }
}
