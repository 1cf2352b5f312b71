// RoPE (rotate-half): forward against a naive loop, backward by finite differences
// and as the inverse rotation, fp32 against fp64, packed positions, in place, checks.
#include <cmath>

#include "attention_testing.h"

namespace mt = mambatron;
using mt::DType;
using mt::Shape;
using mt::Tensor;
using mt::testing::max_rel_error;
using mt::testing::poisoned;
using mt::testing::randn;
using mt::testing::values;
using namespace mt::testing::attn;

namespace {

// The rotation written out per element: pairs (i, i + r/2) turn by pos·base^(−2i/r).
Tensor naive_rope(const Tensor& x, const Tensor& positions, int64_t r, double base) {
  const int64_t b = x.size(0), l = x.size(1), h = x.size(2), p = x.size(3);
  auto X = values(x);
  std::vector<double> out = X;
  for (int64_t t = 0; t < b * l; ++t) {
    const double pos = positions.defined() ? positions.data<int32_t>()[t] : double(t % l);
    for (int64_t hh = 0; hh < h; ++hh)
      for (int64_t i = 0; i < r / 2; ++i) {
        const double theta = pos / std::pow(base, double(2 * i) / double(r));
        const int64_t a = (t * h + hh) * p + i, c = a + r / 2;
        out[a] = X[a] * std::cos(theta) - X[c] * std::sin(theta);
        out[c] = X[c] * std::cos(theta) + X[a] * std::sin(theta);
      }
  }
  return from_values(out, x.shape());
}

Tensor random_positions(int64_t b, int64_t l, int32_t max) {
  std::mt19937_64 rng(mt::testing::fresh_seed());
  Tensor t = Tensor::empty({b, l}, DType::i32);
  for (int64_t i = 0; i < b * l; ++i) t.data<int32_t>()[i] = int32_t(rng() % uint64_t(max));
  return t;
}

Tensor rope_fwd(const Tensor& x, const Tensor& pos, mt::RopeOptions opt) {
  Tensor out = poisoned(x.shape(), x.dtype());
  mt::rope_forward(x, out, pos, opt);
  return out;
}

Tensor rope_bwd(const Tensor& dout, const Tensor& pos, mt::RopeOptions opt) {
  Tensor dx = poisoned(dout.shape(), dout.dtype());
  mt::rope_backward(dout, dx, pos, opt);
  return dx;
}

struct Case {
  int64_t p;
  double fraction;
  double base;
};
// Odd and even head dims; partial, full and no rotation; another base.
const Case kCases[] = {{24, 0.5, 10000}, {40, 1.0, 10000}, {40, 0.25, 500}, {37, 0.0, 10000}, {6, 1.0, 10000}};

}  // namespace

TEST(AttentionRope, MatchesNaiveLoop) {
  for (Case c : kCases)
    for (bool given : {false, true}) {
      SCOPED_TRACE(mt::detail::cat("p=", c.p, " fraction ", c.fraction, given ? " positions given" : ""));
      Tensor x = randn({2, 13, 3, c.p});
      const int32_t max_pos = given ? 100000 : 13;
      Tensor pos = given ? random_positions(2, 13, max_pos) : Tensor();
      Tensor ref = naive_rope(x, pos, std::llround(c.fraction * c.p), c.base);
      // The angle pos·θ carries a relative rounding error of a few ulps, an absolute
      // one of ~pos·ε; the two computations of it may differ by that much.
      const double tol = std::max(1e-13, 16 * max_pos * 2.2e-16);
      EXPECT_LE(max_rel_error(rope_fwd(x, pos, {c.fraction, c.base}), ref), tol);
    }
}

TEST(AttentionRope, BackwardFiniteDifferences) {
  for (Case c : kCases) {
    SCOPED_TRACE(mt::detail::cat("p=", c.p, " fraction ", c.fraction));
    Tensor x = randn({2, 5, 3, c.p}), w = randn(x.shape()), pos = random_positions(2, 5, 3000);
    Tensor dx = rope_bwd(w, pos, {c.fraction, c.base});
    mt::testing::expect_gradient([&] { return mt::testing::dot(w, rope_fwd(x, pos, {c.fraction, c.base})); }, x, dx,
                                 "dx");
  }
}

TEST(AttentionRope, BackwardIsTheInverseRotation) {
  for (Case c : kCases) {
    Tensor x = randn({2, 13, 3, c.p}), pos = random_positions(2, 13, 100000);
    Tensor back = rope_bwd(rope_fwd(x, pos, {c.fraction, c.base}), pos, {c.fraction, c.base});
    EXPECT_LE(max_rel_error(back, x), 1e-14) << "p=" << c.p;
  }
}

TEST(AttentionRope, Fp32MatchesFp64) {
  for (Case c : kCases)
    for (bool given : {false, true}) {
      SCOPED_TRACE(mt::detail::cat("p=", c.p, " fraction ", c.fraction, given ? " positions given" : ""));
      Tensor x32 = randn({2, 37, 4, c.p}, DType::f32), x64 = x32.to(DType::f64);
      Tensor pos = given ? random_positions(2, 37, 8192) : Tensor();
      Tensor y32 = rope_fwd(x32, pos, {c.fraction, c.base});
      EXPECT_EQ(y32.dtype(), DType::f32);
      EXPECT_LE(max_rel_error(y32, rope_fwd(x64, pos, {c.fraction, c.base})), 1e-5);
      EXPECT_LE(max_rel_error(rope_bwd(x32, pos, {c.fraction, c.base}), rope_bwd(x64, pos, {c.fraction, c.base})), 1e-5);
    }
}

// Packed documents with positions restarting at each document equal each document
// rotated on its own at the default positions.
TEST(AttentionRope, PackedPositionsEqualDocumentsOneByOne) {
  const int64_t b = 2, l = 40;
  Tensor x = randn({b, l, 3, 24}), seq = random_documents(b, l);
  Tensor pos = Tensor::empty({b, l}, DType::i32);
  for (int64_t bi = 0; bi < b; ++bi)
    for (auto [s, e] : documents_of(seq, bi))
      for (int64_t i = s; i < e; ++i) pos.data<int32_t>()[bi * l + i] = int32_t(i - s);
  Tensor packed = rope_fwd(x, pos, {0.5, 10000});
  for (int64_t bi = 0; bi < b; ++bi)
    for (auto [s, e] : documents_of(seq, bi))
      EXPECT_LE(max_rel_error(part(packed, bi, s, e), rope_fwd(part(x, bi, s, e), Tensor(), {0.5, 10000})), 1e-15)
          << "row " << bi << " document [" << s << ", " << e << ")";
}

TEST(AttentionRope, InPlace) {
  Tensor x = randn({2, 13, 3, 24}), pos = random_positions(2, 13, 1000);
  Tensor expected = rope_fwd(x, pos, {0.5, 10000});
  Tensor y = x.clone();
  mt::rope_forward(y, y, pos, {0.5, 10000});
  EXPECT_EQ(values(y), values(expected));
  mt::rope_backward(y, y, pos, {0.5, 10000});
  EXPECT_LE(max_rel_error(y, x), 1e-14);
}

TEST(AttentionChecks, RopeRejectsBadArguments) {
  Tensor x = randn({2, 5, 3, 24}), out = poisoned({2, 5, 3, 24});
  auto fwd = [&](const Tensor& x_, Tensor o_, const Tensor& pos, mt::RopeOptions opt) {
    return [=]() mutable { mt::rope_forward(x_, o_, pos, opt); };
  };
  using mt::TypeError;
  using mt::ValueError;
  expect_error<ValueError>(fwd(randn({2, 5, 72}), out, {}, {}), {"rope_forward", "'x'", "[b, l, h, p]"});
  expect_error<TypeError>(fwd(x.to(DType::bf16), out, {}, {}), {"'x'", "f32 or f64"});
  expect_error<ValueError>(fwd(x, poisoned({2, 5, 3, 25}), {}, {}), {"'out'", "[2, 5, 3, 24]"});
  expect_error<TypeError>(fwd(x, out.to(DType::f32), {}, {}), {"'out'", "f32"});
  expect_error<ValueError>(fwd(x, out, Tensor::zeros({2, 6}, DType::i32), {}), {"'positions'", "[2, 5]"});
  expect_error<TypeError>(fwd(x, out, Tensor::zeros({2, 5}, DType::i64), {}), {"'positions'", "i32"});
  expect_error<ValueError>(fwd(x, out, {}, {0.125, 10000}), {"rotary_fraction", "rotary_dim 3", "even"});
  expect_error<ValueError>(fwd(x, out, {}, {0.3, 10000}), {"rotary_fraction", "even integer"});
  expect_error<ValueError>(fwd(x, out, {}, {1.5, 10000}), {"rotary_fraction", "[0, 1]"});
  expect_error<ValueError>(fwd(x, out, {}, {1.0, -2}), {"base"});
  expect_error<TypeError>(fwd(x, fake_cuda(out), {}, {}), {"'out'", "cuda:0"});
  expect_error<TypeError>(fwd(fake_cuda(x), fake_cuda(out), {}, {}), {"rope_forward", "'x'", "bf16 or f32 on CUDA"});
  Tensor dx = poisoned({2, 5, 3, 24});
  expect_error<ValueError>([&] { mt::rope_backward(x, dx, Tensor::zeros({5}, DType::i32)); },
                           {"rope_backward", "'positions'", "[2, 5]"});
  expect_error<ValueError>([&] { mt::rope_backward(randn({2, 5, 3}), dx); }, {"rope_backward", "'dout'"});
  for (double v : values(out)) ASSERT_TRUE(std::isnan(v));
}
