// Causal attention forward and backward: against a naive loop in fp64, finite
// differences, fp32 against fp64, packed documents against one-by-one runs, and
// the argument checks.
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

struct Config {
  int64_t b, l, hq, hkv, p;
};

std::string str(const Config& c) {
  return mt::detail::cat("b=", c.b, " l=", c.l, " hq=", c.hq, " hkv=", c.hkv, " p=", c.p);
}

// out and lse straight from the definition: per query, a softmax over the keys
// j <= i of the same document (equal seq_idx), in double.
std::pair<Tensor, Tensor> naive_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& seq_idx,
                                          std::optional<double> softmax_scale) {
  const int64_t b = q.size(0), l = q.size(1), hq = q.size(2), p = q.size(3), hkv = k.size(2);
  const double scale = softmax_scale.value_or(1.0 / std::sqrt(double(p)));
  const auto Q = values(q), K = values(k), V = values(v);
  const int32_t* doc = seq_idx.defined() ? seq_idx.data<int32_t>() : nullptr;
  std::vector<double> out(size_t(b * l * hq * p)), lse(size_t(b * hq * l));
  for (int64_t bi = 0; bi < b; ++bi)
    for (int64_t h = 0; h < hq; ++h)
      for (int64_t i = 0; i < l; ++i) {
        const int64_t kvh = h / (hq / hkv);
        std::vector<double> score(size_t(i + 1), -INFINITY);
        double mx = -INFINITY;
        for (int64_t j = 0; j <= i; ++j) {
          if (doc && doc[bi * l + j] != doc[bi * l + i]) continue;
          double dot = 0;
          for (int64_t c = 0; c < p; ++c) dot += Q[((bi * l + i) * hq + h) * p + c] * K[((bi * l + j) * hkv + kvh) * p + c];
          score[j] = scale * dot;
          mx = std::max(mx, score[j]);
        }
        double sum = 0;
        for (int64_t j = 0; j <= i; ++j) sum += std::exp(score[j] - mx);
        lse[(bi * hq + h) * l + i] = mx + std::log(sum);
        for (int64_t c = 0; c < p; ++c) {
          double acc = 0;
          for (int64_t j = 0; j <= i; ++j) acc += std::exp(score[j] - mx) / sum * V[((bi * l + j) * hkv + kvh) * p + c];
          out[((bi * l + i) * hq + h) * p + c] = acc;
        }
      }
  return {from_values(out, q.shape()), from_values(lse, {b, hq, l})};
}

struct Inputs {
  Tensor q, k, v;
};

Inputs random_inputs(const Config& c, DType dt = DType::f64) {
  return {randn({c.b, c.l, c.hq, c.p}, dt), randn({c.b, c.l, c.hkv, c.p}, dt), randn({c.b, c.l, c.hkv, c.p}, dt)};
}

std::pair<Tensor, Tensor> forward(const Inputs& in, const Tensor& seq_idx = Tensor(),
                                  std::optional<double> scale = std::nullopt) {
  const Tensor& q = in.q;
  Tensor out = poisoned(q.shape(), q.dtype()), lse = poisoned({q.size(0), q.size(2), q.size(1)}, q.dtype());
  mt::attention_forward(in.q, in.k, in.v, out, lse, seq_idx, scale);
  return {out, lse};
}

struct Grads {
  Tensor dq, dk, dv;
};

Grads backward(const Tensor& dout, const Inputs& in, const Tensor& seq_idx = Tensor(),
               std::optional<double> scale = std::nullopt) {
  auto [out, lse] = forward(in, seq_idx, scale);
  Grads g{poisoned(in.q.shape(), in.q.dtype()), poisoned(in.k.shape(), in.k.dtype()),
          poisoned(in.v.shape(), in.v.dtype())};
  mt::attention_backward(dout, in.q, in.k, in.v, out, lse, g.dq, g.dk, g.dv, seq_idx, scale);
  return g;
}

// GQA ratios 1, 4 and 8; odd and even head dims; l = 150 spans several query tiles.
const Config kConfigs[] = {{2, 13, 3, 3, 37}, {2, 13, 8, 2, 24}, {2, 13, 8, 1, 40}, {1, 150, 4, 1, 24}};

}  // namespace

TEST(AttentionForward, MatchesNaiveLoop) {
  for (const Config& c : kConfigs)
    for (bool packed : {false, true})
      for (std::optional<double> scale : {std::optional<double>(), std::optional<double>(0.37)}) {
        SCOPED_TRACE(str(c) + (packed ? " packed" : "") + (scale ? " scale 0.37" : ""));
        Inputs in = random_inputs(c);
        Tensor seq = packed ? random_documents(c.b, c.l) : Tensor();
        auto [out, lse] = forward(in, seq, scale);
        auto [ref_out, ref_lse] = naive_attention(in.q, in.k, in.v, seq, scale);
        EXPECT_LE(max_rel_error(out, ref_out), 1e-12);
        EXPECT_LE(max_rel_error(lse, ref_lse), 1e-12);
      }
}

TEST(AttentionForward, Fp32MatchesFp64) {
  for (const Config& c : {Config{2, 150, 8, 2, 40}, Config{2, 13, 8, 1, 37}})
    for (bool packed : {false, true}) {
      SCOPED_TRACE(str(c) + (packed ? " packed" : ""));
      Inputs in32 = random_inputs(c, DType::f32);
      Inputs in64{in32.q.to(DType::f64), in32.k.to(DType::f64), in32.v.to(DType::f64)};
      Tensor seq = packed ? random_documents(c.b, c.l) : Tensor();
      auto [out32, lse32] = forward(in32, seq);
      auto [out64, lse64] = forward(in64, seq);
      EXPECT_EQ(out32.dtype(), DType::f32);
      EXPECT_LE(max_rel_error(out32, out64), 1e-5);
      EXPECT_LE(max_rel_error(lse32, lse64), 1e-5);
    }
}

TEST(AttentionForward, PackedEqualsDocumentsOneByOne) {
  const Config c{2, 90, 8, 2, 24};
  Inputs in = random_inputs(c);
  Tensor seq = random_documents(c.b, c.l);
  auto [out, lse] = forward(in, seq);
  for (int64_t bi = 0; bi < c.b; ++bi)
    for (auto [s, e] : documents_of(seq, bi)) {
      SCOPED_TRACE(mt::detail::cat("row ", bi, " document [", s, ", ", e, ")"));
      Inputs doc{part(in.q, bi, s, e), part(in.k, bi, s, e), part(in.v, bi, s, e)};
      auto [dout, dlse] = forward(doc);
      EXPECT_LE(max_rel_error(part(out, bi, s, e), dout), 1e-13);
      EXPECT_LE(max_rel_error(part(lse, bi, s, e, 2), dlse), 1e-13);
    }
}

TEST(AttentionBackward, FiniteDifferences) {
  for (const Config& c : {Config{2, 13, 3, 3, 37}, Config{2, 13, 8, 2, 24}, Config{1, 11, 8, 1, 5},
                          Config{1, 70, 4, 1, 6}})
    for (bool packed : {false, true}) {
      SCOPED_TRACE(str(c) + (packed ? " packed" : ""));
      Inputs in = random_inputs(c);
      Tensor seq = packed ? random_documents(c.b, c.l) : Tensor();
      const std::optional<double> scale = packed ? std::optional<double>(0.61) : std::nullopt;
      Tensor w = randn(in.q.shape());
      Grads g = backward(w, in, seq, scale);
      auto loss = [&] { return mt::testing::dot(w, forward(in, seq, scale).first); };
      mt::testing::expect_gradient(loss, in.q, g.dq, "dq");
      mt::testing::expect_gradient(loss, in.k, g.dk, "dk");
      mt::testing::expect_gradient(loss, in.v, g.dv, "dv");
    }
}

TEST(AttentionBackward, Fp32MatchesFp64) {
  for (const Config& c : {Config{2, 150, 8, 2, 40}, Config{2, 13, 8, 1, 37}})
    for (bool packed : {false, true}) {
      SCOPED_TRACE(str(c) + (packed ? " packed" : ""));
      Inputs in32 = random_inputs(c, DType::f32);
      Inputs in64{in32.q.to(DType::f64), in32.k.to(DType::f64), in32.v.to(DType::f64)};
      Tensor w32 = randn(in32.q.shape(), DType::f32);
      Tensor seq = packed ? random_documents(c.b, c.l) : Tensor();
      Grads g32 = backward(w32, in32, seq), g64 = backward(w32.to(DType::f64), in64, seq);
      EXPECT_LE(max_rel_error(g32.dq, g64.dq), 1e-5);
      EXPECT_LE(max_rel_error(g32.dk, g64.dk), 1e-5);
      EXPECT_LE(max_rel_error(g32.dv, g64.dv), 1e-5);
    }
}

TEST(AttentionBackward, PackedEqualsDocumentsOneByOne) {
  const Config c{2, 90, 8, 2, 24};
  Inputs in = random_inputs(c);
  Tensor seq = random_documents(c.b, c.l), w = randn(in.q.shape());
  Grads g = backward(w, in, seq);
  for (int64_t bi = 0; bi < c.b; ++bi)
    for (auto [s, e] : documents_of(seq, bi)) {
      SCOPED_TRACE(mt::detail::cat("row ", bi, " document [", s, ", ", e, ")"));
      Inputs doc{part(in.q, bi, s, e), part(in.k, bi, s, e), part(in.v, bi, s, e)};
      Grads gd = backward(part(w, bi, s, e), doc);
      // A one-token document has dq = dk = 0: compare on the scale of the whole gradient.
      EXPECT_LE(max_abs_error(part(g.dq, bi, s, e), gd.dq), 1e-12 * max_abs(g.dq));
      EXPECT_LE(max_abs_error(part(g.dk, bi, s, e), gd.dk), 1e-12 * max_abs(g.dk));
      EXPECT_LE(max_abs_error(part(g.dv, bi, s, e), gd.dv), 1e-12 * max_abs(g.dv));
    }
}

// The GQA sums into dk and dv run in a fixed order: repeated calls agree bit for bit.
TEST(AttentionBackward, Deterministic) {
  const Config c{2, 100, 8, 1, 32};
  Inputs in = random_inputs(c, DType::f32);
  Tensor w = randn(in.q.shape(), DType::f32);
  Grads a = backward(w, in), b = backward(w, in);
  EXPECT_EQ(values(a.dq), values(b.dq));
  EXPECT_EQ(values(a.dk), values(b.dk));
  EXPECT_EQ(values(a.dv), values(b.dv));
}

TEST(AttentionChecks, ForwardRejectsBadArguments) {
  const Config c{2, 5, 4, 2, 6};
  Inputs in = random_inputs(c);
  Tensor out = poisoned(in.q.shape()), lse = poisoned({2, 4, 5});
  auto fwd = [&](const Tensor& q, const Tensor& k, const Tensor& v, Tensor o, Tensor s, const Tensor& seq) {
    return [=]() mutable { mt::attention_forward(q, k, v, o, s, seq); };
  };
  using mt::TypeError;
  using mt::ValueError;
  expect_error<ValueError>(fwd(randn({2, 5, 4}), in.k, in.v, out, lse, {}), {"attention_forward", "'q'", "[b, l, hq, p]"});
  expect_error<TypeError>(fwd(in.q.to(DType::i32), in.k, in.v, out, lse, {}), {"'q'", "f32 or f64"});
  expect_error<ValueError>(fwd(in.q, randn({2, 6, 2, 6}), in.v, out, lse, {}), {"'k'", "[2, 5, 2, 6]"});
  expect_error<ValueError>(fwd(in.q, randn({2, 5, 3, 6}), in.v, out, lse, {}), {"'k'", "divisor", "4 query heads"});
  expect_error<ValueError>(fwd(in.q, in.k, randn({2, 5, 2, 7}), out, lse, {}), {"'v'", "[2, 5, 2, 6]"});
  expect_error<TypeError>(fwd(in.q, in.k.to(DType::f32), in.v, out, lse, {}), {"'k'", "f32", "f64"});
  expect_error<ValueError>(fwd(in.q, in.k, in.v, poisoned({2, 5, 4, 5}), lse, {}), {"'out'", "[2, 5, 4, 6]"});
  expect_error<ValueError>(fwd(in.q, in.k, in.v, out, poisoned({2, 5, 4}), {}), {"'lse'", "[2, 4, 5]"});
  expect_error<TypeError>(fwd(in.q, in.k, in.v, out, lse.to(DType::f32), {}), {"'lse'", "f32"});
  expect_error<TypeError>(fwd(in.q, in.k, in.v, out, lse, Tensor::zeros({2, 5}, DType::i64)), {"'seq_idx'", "i32"});
  expect_error<ValueError>(fwd(in.q, in.k, in.v, out, lse, Tensor::zeros({2, 4}, DType::i32)), {"'seq_idx'", "[2, 5]"});
  Tensor unsorted = Tensor::zeros({2, 5}, DType::i32);
  unsorted.data<int32_t>()[7] = 3;  // row 1: 0 0 3 0 0
  expect_error<ValueError>(fwd(in.q, in.k, in.v, out, lse, unsorted), {"'seq_idx'", "non-decreasing", "row 1"});
  Tensor k_strided = randn({2, 5, 6, 2}).transpose(2, 3);
  expect_error<ValueError>(fwd(in.q, k_strided, in.v, out, lse, {}), {"'k'", "not contiguous"});
  expect_error<ValueError>(fwd(in.q, Tensor(), in.v, out, lse, {}), {"'k'", "undefined"});
  expect_error<TypeError>(fwd(in.q, fake_cuda(in.k), in.v, out, lse, {}), {"'k'", "cuda:0"});
  expect_error<TypeError>(fwd(fake_cuda(in.q), fake_cuda(in.k), fake_cuda(in.v), fake_cuda(out), fake_cuda(lse), {}),
                          {"attention_forward", "'q'", "bf16 or f32 on CUDA"});
  expect_error<ValueError>([&] { mt::attention_forward(in.q, in.k, in.v, out, lse, {}, NAN); }, {"softmax_scale"});
  // Nothing was written by the rejected calls.
  for (double x : values(out)) ASSERT_TRUE(std::isnan(x));
}

TEST(AttentionChecks, BackwardRejectsBadArguments) {
  const Config c{2, 5, 4, 2, 6};
  Inputs in = random_inputs(c);
  Tensor out, lse;
  std::tie(out, lse) = forward(in);
  Tensor dout = randn(in.q.shape());
  auto bwd = [&](const Tensor& d, const Tensor& o, const Tensor& s, Tensor dq, Tensor dk, Tensor dv) {
    return [=]() mutable { mt::attention_backward(d, in.q, in.k, in.v, o, s, dq, dk, dv); };
  };
  Tensor dq = poisoned(in.q.shape()), dk = poisoned(in.k.shape()), dv = poisoned(in.v.shape());
  using mt::TypeError;
  using mt::ValueError;
  expect_error<ValueError>(bwd(randn({2, 5, 4, 7}), out, lse, dq, dk, dv), {"attention_backward", "'dout'", "[2, 5, 4, 6]"});
  expect_error<TypeError>(bwd(dout.to(DType::f32), out, lse, dq, dk, dv), {"'dout'", "f32"});
  expect_error<ValueError>(bwd(dout, randn({2, 5, 2, 6}), lse, dq, dk, dv), {"'out'", "[2, 5, 4, 6]"});
  expect_error<ValueError>(bwd(dout, out, randn({2, 5, 4}), dq, dk, dv), {"'lse'", "[2, 4, 5]"});
  expect_error<ValueError>(bwd(dout, out, lse, poisoned({2, 5, 2, 6}), dk, dv), {"'dq'", "[2, 5, 4, 6]"});
  expect_error<ValueError>(bwd(dout, out, lse, dq, poisoned({2, 5, 4, 6}), dv), {"'dk'", "[2, 5, 2, 6]"});
  expect_error<ValueError>(bwd(dout, out, lse, dq, dk, poisoned({2, 5, 2})), {"'dv'", "[2, 5, 2, 6]"});
  expect_error<TypeError>(bwd(dout, out, lse, dq, dk, fake_cuda(dv)), {"'dv'", "cuda:0"});
  expect_error<ValueError>([&] { mt::attention_backward(dout, in.q, in.k, randn({2, 5, 1, 6}), out, lse, dq, dk, dv); },
                           {"'v'", "[2, 5, 2, 6]"});
}

// The engine setting is process-wide and round-trips; asking for cuDNN where it cannot
// run raises with the reason and leaves the setting as it was.
TEST(AttentionEngine, SettingRoundTripsAndCudnnNeedsTheLibrary) {
  const mt::AttentionEngine before = mt::attention_engine();
  mt::set_attention_engine(mt::AttentionEngine::Builtin);
  EXPECT_EQ(mt::attention_engine(), mt::AttentionEngine::Builtin);
  std::string why;
  const int64_t version = mt::cudnn_version(&why);
  EXPECT_EQ(version == 0, !why.empty()) << why;
  if (version == 0) {
    expect_error<mt::Error>([&] { mt::set_attention_engine(mt::AttentionEngine::Cudnn); },
                            "set_attention_engine: cuDNN is not usable here: ", why);
    EXPECT_EQ(mt::attention_engine(), mt::AttentionEngine::Builtin);
  } else {
    EXPECT_GE(version, 90000);
  }
  mt::set_attention_engine(before);
  EXPECT_EQ(mt::attention_engine(), before);
}
