// Decoding with a KV cache: kv_cache_append and attention_decode against a naive
// loop, token-by-token decoding (with RoPE) against the full forward, batched
// prompts of different lengths in one cache, and the argument checks.
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

// Softmax over the first lens[bi] cache entries, straight from the definition.
Tensor naive_decode(const Tensor& q, const Tensor& kc, const Tensor& vc, const Tensor& lens, double scale) {
  const int64_t b = q.size(0), hq = q.size(1), p = q.size(2), max_len = kc.size(1), hkv = kc.size(2);
  const auto Q = values(q), K = values(kc), V = values(vc);
  const int32_t* n = lens.data<int32_t>();
  std::vector<double> out(size_t(b * hq * p));
  for (int64_t bi = 0; bi < b; ++bi)
    for (int64_t h = 0; h < hq; ++h) {
      const int64_t kvh = h / (hq / hkv);
      auto at = [&](int64_t j, int64_t c) { return ((bi * max_len + j) * hkv + kvh) * p + c; };
      std::vector<double> w(size_t(n[bi]));
      double mx = -INFINITY, sum = 0;
      for (int64_t j = 0; j < n[bi]; ++j) {
        double dot = 0;
        for (int64_t c = 0; c < p; ++c) dot += Q[(bi * hq + h) * p + c] * K[at(j, c)];
        mx = std::max(mx, w[j] = scale * dot);
      }
      for (auto& x : w) sum += (x = std::exp(x - mx));
      for (int64_t c = 0; c < p; ++c) {
        double acc = 0;
        for (int64_t j = 0; j < n[bi]; ++j) acc += w[j] / sum * V[at(j, c)];
        out[(bi * hq + h) * p + c] = acc;
      }
    }
  return from_values(out, q.shape());
}

// Random caches whose entries past each sequence's length are NaN, so reading them fails.
struct Cache {
  Tensor k, v, lens;
};

Cache random_cache(int64_t b, int64_t max_len, int64_t hkv, int64_t p, DType dt = DType::f64) {
  Cache c{randn({b, max_len, hkv, p}), randn({b, max_len, hkv, p}), Tensor::empty({b}, DType::i32)};
  std::mt19937_64 rng(mt::testing::fresh_seed());
  for (int64_t bi = 0; bi < b; ++bi) {
    const int32_t n = bi == 0 ? int32_t(max_len) : 1 + int32_t(rng() % max_len);  // one full, the rest random
    c.lens.data<int32_t>()[bi] = n;
    for (Tensor* t : {&c.k, &c.v}) t->narrow(0, bi, 1).narrow(1, n, max_len - n).fill_(NAN);
  }
  c.k = c.k.to(dt);
  c.v = c.v.to(dt);
  return c;
}

Tensor decode(const Tensor& q, const Cache& c, std::optional<double> scale = std::nullopt) {
  Tensor out = poisoned(q.shape(), q.dtype());
  mt::attention_decode(q, c.k, c.v, c.lens, out, scale);
  return out;
}

// Token i of a [b, l, h, p] tensor as a contiguous [b, h, p].
Tensor token(const Tensor& t, int64_t i) { return t.select(1, i).clone(); }

// RoPE of whole sequences at the default positions 0..l-1.
Tensor rope(const Tensor& x, double fraction) {
  Tensor out = poisoned(x.shape(), x.dtype());
  mt::rope_forward(x, out, Tensor(), {fraction, 10000.0});
  return out;
}

// RoPE of one token per sequence [b, h, p] at positions pos[b].
Tensor rope_token(const Tensor& x, const std::vector<int32_t>& pos, double fraction) {
  const int64_t b = x.size(0), h = x.size(1), p = x.size(2);
  Tensor positions = Tensor::empty({b, 1}, DType::i32);
  std::copy(pos.begin(), pos.end(), positions.data<int32_t>());
  Tensor out = poisoned({b, 1, h, p}, x.dtype());
  mt::rope_forward(x.view({b, 1, h, p}), out, positions, {fraction, 10000.0});
  return out.view({b, h, p});
}

Tensor forward_out(const Tensor& q, const Tensor& k, const Tensor& v) {
  Tensor out = poisoned(q.shape(), q.dtype()), lse = poisoned({q.size(0), q.size(2), q.size(1)}, q.dtype());
  mt::attention_forward(q, k, v, out, lse);
  return out;
}

}  // namespace

TEST(AttentionDecode, MatchesNaiveLoop) {
  struct Case {
    int64_t hq, hkv, p;
  };
  for (Case c : {Case{3, 3, 37}, Case{8, 2, 24}, Case{8, 1, 40}})
    for (std::optional<double> scale : {std::optional<double>(), std::optional<double>(0.29)}) {
      SCOPED_TRACE(mt::detail::cat("hq=", c.hq, " hkv=", c.hkv, " p=", c.p, scale ? " scale 0.29" : ""));
      Cache cache = random_cache(3, 17, c.hkv, c.p);
      Tensor q = randn({3, c.hq, c.p});
      Tensor ref = naive_decode(q, cache.k, cache.v, cache.lens, scale.value_or(1 / std::sqrt(double(c.p))));
      EXPECT_LE(max_rel_error(decode(q, cache, scale), ref), 1e-12);
    }
}

TEST(AttentionDecode, Fp32MatchesFp64) {
  Cache c64 = random_cache(4, 300, 2, 40);
  Tensor q32 = randn({4, 8, 40}, DType::f32);
  Cache c32{c64.k.to(DType::f32), c64.v.to(DType::f32), c64.lens};
  Cache c64r{c32.k.to(DType::f64), c32.v.to(DType::f64), c64.lens};  // the same f32-rounded inputs
  Tensor out32 = decode(q32, c32);
  EXPECT_EQ(out32.dtype(), DType::f32);
  EXPECT_LE(max_rel_error(out32, decode(q32.to(DType::f64), c64r)), 1e-5);
}

// Append + decode one token at a time, RoPE at each token's position, equals the
// full-sequence forward at every position.
TEST(AttentionDecode, TokenByTokenEqualsForward) {
  struct Case {
    int64_t b, l, hq, hkv, p;
    double fraction;
  };
  for (Case c : {Case{2, 19, 8, 2, 24, 0.5}, Case{2, 19, 3, 3, 37, 0.0}, Case{1, 70, 8, 1, 40, 1.0}}) {
    SCOPED_TRACE(mt::detail::cat("hq=", c.hq, " hkv=", c.hkv, " p=", c.p, " rotary ", c.fraction));
    Tensor q = randn({c.b, c.l, c.hq, c.p}), k = randn({c.b, c.l, c.hkv, c.p}), v = randn({c.b, c.l, c.hkv, c.p});
    Tensor full = forward_out(rope(q, c.fraction), rope(k, c.fraction), v);
    const int64_t max_len = c.l + 4;
    Cache cache{poisoned({c.b, max_len, c.hkv, c.p}), poisoned({c.b, max_len, c.hkv, c.p}),
                Tensor::zeros({c.b}, DType::i32)};
    for (int64_t t = 0; t < c.l; ++t) {
      const std::vector<int32_t> pos(size_t(c.b), int32_t(t));
      mt::kv_cache_append(rope_token(token(k, t), pos, c.fraction), token(v, t), cache.k, cache.v, cache.lens);
      for (double n : values(cache.lens)) ASSERT_EQ(n, double(t + 1));
      Tensor out = decode(rope_token(token(q, t), pos, c.fraction), cache);
      ASSERT_LE(max_rel_error(out, token(full, t)), 1e-12) << "token " << t;
    }
  }
}

// Prompts of lengths 5, 11 and 1 prefilled into one cache, then decoded together:
// each sequence's new token sits at its own position and sees only its own entries.
TEST(AttentionDecode, BatchedPromptsOfDifferentLengths) {
  const std::vector<int64_t> prompt = {5, 11, 1};
  const int64_t b = 3, steps = 4, hq = 4, hkv = 2, p = 40, max_len = 16;
  const double fraction = 1.0;
  Cache cache{poisoned({b, max_len, hkv, p}), poisoned({b, max_len, hkv, p}), Tensor::empty({b}, DType::i32)};
  std::vector<Tensor> q(b), k(b), v(b), full(b);
  for (int64_t i = 0; i < b; ++i) {
    const int64_t total = prompt[i] + steps;
    q[i] = randn({1, total, hq, p});
    k[i] = randn({1, total, hkv, p});
    v[i] = randn({1, total, hkv, p});
    full[i] = forward_out(rope(q[i], fraction), rope(k[i], fraction), v[i]);
    // Prefill: the prompt's rotated keys and its values go straight into the cache.
    Tensor kr = rope(k[i].narrow(1, 0, prompt[i]).clone(), fraction);
    cache.k.narrow(0, i, 1).narrow(1, 0, prompt[i]).copy_(kr);
    cache.v.narrow(0, i, 1).narrow(1, 0, prompt[i]).copy_(v[i].narrow(1, 0, prompt[i]));
    cache.lens.data<int32_t>()[i] = int32_t(prompt[i]);
  }
  for (int64_t s = 0; s < steps; ++s) {
    Tensor qt = Tensor::empty({b, hq, p}, DType::f64), kt = Tensor::empty({b, hkv, p}, DType::f64);
    Tensor vt = Tensor::empty({b, hkv, p}, DType::f64);
    std::vector<int32_t> pos(b);
    for (int64_t i = 0; i < b; ++i) {
      pos[i] = int32_t(prompt[i] + s);
      qt.select(0, i).copy_(q[i].select(1, pos[i]).select(0, 0));
      kt.select(0, i).copy_(k[i].select(1, pos[i]).select(0, 0));
      vt.select(0, i).copy_(v[i].select(1, pos[i]).select(0, 0));
    }
    mt::kv_cache_append(rope_token(kt, pos, fraction), vt, cache.k, cache.v, cache.lens);
    Tensor out = decode(rope_token(qt, pos, fraction), cache);
    for (int64_t i = 0; i < b; ++i)
      EXPECT_LE(max_rel_error(out.select(0, i), full[i].select(0, 0).select(0, pos[i])), 1e-12)
          << "sequence " << i << " step " << s;
  }
}

TEST(AttentionDecode, AppendWritesAtEachLength) {
  const int64_t b = 3, max_len = 7, hkv = 2, p = 5;
  Tensor kc = randn({b, max_len, hkv, p}), vc = randn({b, max_len, hkv, p});
  Tensor k = randn({b, hkv, p}), v = randn({b, hkv, p});
  Tensor lens = Tensor::empty({b}, DType::i32);
  const int32_t before[] = {0, 3, 6};
  std::copy(before, before + b, lens.data<int32_t>());
  Tensor kc0 = kc.clone(), vc0 = vc.clone();
  mt::kv_cache_append(k, v, kc, vc, lens);
  for (int64_t i = 0; i < b; ++i) {
    EXPECT_EQ(lens.data<int32_t>()[i], before[i] + 1);
    for (int64_t j = 0; j < max_len; ++j) {
      const bool written = j == before[i];
      EXPECT_EQ(values(kc.select(0, i).select(0, j)), values(written ? k.select(0, i) : kc0.select(0, i).select(0, j)));
      EXPECT_EQ(values(vc.select(0, i).select(0, j)), values(written ? v.select(0, i) : vc0.select(0, i).select(0, j)));
    }
  }
  // Sequence 2 is now full: the next append is refused and changes nothing.
  Tensor kc1 = kc.clone();
  expect_error<mt::ValueError>([&] { mt::kv_cache_append(k, v, kc, vc, lens); },
                               {"kv_cache_append", "'cache_lens'", "sequence 2", "full"});
  EXPECT_EQ(values(kc), values(kc1));
  EXPECT_EQ(values(lens), (std::vector<double>{1, 4, 7}));
}

TEST(AttentionChecks, AppendRejectsBadArguments) {
  const int64_t b = 2, max_len = 6, hkv = 2, p = 4;
  Tensor kc = randn({b, max_len, hkv, p}), vc = randn({b, max_len, hkv, p});
  Tensor k = randn({b, hkv, p}), v = randn({b, hkv, p}), lens = Tensor::zeros({b}, DType::i32);
  auto app = [&](const Tensor& k_, const Tensor& v_, Tensor kc_, Tensor vc_, Tensor l_) {
    return [=]() mutable { mt::kv_cache_append(k_, v_, kc_, vc_, l_); };
  };
  using mt::TypeError;
  using mt::ValueError;
  expect_error<ValueError>(app(randn({b, 1, hkv, p}), v, kc, vc, lens), {"kv_cache_append", "'k'", "[b, hkv, p]"});
  expect_error<ValueError>(app(k, randn({b, hkv, 5}), kc, vc, lens), {"'v'", "[2, 2, 4]"});
  expect_error<ValueError>(app(k, v, randn({b, max_len, 1, p}), vc, lens), {"'k_cache'", "[2, 6, 2, 4]"});
  expect_error<ValueError>(app(k, v, randn({b, max_len, hkv * p}), vc, lens), {"'k_cache'", "[b, max_len, hkv, p]"});
  expect_error<ValueError>(app(k, v, kc, randn({b, 5, hkv, p}), lens), {"'v_cache'", "[2, 6, 2, 4]"});
  expect_error<TypeError>(app(k, v, kc, vc.to(DType::f32), lens), {"'v_cache'", "f32"});
  expect_error<TypeError>(app(k, v, kc, vc, Tensor::zeros({b}, DType::i64)), {"'cache_lens'", "i32"});
  expect_error<ValueError>(app(k, v, kc, vc, Tensor::zeros({b + 1}, DType::i32)), {"'cache_lens'", "[2]"});
  expect_error<ValueError>(app(k, v, kc, vc, Tensor::full({b}, -1, DType::i32)), {"'cache_lens'", "-1"});
  expect_error<TypeError>(app(k, v, fake_cuda(kc), vc, lens), {"'k_cache'", "cuda:0"});
  expect_error<TypeError>(app(fake_cuda(k), fake_cuda(v), fake_cuda(kc), fake_cuda(vc), fake_cuda(lens)),
                          {"kv_cache_append", "'k'", "bf16 or f32 on CUDA"});
}

TEST(AttentionChecks, DecodeRejectsBadArguments) {
  const int64_t b = 2, max_len = 6, hq = 4, hkv = 2, p = 4;
  Tensor kc = randn({b, max_len, hkv, p}), vc = randn({b, max_len, hkv, p}), q = randn({b, hq, p});
  Tensor lens = Tensor::full({b}, 3, DType::i32), out = poisoned({b, hq, p});
  auto dec = [&](const Tensor& q_, const Tensor& kc_, const Tensor& vc_, const Tensor& l_, Tensor o_) {
    return [=]() mutable { mt::attention_decode(q_, kc_, vc_, l_, o_); };
  };
  using mt::TypeError;
  using mt::ValueError;
  expect_error<ValueError>(dec(randn({b, 1, hq, p}), kc, vc, lens, out), {"attention_decode", "'q'", "[b, hq, p]"});
  expect_error<TypeError>(dec(q.to(DType::i64), kc, vc, lens, out), {"'q'", "f32 or f64"});
  expect_error<ValueError>(dec(q, randn({b, max_len, 3, p}), vc, lens, out), {"'k_cache'", "divisor", "4 query heads"});
  expect_error<ValueError>(dec(q, randn({b, max_len, hkv, 5}), vc, lens, out), {"'k_cache'", "[2, 6, 2, 4]"});
  expect_error<ValueError>(dec(q, kc, randn({b, max_len + 1, hkv, p}), lens, out), {"'v_cache'", "[2, 6, 2, 4]"});
  expect_error<TypeError>(dec(q, kc.to(DType::f32), vc, lens, out), {"'k_cache'", "f32"});
  expect_error<ValueError>(dec(q, kc, vc, Tensor::full({b, 1}, 3, DType::i32), out), {"'cache_lens'", "[2]"});
  expect_error<ValueError>(dec(q, kc, vc, Tensor::zeros({b}, DType::i32), out), {"'cache_lens'", "0 at sequence 0"});
  expect_error<ValueError>(dec(q, kc, vc, Tensor::full({b}, 7, DType::i32), out), {"'cache_lens'", "max_len = 6"});
  expect_error<ValueError>(dec(q, kc, vc, lens, poisoned({b, hq, p + 1})), {"'out'", "[2, 4, 4]"});
  expect_error<TypeError>(dec(q, kc, vc, fake_cuda(lens), out), {"'cache_lens'", "cuda:0"});
  for (double x : values(out)) ASSERT_TRUE(std::isnan(x));
}
