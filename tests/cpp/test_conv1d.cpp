// conv1d_forward / _backward / _step: against a naive loop, finite differences,
// f32 against f64, decoding token by token, packed documents, argument checks.
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
  int64_t b = 2, l = 13, c = 37, w = 4;
  bool bias = true, init = true, silu = true, seq = false;
};

struct Inputs {
  Tensor x, weight, bias, init, seq;
};

Tensor cast(const Tensor& t, DType dt) { return t.defined() ? t.to(dt) : Tensor(); }

// Document ids per token: non-decreasing, with documents of random lengths (some of
// them shorter than the conv width), starting from a random id.
Tensor random_seq_idx(int64_t b, int64_t l) {
  std::mt19937_64 rng(T::fresh_seed());
  Tensor s = Tensor::empty({b, l}, DType::i32);
  int32_t* p = s.data<int32_t>();
  for (int64_t i = 0; i < b; ++i) {
    int32_t id = int32_t(rng() % 5);
    for (int64_t t = 0; t < l; ++t) {
      if (t > 0 && rng() % 4 == 0) id += 1 + int32_t(rng() % 2);
      p[i * l + t] = id;
    }
  }
  return s;
}

Inputs make_inputs(const Case& cs) {
  Inputs in;
  in.x = T::randn({cs.b, cs.l, cs.c});
  in.weight = T::randn({cs.c, cs.w}, DType::f64, 0.5);
  if (cs.bias) in.bias = T::randn({cs.c});
  if (cs.init) in.init = T::randn({cs.b, cs.c, cs.w - 1});
  if (cs.seq) in.seq = random_seq_idx(cs.b, cs.l);
  return in;
}

Inputs cast(const Inputs& in, DType dt) { return {cast(in.x, dt), cast(in.weight, dt), cast(in.bias, dt), cast(in.init, dt), in.seq}; }

struct Outputs {
  Tensor out, final_state;
};

Outputs forward(const Inputs& in, const Case& cs, DType dt = DType::f64) {
  Outputs o{T::poisoned({cs.b, cs.l, cs.c}, dt), T::poisoned({cs.b, cs.c, cs.w - 1}, dt)};
  mt::conv1d_forward(in.x, in.weight, in.bias, in.init, in.seq, o.out, o.final_state, {cs.silu});
  return o;
}

struct Grads {
  Tensor dx, dweight, dbias, dinit;
};

Grads backward(const Inputs& in, const Case& cs, const Tensor& dout, const Tensor& dfinal, DType dt = DType::f64) {
  Grads g{T::poisoned({cs.b, cs.l, cs.c}, dt), T::poisoned({cs.c, cs.w}, dt), T::poisoned({cs.c}, dt),
          T::poisoned({cs.b, cs.c, cs.w - 1}, dt)};
  mt::conv1d_backward(dout, dfinal, in.x, in.weight, in.bias, in.init, in.seq, g.dx, g.dweight, g.dbias, g.dinit,
                      {cs.silu});
  return g;
}

// The definition, token by token: a tap reads x inside the token's document, the
// initial state before position 0 when the token belongs to the row's first document,
// and zero otherwise.
Outputs naive(const Inputs& in, const Case& cs) {
  auto x = T::values(in.x), w = T::values(in.weight);
  std::vector<double> bias = cs.bias ? T::values(in.bias) : std::vector<double>(cs.c, 0.0);
  std::vector<double> init = cs.init ? T::values(in.init) : std::vector<double>(cs.b * cs.c * (cs.w - 1), 0.0);
  std::vector<double> seq(cs.b * cs.l, 0.0);
  if (cs.seq) seq = T::values(in.seq);
  const int64_t b = cs.b, l = cs.l, c = cs.c, W = cs.w;
  auto input = [&](int64_t i, int64_t t, int64_t s, int64_t ch) {  // seen by token t (t may be l)
    double doc = seq[i * l + std::min(t, l - 1)];
    if (s >= 0) return seq[i * l + s] == doc ? x[(i * l + s) * c + ch] : 0.0;
    return doc == seq[i * l] ? init[(i * c + ch) * (W - 1) + s + W - 1] : 0.0;
  };
  Outputs o{Tensor::empty({b, l, c}, DType::f64), Tensor::empty({b, c, W - 1}, DType::f64)};
  double* out = o.out.data<double>();
  double* fin = o.final_state.data<double>();
  for (int64_t i = 0; i < b; ++i)
    for (int64_t ch = 0; ch < c; ++ch) {
      for (int64_t t = 0; t < l; ++t) {
        double acc = bias[ch];
        for (int64_t k = 0; k < W; ++k) acc += w[ch * W + k] * input(i, t, t - (W - 1) + k, ch);
        out[(i * l + t) * c + ch] = cs.silu ? acc / (1 + std::exp(-acc)) : acc;
      }
      for (int64_t j = 0; j < W - 1; ++j) fin[(i * c + ch) * (W - 1) + j] = input(i, l, l - (W - 1) + j, ch);
    }
  return o;
}

std::string describe(const Case& cs) {
  return "w=" + std::to_string(cs.w) + " bias=" + std::to_string(cs.bias) + " init=" + std::to_string(cs.init) +
         " silu=" + std::to_string(cs.silu) + " seq=" + std::to_string(cs.seq);
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  for (int w = 2; w <= 4; ++w)
    for (int flags = 0; flags < 16; ++flags) {
      Case cs;
      cs.w = w;
      cs.bias = flags & 1;
      cs.init = flags & 2;
      cs.silu = flags & 4;
      cs.seq = flags & 8;
      cases.push_back(cs);
    }
  return cases;
}

}  // namespace

TEST(Conv1dForward, MatchesNaiveLoop) {
  for (const Case& cs : all_cases()) {
    Inputs in = make_inputs(cs);
    Outputs got = forward(in, cs), want = naive(in, cs);
    EXPECT_LE(T::max_rel_error(got.out, want.out), 1e-14) << describe(cs);
    EXPECT_LE(T::max_rel_error(got.final_state, want.final_state), 1e-14) << describe(cs);
  }
}

TEST(Conv1dForward, ManyChannelBlocksAndShortSequences) {
  // Channel counts across several blocks; sequences shorter than the width.
  for (int64_t c : {1, 64, 65, 150})
    for (int64_t l : {1, 2, 5}) {
      Case cs;
      cs.c = c;
      cs.l = l;
      cs.b = 3;
      cs.seq = l > 2;
      Inputs in = make_inputs(cs);
      Outputs got = forward(in, cs), want = naive(in, cs);
      EXPECT_LE(T::max_rel_error(got.out, want.out), 1e-14) << "c=" << c << " l=" << l;
      EXPECT_LE(T::max_rel_error(got.final_state, want.final_state), 1e-14) << "c=" << c << " l=" << l;
    }
}

TEST(Conv1dForward, EmptySequenceCarriesTheInitialState) {
  Case cs;
  cs.l = 0;
  Inputs in = make_inputs(cs);
  Outputs got = forward(in, cs);
  EXPECT_EQ(T::max_rel_error(got.final_state, in.init), 0.0);
}

TEST(Conv1dForward, PackedDocumentsEqualDocumentsOneByOne) {
  // Row 0: documents of 5, 1, 7 tokens; row 1: 2 and 11.
  const std::vector<std::vector<int64_t>> docs = {{5, 1, 7}, {2, 11}};
  for (int w = 2; w <= 4; ++w) {
    Case cs;
    cs.w = w;
    cs.seq = true;
    Inputs in = make_inputs(cs);
    int32_t* seq = in.seq.data<int32_t>();
    for (int64_t i = 0; i < 2; ++i) {
      int64_t t = 0;
      for (size_t k = 0; k < docs[i].size(); ++k)
        for (int64_t j = 0; j < docs[i][k]; ++j) seq[i * cs.l + t++] = int32_t(10 * i + 3 * k);
    }
    Outputs packed = forward(in, cs);
    for (int64_t i = 0; i < 2; ++i) {
      int64_t t0 = 0;
      for (size_t k = 0; k < docs[i].size(); ++k) {
        Case one = cs;
        one.b = 1;
        one.l = docs[i][k];
        one.seq = false;
        one.init = cs.init && k == 0;  // the initial state feeds the row's first document only
        Inputs sub{in.x.select(0, i).narrow(0, t0, one.l).contiguous().view({1, one.l, cs.c}), in.weight, in.bias,
                   one.init ? in.init.narrow(0, i, 1).contiguous() : Tensor(), Tensor()};
        Outputs alone = forward(sub, one);
        Tensor part = packed.out.select(0, i).narrow(0, t0, one.l).contiguous().view({1, one.l, cs.c});
        EXPECT_LE(T::max_rel_error(part, alone.out), 1e-15) << "w=" << w << " row " << i << " doc " << k;
        if (k + 1 == docs[i].size())
          EXPECT_LE(T::max_rel_error(packed.final_state.narrow(0, i, 1), alone.final_state), 0.0)
              << "w=" << w << " row " << i;
        t0 += one.l;
      }
    }
  }
}

TEST(Conv1dBackward, MatchesFiniteDifferences) {
  for (const Case& base : all_cases()) {
    if (!base.bias || !base.init) continue;  // every gradient is checked; absent inputs below
    Case cs = base;
    cs.c = 5;
    Inputs in = make_inputs(cs);
    Tensor wy = T::randn({cs.b, cs.l, cs.c}), wf = T::randn({cs.b, cs.c, cs.w - 1});
    auto loss = [&] {
      Outputs o = forward(in, cs);
      return T::dot(wy, o.out) + T::dot(wf, o.final_state);
    };
    Grads g = backward(in, cs, wy, wf);
    std::string what = describe(cs);
    T::expect_gradient(loss, in.x, g.dx, ("dx " + what).c_str());
    T::expect_gradient(loss, in.weight, g.dweight, ("dweight " + what).c_str());
    T::expect_gradient(loss, in.bias, g.dbias, ("dbias " + what).c_str());
    T::expect_gradient(loss, in.init, g.dinit, ("d_initial_state " + what).c_str());
  }
}

TEST(Conv1dBackward, AbsentInputsAndOutputs) {
  // Without bias, initial state and d_final_state, the gradients equal those of
  // zero tensors given explicitly; the optional gradients may be skipped.
  Case cs;
  cs.seq = true;
  Inputs in = make_inputs(cs);
  Inputs zero = in;
  zero.bias = Tensor::zeros({cs.c}, DType::f64);
  zero.init = Tensor::zeros({cs.b, cs.c, cs.w - 1}, DType::f64);
  Tensor dout = T::randn({cs.b, cs.l, cs.c});
  Grads full = backward(zero, cs, dout, Tensor::zeros({cs.b, cs.c, cs.w - 1}, DType::f64));
  Inputs absent = in;
  absent.bias = Tensor();
  absent.init = Tensor();
  Grads g = backward(absent, cs, dout, Tensor());
  EXPECT_LE(T::max_rel_error(g.dx, full.dx), 1e-15);
  EXPECT_LE(T::max_rel_error(g.dweight, full.dweight), 1e-15);
  EXPECT_LE(T::max_rel_error(g.dbias, full.dbias), 1e-15);
  EXPECT_LE(T::max_rel_error(g.dinit, full.dinit), 1e-15);
  Tensor dx = T::poisoned({cs.b, cs.l, cs.c}), dw = T::poisoned({cs.c, cs.w}), none;
  mt::conv1d_backward(dout, Tensor(), absent.x, absent.weight, Tensor(), Tensor(), absent.seq, dx, dw, none, none,
                      {cs.silu});
  EXPECT_LE(T::max_rel_error(dx, full.dx), 1e-15);
  EXPECT_LE(T::max_rel_error(dw, full.dweight), 1e-15);
}

TEST(Conv1d, Float32MatchesFloat64) {
  for (const Case& base : all_cases()) {
    if (!base.bias || !base.init) continue;
    Case cs = base;
    Inputs in = make_inputs(cs), in32 = cast(in, DType::f32);
    Outputs o64 = forward(in, cs), o32 = forward(in32, cs, DType::f32);
    EXPECT_LE(T::max_rel_error(o32.out, o64.out), 1e-5) << describe(cs);
    EXPECT_LE(T::max_rel_error(o32.final_state, o64.final_state), 1e-5) << describe(cs);
    Tensor dout = T::randn({cs.b, cs.l, cs.c}), dfinal = T::randn({cs.b, cs.c, cs.w - 1});
    Grads g64 = backward(in, cs, dout, dfinal);
    Grads g32 = backward(in32, cs, dout.to(DType::f32), dfinal.to(DType::f32), DType::f32);
    EXPECT_LE(T::max_rel_error(g32.dx, g64.dx), 1e-5) << describe(cs);
    EXPECT_LE(T::max_rel_error(g32.dweight, g64.dweight), 1e-5) << describe(cs);
    EXPECT_LE(T::max_rel_error(g32.dbias, g64.dbias), 1e-5) << describe(cs);
    EXPECT_LE(T::max_rel_error(g32.dinit, g64.dinit), 1e-5) << describe(cs);
  }
}

TEST(Conv1dStep, TokenByTokenEqualsForward) {
  for (const Case& base : all_cases()) {
    if (base.seq || !base.init) continue;
    for (DType dt : {DType::f64, DType::f32}) {
      Case cs = base;
      Inputs in = cast(make_inputs(cs), dt);
      Outputs full = forward(in, cs, dt);
      Tensor state = in.init.clone();
      for (int64_t t = 0; t < cs.l; ++t) {
        Tensor x = in.x.select(1, t).contiguous(), out = T::poisoned({cs.b, cs.c}, dt);
        mt::conv1d_step(x, in.weight, in.bias, state, out, {cs.silu});
        EXPECT_LE(T::max_rel_error(out, full.out.select(1, t)), dt == DType::f64 ? 1e-15 : 1e-6)
            << describe(cs) << " token " << t;
      }
      EXPECT_EQ(T::max_rel_error(state, full.final_state), 0.0) << describe(cs);
    }
  }
}

TEST(Conv1d, RejectsBadArguments) {
  Case cs;
  Inputs in = make_inputs(cs);
  Tensor out = T::poisoned({2, 13, 37}), fin = T::poisoned({2, 37, 3}), none;
  auto fwd = [&](const Tensor& x, const Tensor& w, const Tensor& b, const Tensor& init, const Tensor& seq, Tensor& o,
                 Tensor& f) { mt::conv1d_forward(x, w, b, init, seq, o, f); };
  using VE = mt::ValueError;
  using TE = mt::TypeError;
  expect_error<VE>([&] { fwd(none, in.weight, none, none, none, out, fin); }, "'x'");
  expect_error<VE>([&] { fwd(in.x.view({26, 37}), in.weight, none, none, none, out, fin); }, "'x'", "3 dims");
  expect_error<TE>([&] { fwd(in.x.to(DType::bf16), in.weight, none, none, none, out, fin); }, "'x'", "f32 or f64");
  expect_error<TE>([&] { fwd(in.x, in.weight.to(DType::f32), none, none, none, out, fin); }, "'weight'", "f32");
  expect_error<VE>([&] { fwd(in.x, T::randn({36, 4}), none, none, none, out, fin); }, "'weight'", "[37, 4]");
  expect_error<VE>([&] { fwd(in.x, T::randn({37, 5}), none, none, none, out, fin); }, "'weight'", "between 2 and 4");
  expect_error<VE>([&] { fwd(in.x, in.weight, T::randn({36}), none, none, out, fin); }, "'bias'", "[37]");
  expect_error<VE>([&] { fwd(in.x, in.weight, none, T::randn({2, 37, 4}), none, out, fin); }, "'initial_state'",
                          "[2, 37, 3]");
  expect_error<TE>([&] { fwd(in.x, in.weight, none, none, T::randn({2, 13}), out, fin); }, "'seq_idx'", "i32");
  expect_error<VE>([&] { fwd(in.x, in.weight, none, none, Tensor::zeros({2, 12}, DType::i32), out, fin); },
                          "'seq_idx'", "[2, 13]");
  Tensor bad_seq = Tensor::zeros({2, 13}, DType::i32);
  bad_seq.data<int32_t>()[5] = 3;  // 0 0 0 0 0 3 0 ...: decreases at position 6
  expect_error<VE>([&] { fwd(in.x, in.weight, none, none, bad_seq, out, fin); }, "'seq_idx'", "position 6");
  Tensor out_bad = T::poisoned({2, 13, 36});
  expect_error<VE>([&] { fwd(in.x, in.weight, none, none, none, out_bad, fin); }, "'out'", "[2, 13, 37]");
  Tensor out_t = T::poisoned({2, 37, 13}).transpose(1, 2);
  expect_error<VE>([&] { fwd(in.x, in.weight, none, none, none, out_t, fin); }, "'out'", "not contiguous");
  Tensor fin_bad = T::poisoned({2, 37, 4});
  expect_error<VE>([&] { fwd(in.x, in.weight, none, none, none, out, fin_bad); }, "'final_state'", "[2, 37, 3]");
  // Devices: a tensor labelled CUDA (never read) next to CPU tensors, then all of them on CUDA
  // in f64, which the CUDA op does not take.
  auto on_cuda = [](const Tensor& t) {
    return Tensor::from_blob(t.data_ptr(), t.shape(), t.strides(), t.dtype(), mt::Device::cuda(0), t.storage());
  };
  expect_error<TE>([&] { fwd(in.x, on_cuda(in.weight), none, none, none, out, fin); }, "'weight'", "cuda");
  Tensor out_c = on_cuda(out);
  expect_error<TE>([&] { fwd(on_cuda(in.x), on_cuda(in.weight), none, none, none, out_c, none); },
                          "conv1d_forward", "bf16 or f32 on CUDA");

  // Backward: the gradients' shapes.
  Tensor dout = T::randn({2, 13, 37}), dx = T::poisoned({2, 13, 37}), dw = T::poisoned({37, 4});
  Tensor dw_bad = T::poisoned({37, 3}), dx_bad = T::poisoned({2, 12, 37}), dinit_bad = T::poisoned({2, 3, 37});
  expect_error<VE>([&] { mt::conv1d_backward(dout, none, in.x, in.weight, none, none, none, dx, dw_bad, none, none); },
                          "'dweight'", "[37, 4]");
  expect_error<VE>([&] { mt::conv1d_backward(dout, none, in.x, in.weight, none, none, none, dx_bad, dw, none, none); },
                          "'dx'", "[2, 13, 37]");
  expect_error<VE>(
      [&] { mt::conv1d_backward(dout, none, in.x, in.weight, none, none, none, dx, dw, none, dinit_bad); },
      "'d_initial_state'", "[2, 37, 3]");
  expect_error<VE>(
      [&] { mt::conv1d_backward(dx_bad, none, in.x, in.weight, none, none, none, dx, dw, none, none); }, "'dout'",
      "[2, 13, 37]");
  expect_error<VE>(
      [&] { mt::conv1d_backward(dout, T::randn({2, 37, 2}), in.x, in.weight, none, none, none, dx, dw, none, none); },
      "'d_final_state'", "[2, 37, 3]");
  expect_error<TE>(
      [&] { mt::conv1d_backward(dout.to(DType::f32), none, in.x, in.weight, none, none, none, dx, dw, none, none); },
      "'dout'", "f32");

  // Step: state and output shapes.
  Tensor x1 = T::randn({2, 37}), st = T::randn({2, 37, 3}), st_bad = T::randn({2, 37, 2}), o1 = T::poisoned({2, 37});
  Tensor o1_bad = T::poisoned({2, 36});
  expect_error<VE>([&] { mt::conv1d_step(x1, in.weight, none, st_bad, o1); }, "'conv_state'", "[2, 37, 3]");
  expect_error<VE>([&] { mt::conv1d_step(x1, in.weight, none, st, o1_bad); }, "'out'", "[2, 37]");
  expect_error<VE>([&] { mt::conv1d_step(in.x, in.weight, none, st, o1); }, "'x'", "2 dims");
  expect_error<TE>([&] { mt::conv1d_step(x1.to(DType::f32), in.weight, none, st, o1); }, "'weight'", "f32");
  Tensor st_c = on_cuda(st);
  expect_error<TE>([&] { mt::conv1d_step(x1, in.weight, none, st_c, o1); }, "'conv_state'", "cuda");
  Tensor dw_c = on_cuda(dw);
  expect_error<TE>([&] { mt::conv1d_backward(dout, none, in.x, in.weight, none, none, none, dx, dw_c, none, none); },
                          "'dweight'", "cuda");
}
