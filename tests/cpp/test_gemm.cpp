// gemm on the CPU against a naive loop, and its argument checks.
#include "testing.h"

namespace mt = mambatron;
using mt::DType;
using mt::Shape;
using mt::Tensor;

namespace {
// c[b, i, j] = alpha · Σ_k op(a)[b, i, k] · op(b)[b, k, j] + beta · c0, in double.
std::vector<double> naive_gemm(const Tensor& a, const Tensor& b, const Tensor* c0, const mt::GemmOptions& o) {
  auto va = mt::testing::values(a), vb = mt::testing::values(b);
  int64_t m = o.trans_a ? a.size(-1) : a.size(-2), k = o.trans_a ? a.size(-2) : a.size(-1);
  int64_t n = o.trans_b ? b.size(-2) : b.size(-1);
  int64_t batch = std::max(a.dim() == 3 ? a.size(0) : 1, b.dim() == 3 ? b.size(0) : 1);
  std::vector<double> out(batch * m * n), vc;
  if (c0) vc = mt::testing::values(*c0);
  for (int64_t q = 0; q < batch; ++q)
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double s = 0;
        for (int64_t p = 0; p < k; ++p) {
          double x = va[(a.dim() == 3 ? q * m * k : 0) + (o.trans_a ? p * m + i : i * k + p)];
          double y = vb[(b.dim() == 3 ? q * k * n : 0) + (o.trans_b ? j * k + p : p * n + j)];
          s += x * y;
        }
        int64_t idx = (q * m + i) * n + j;
        out[idx] = o.alpha * s + (c0 ? o.beta * vc[idx] : 0.0);
      }
  return out;
}
}  // namespace

TEST(Gemm, MatchesNaiveLoopAllTransposesBatchedF64) {
  for (bool ta : {false, true})
    for (bool tb : {false, true})
      for (int batch : {0, 3}) {
        int64_t m = 7, k = 13, n = 5;
        Shape sa = ta ? Shape{k, m} : Shape{m, k}, sb = tb ? Shape{n, k} : Shape{k, n};
        if (batch) { sa.insert(sa.begin(), batch); sb.insert(sb.begin(), batch); }
        Tensor a = mt::testing::randn(sa), b = mt::testing::randn(sb);
        mt::GemmOptions o{ta, tb, 0.75f, 0.0f};
        Shape sc = batch ? Shape{batch, m, n} : Shape{m, n};
        Tensor c = mt::testing::poisoned(sc);
        mt::gemm(a, b, c, o);
        auto ref = naive_gemm(a, b, nullptr, o);
        auto got = mt::testing::values(c);
        for (size_t i = 0; i < ref.size(); ++i) ASSERT_NEAR(got[i], ref[i], 1e-12 * 10) << ta << tb << batch;
      }
}

TEST(Gemm, BetaAccumulatesAndBroadcastsA2D) {
  Tensor a = mt::testing::randn({6, 9}), b = mt::testing::randn({4, 9, 11});
  Tensor c0 = mt::testing::randn({4, 6, 11});
  Tensor c = c0.clone();
  mt::GemmOptions o{false, false, 1.5f, -0.5f};
  mt::gemm(a, b, c, o);
  auto ref = naive_gemm(a, b, &c0, o);
  auto got = mt::testing::values(c);
  for (size_t i = 0; i < ref.size(); ++i) ASSERT_NEAR(got[i], ref[i], 1e-11);
}

TEST(Gemm, AddendReplacesTheBetaTermAndMayBeC) {
  Tensor a = mt::testing::randn({2, 7, 9}), b = mt::testing::randn({5, 9});  // b used transposed
  Tensor r = mt::testing::randn({2, 7, 5});
  mt::GemmOptions o{false, true, 0.5f, 1.0f};
  o.addend = r;
  Tensor c = mt::testing::poisoned({2, 7, 5});  // not read
  mt::gemm(a, b, c, o);
  auto ref = naive_gemm(a, b, &r, o);
  auto got = mt::testing::values(c);
  for (size_t i = 0; i < ref.size(); ++i) ASSERT_NEAR(got[i], ref[i], 1e-12) << i;
  // In place (the residual stream updated by its projection), and bf16 rounded once.
  Tensor inplace = r.clone();
  o.addend = inplace;
  mt::gemm(a, b, inplace, o);
  EXPECT_TRUE(mt::testing::same_bits(inplace, c));
  Tensor a16 = a.to(DType::bf16), b16 = b.to(DType::bf16), r16 = r.to(DType::bf16);
  o.addend = r16;
  Tensor c16 = Tensor::empty({2, 7, 5}, DType::bf16);
  mt::gemm(a16, b16, c16, o);
  o.addend = r16.to(DType::f32);  // 16-bit: computed in f32, rounded once
  Tensor ref16 = Tensor::empty({2, 7, 5}, DType::f32);
  mt::gemm(a16.to(DType::f32), b16.to(DType::f32), ref16, o);
  EXPECT_TRUE(mt::testing::same_bits(c16, ref16.to(DType::bf16)));
}

TEST(Gemm, F32AndBf16AgainstF64) {
  Tensor a = mt::testing::randn({33, 65}), b = mt::testing::randn({65, 17});
  Tensor ref = mt::gemm(a, b);
  Tensor c32 = mt::gemm(a.to(DType::f32), b.to(DType::f32));
  EXPECT_LT(mt::testing::max_rel_error(c32, ref), 1e-5);
  // bf16 inputs are rounded, so compare with the f64 product of the rounded inputs.
  Tensor a16 = a.to(DType::bf16), b16 = b.to(DType::bf16);
  Tensor ref16 = mt::gemm(a16.to(DType::f64), b16.to(DType::f64));
  Tensor c16 = mt::gemm(a16, b16, {}, DType::f32);
  EXPECT_EQ(c16.dtype(), DType::f32);
  EXPECT_LT(mt::testing::max_rel_error(c16, ref16), 1e-5);
  Tensor c16b = mt::gemm(a16, b16);
  EXPECT_EQ(c16b.dtype(), DType::bf16);
  EXPECT_LT(mt::testing::max_rel_error(c16b, ref16), 1e-2);
}

TEST(Gemm, RejectsBadArguments) {
  Tensor a = mt::testing::randn({4, 5}), b = mt::testing::randn({5, 3});
  auto throws_with = [](auto fn, const char* needle) {
    try {
      fn();
      ADD_FAILURE() << "no exception, expected one mentioning " << needle;
    } catch (const mt::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  throws_with([&] { mt::gemm(a, a); }, "inner dimensions differ");
  throws_with([&] { Tensor c = Tensor::empty({4, 4}, DType::f64); mt::gemm(a, b, c); }, "argument 'c' has shape [4, 4], expected [4, 3]");
  throws_with([&] { mt::gemm(a.to(DType::f32), b); }, "argument 'b' has dtype f64, expected f32");
  throws_with([&] { mt::gemm(a.to(DType::i32), b.to(DType::i32)); }, "argument 'a' has dtype i32");
  throws_with([&] { mt::gemm(b.transpose(0, 1), b); }, "argument 'a' (shape [3, 5], strides [1, 3]) is not contiguous");
  throws_with([&] { mt::gemm(Tensor::empty({2, 3, 4, 5}), b); }, "expected 2 dims [m, k] or 3 dims");
  throws_with([&] { mt::gemm(mt::testing::randn({2, 4, 5}), mt::testing::randn({3, 5, 3})); }, "batch sizes differ");
  throws_with([&] { Tensor c = Tensor::empty({4, 3}, DType::bf16); mt::gemm(a, b, c); }, "argument 'c' has dtype bf16, expected f64");
  throws_with([&] {
    mt::GemmOptions o;
    o.addend = Tensor::empty({4, 3}, DType::f32);
    Tensor c = Tensor::empty({4, 3}, DType::f64);
    mt::gemm(a, b, c, o);
  }, "argument 'addend' has dtype f32, expected c's dtype f64");
  throws_with([&] {
    mt::GemmOptions o;
    o.addend = Tensor::empty({3, 4}, DType::f64);
    Tensor c = Tensor::empty({4, 3}, DType::f64);
    mt::gemm(a, b, c, o);
  }, "argument 'addend' has shape [3, 4], expected [4, 3]");
  EXPECT_THROW(mt::gemm(a, a), mt::ValueError);
  EXPECT_THROW(mt::gemm(a.to(DType::f32), b), mt::TypeError);
}
