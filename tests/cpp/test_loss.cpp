// Linear + cross-entropy: against a full-logits loop in f64, finite differences, chunk-size
// independence, mask and ignore_index, f32 against f64, and argument errors.
#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "testing.h"

namespace mt = mambatron;
using mt::testing::expect_error;
using mt::DType;
using mt::LinearCrossEntropyOptions;
using mt::Shape;
using mt::Tensor;
using mt::testing::max_rel_error;
using mt::testing::poisoned;
using mt::testing::randn;
using mt::testing::values;

namespace {

// Random ids in [0, V) as i32 or i64.
Tensor random_targets(int64_t n, int64_t V, DType dt = DType::i64) {
  std::mt19937_64 rng(mt::testing::fresh_seed());
  Tensor t = Tensor::empty({n}, DType::i64);
  for (int64_t i = 0; i < n; ++i) t.data<int64_t>()[i] = int64_t(rng() % uint64_t(V));
  return t.to(dt);
}

// A u8 mask with roughly a quarter of the positions 0 (at least one 0 and one 1 when n >= 2).
Tensor random_mask(int64_t n) {
  std::mt19937_64 rng(mt::testing::fresh_seed());
  Tensor m = Tensor::empty({n}, DType::u8);
  for (int64_t i = 0; i < n; ++i) m.data<uint8_t>()[i] = (rng() % 4) != 0;
  if (n >= 2) m.data<uint8_t>()[0] = 0, m.data<uint8_t>()[1] = 1;
  return m;
}

void set_target(Tensor& t, int64_t i, int64_t v) {
  if (t.dtype() == DType::i32) t.data<int32_t>()[i] = int32_t(v);
  else t.data<int64_t>()[i] = v;
}

// The loss written out over the full [n, V] logits, in f64, with its gradients.
struct Reference {
  double loss = 0;
  std::vector<double> losses, dh, dw;
};

Reference naive(const Tensor& h, const Tensor& w, const Tensor& targets, const Tensor& mask, int64_t ignore_index,
                double grad_scale = 1.0) {
  const int64_t n = h.size(0), d = h.size(1), V = w.size(0);
  auto H = values(h), W = values(w), tg = values(targets);
  std::vector<double> m(n, 1.0);
  if (mask.defined()) m = values(mask);
  Reference r;
  r.losses.assign(n, 0.0);
  r.dh.assign(n * d, 0.0);
  r.dw.assign(V * d, 0.0);
  double total = 0, weighted = 0;
  std::vector<std::vector<double>> probs(n);
  for (int64_t i = 0; i < n; ++i) {
    if (int64_t(tg[i]) == ignore_index || m[i] == 0) continue;
    std::vector<double> z(V);
    double mx = -INFINITY;
    for (int64_t v = 0; v < V; ++v) {
      z[v] = 0;
      for (int64_t k = 0; k < d; ++k) z[v] += H[i * d + k] * W[v * d + k];
      mx = std::max(mx, z[v]);
    }
    double s = 0;
    for (int64_t v = 0; v < V; ++v) s += std::exp(z[v] - mx);
    double lse = mx + std::log(s);
    r.losses[i] = lse - z[int64_t(tg[i])];
    total += m[i];
    weighted += m[i] * r.losses[i];
    probs[i].resize(V);
    for (int64_t v = 0; v < V; ++v) probs[i][v] = std::exp(z[v] - lse);
  }
  r.loss = total > 0 ? weighted / total : 0.0;
  for (int64_t i = 0; i < n; ++i) {
    if (probs[i].empty()) continue;
    for (int64_t v = 0; v < V; ++v) {
      double g = grad_scale * m[i] / total * (probs[i][v] - (v == int64_t(tg[i]) ? 1.0 : 0.0));
      for (int64_t k = 0; k < d; ++k) {
        r.dh[i * d + k] += g * W[v * d + k];
        r.dw[v * d + k] += g * H[i * d + k];
      }
    }
  }
  return r;
}

double rel(const std::vector<double>& a, const std::vector<double>& b) {
  EXPECT_EQ(a.size(), b.size());
  double err = 0, scale = 1e-30;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) return INFINITY;
    err = std::max(err, std::fabs(a[i] - b[i]));
    scale = std::max(scale, std::fabs(b[i]));
  }
  return err / scale;
}

struct Result {
  double loss;
  Tensor losses, dh, dw;
};

// Runs backward (and forward, checking that both give the same loss and per-token losses).
Result run(const Tensor& h, const Tensor& w, const Tensor& targets, const Tensor& mask,
           const LinearCrossEntropyOptions& opt) {
  DType dt = h.dtype();
  Result r{0, poisoned({h.size(0)}, dt), poisoned(h.shape(), dt), poisoned(w.shape(), dt)};
  r.loss = mt::linear_cross_entropy_backward(h, w, targets, mask, r.dh, r.dw, opt, &r.losses);
  Tensor fwd_losses = poisoned({h.size(0)}, dt);
  double fwd = mt::linear_cross_entropy_forward(h, w, targets, mask, opt, &fwd_losses);
  EXPECT_EQ(fwd, r.loss);
  EXPECT_EQ(max_rel_error(fwd_losses, r.losses), 0.0);
  return r;
}

void expect_matches(const Result& got, const Reference& ref, double tol) {
  EXPECT_NEAR(got.loss, ref.loss, tol * std::max(1.0, std::fabs(ref.loss)));
  EXPECT_LE(rel(values(got.losses), ref.losses), tol);
  EXPECT_LE(rel(values(got.dh), ref.dh), tol);
  EXPECT_LE(rel(values(got.dw), ref.dw), tol);
}

// The same memory labelled as a CUDA tensor: never read, it reaches only the device checks.
Tensor on_cuda(const Tensor& t) {
  return Tensor::from_blob(t.data_ptr(), t.shape(), t.strides(), t.dtype(), mt::Device::cuda(0), t.storage());
}

}  // namespace

TEST(LossLinearCrossEntropy, MatchesNaiveLoopWithMaskAndIgnoreIndex) {
  const int64_t n = 37, d = 13, V = 53;
  for (DType tdt : {DType::i64, DType::i32}) {
    Tensor h = randn({n, d}), w = randn({V, d}, DType::f64, 0.5);
    Tensor targets = random_targets(n, V, tdt), mask = random_mask(n);
    set_target(targets, 2, -100);
    set_target(targets, 5, -100);
    Reference ref = naive(h, w, targets, mask, -100);
    for (auto [chunk, vchunk] : {std::pair<int64_t, int64_t>{4096, 32768}, {7, 11}, {5, 0}, {1, 1}}) {
      LinearCrossEntropyOptions opt;
      opt.chunk_size = chunk;
      opt.vocab_chunk_size = vchunk;
      SCOPED_TRACE("chunk " + std::to_string(chunk) + ", vocab chunk " + std::to_string(vchunk));
      expect_matches(run(h, w, targets, mask, opt), ref, 1e-12);
    }
  }
}

TEST(LossLinearCrossEntropy, FloatMaskIsAWeight) {
  const int64_t n = 29, d = 9, V = 31;
  Tensor h = randn({n, d}), w = randn({V, d});
  Tensor targets = random_targets(n, V, DType::i32);
  Tensor mask = mt::testing::uniform({n}, 0.0, 2.0);
  mask.data<double>()[3] = 0.0;
  for (DType mdt : {DType::f64, DType::f32}) {
    Tensor m = mask.to(mdt);
    Reference ref = naive(h, w, targets, m, -100, 0.75);
    LinearCrossEntropyOptions opt;
    opt.chunk_size = 6;
    opt.vocab_chunk_size = 8;
    opt.grad_scale = 0.75;
    Result got = run(h, w, targets, m, opt);
    expect_matches(got, ref, 1e-12);
    EXPECT_EQ(values(got.losses)[3], 0.0);
  }
}

TEST(LossLinearCrossEntropy, GradientsMatchFiniteDifferences) {
  const int64_t n = 11, d = 7, V = 19;
  Tensor h = randn({n, d}), w = randn({V, d});
  Tensor targets = random_targets(n, V), mask = random_mask(n);
  set_target(targets, 4, -100);
  LinearCrossEntropyOptions opt;
  opt.chunk_size = 3;
  opt.vocab_chunk_size = 5;
  opt.grad_scale = 1.7;
  Tensor dh = poisoned(h.shape()), dw = poisoned(w.shape());
  mt::linear_cross_entropy_backward(h, w, targets, mask, dh, dw, opt);
  auto loss = [&] { return opt.grad_scale * mt::linear_cross_entropy_forward(h, w, targets, mask, opt); };
  mt::testing::expect_gradient(loss, h, dh, "dh", 1e-6, 77);
  mt::testing::expect_gradient(loss, w, dw, "dw", 1e-6, 133);
  // Without a mask and with one vocabulary chunk (the path that reuses the exponentials).
  opt.vocab_chunk_size = 0;
  mt::linear_cross_entropy_backward(h, w, targets, Tensor(), dh, dw, opt);
  auto loss2 = [&] { return opt.grad_scale * mt::linear_cross_entropy_forward(h, w, targets, Tensor(), opt); };
  mt::testing::expect_gradient(loss2, h, dh, "dh (no mask)", 1e-6, 77);
  mt::testing::expect_gradient(loss2, w, dw, "dw (no mask)", 1e-6, 133);
}

TEST(LossLinearCrossEntropy, IndependentOfChunkSizes) {
  const int64_t n = 23, d = 10, V = 41;
  Tensor h = randn({n, d}), w = randn({V, d});
  Tensor targets = random_targets(n, V), mask = random_mask(n);
  set_target(targets, 7, -100);
  LinearCrossEntropyOptions base;
  base.vocab_chunk_size = 0;
  Result ref = run(h, w, targets, mask, base);
  for (int64_t chunk : {int64_t(1), int64_t(7), n, n + 9}) {
    for (int64_t vchunk : {int64_t(0), int64_t(1), int64_t(7), V, V + 3}) {
      LinearCrossEntropyOptions opt;
      opt.chunk_size = chunk;
      opt.vocab_chunk_size = vchunk;
      SCOPED_TRACE("chunk " + std::to_string(chunk) + ", vocab chunk " + std::to_string(vchunk));
      Result got = run(h, w, targets, mask, opt);
      EXPECT_NEAR(got.loss, ref.loss, 1e-13 * std::fabs(ref.loss));
      EXPECT_LE(max_rel_error(got.losses, ref.losses), 1e-13);
      EXPECT_LE(max_rel_error(got.dh, ref.dh), 1e-13);
      EXPECT_LE(max_rel_error(got.dw, ref.dw), 1e-13);
    }
  }
}

TEST(LossLinearCrossEntropy, Fp32MatchesFp64) {
  const int64_t n = 61, d = 48, V = 301;
  Tensor h32 = randn({n, d}, DType::f32), w32 = randn({V, d}, DType::f32, 0.3);
  Tensor h64 = h32.to(DType::f64), w64 = w32.to(DType::f64);
  Tensor targets = random_targets(n, V), mask = random_mask(n);
  for (int64_t vchunk : {int64_t(0), int64_t(64)}) {
    LinearCrossEntropyOptions opt;
    opt.chunk_size = 16;
    opt.vocab_chunk_size = vchunk;
    Result a = run(h32, w32, targets, mask, opt), b = run(h64, w64, targets, mask, opt);
    EXPECT_NEAR(a.loss, b.loss, 1e-5 * std::fabs(b.loss));
    EXPECT_LE(max_rel_error(a.losses, b.losses), 1e-5);
    EXPECT_LE(max_rel_error(a.dh, b.dh), 1e-5);
    EXPECT_LE(max_rel_error(a.dw, b.dw), 1e-5);
  }
}

// Excluded positions contribute nothing: changing their h leaves the loss and the other
// gradients as they were, and the loss equals the op on the included rows alone.
TEST(LossLinearCrossEntropy, MaskAndIgnoreIndexRespected) {
  const int64_t n = 19, d = 6, V = 17, ignore = 3;  // a valid id used as ignore_index
  Tensor h = randn({n, d}), w = randn({V, d});
  Tensor targets = random_targets(n, V), mask = random_mask(n);
  set_target(targets, 1, ignore);  // mask 1 there: excluded by ignore_index only
  LinearCrossEntropyOptions opt;
  opt.ignore_index = ignore;
  opt.chunk_size = 4;
  Result a = run(h, w, targets, mask, opt);
  auto tg = values(targets);
  auto mk = values(mask);
  std::vector<int64_t> kept;
  for (int64_t i = 0; i < n; ++i)
    if (int64_t(tg[i]) != ignore && mk[i] != 0) kept.push_back(i);
  ASSERT_GE(kept.size(), 2u);
  ASSERT_LT(kept.size(), size_t(n) - 1);

  Tensor h2 = h.clone();
  for (int64_t i = 0; i < n; ++i)
    if (std::find(kept.begin(), kept.end(), i) == kept.end())
      for (int64_t k = 0; k < d; ++k) h2.data<double>()[i * d + k] = 100.0 + k;
  Result b = run(h2, w, targets, mask, opt);
  EXPECT_EQ(a.loss, b.loss);
  EXPECT_EQ(max_rel_error(b.dw, a.dw), 0.0);
  auto dh = values(a.dh), losses = values(a.losses);
  for (int64_t i = 0; i < n; ++i) {
    if (std::find(kept.begin(), kept.end(), i) != kept.end()) continue;
    EXPECT_EQ(losses[i], 0.0) << i;
    for (int64_t k = 0; k < d; ++k) EXPECT_EQ(dh[i * d + k], 0.0) << i;
  }

  const int64_t m = int64_t(kept.size());
  Tensor hs = Tensor::empty({m, d}, DType::f64), ts = Tensor::empty({m}, DType::i64);
  for (int64_t j = 0; j < m; ++j) {
    for (int64_t k = 0; k < d; ++k) hs.data<double>()[j * d + k] = h.data<double>()[kept[j] * d + k];
    ts.data<int64_t>()[j] = int64_t(tg[kept[j]]);
  }
  Result s = run(hs, w, ts, Tensor(), LinearCrossEntropyOptions{});
  EXPECT_NEAR(a.loss, s.loss, 1e-13 * s.loss);
  EXPECT_LE(max_rel_error(a.dw, s.dw), 1e-13);
  for (int64_t j = 0; j < m; ++j)
    for (int64_t k = 0; k < d; ++k) EXPECT_NEAR(dh[kept[j] * d + k], values(s.dh)[j * d + k], 1e-14);
}

TEST(LossLinearCrossEntropy, NoIncludedPositionsGivesZeros) {
  const int64_t d = 5, V = 9;
  Tensor w = randn({V, d});
  for (int64_t n : {int64_t(0), int64_t(6)}) {
    Tensor h = randn({n, d}), targets = random_targets(n, V);
    Tensor mask = Tensor::zeros({n}, DType::u8);
    SCOPED_TRACE("n = " + std::to_string(n));
    Result r = run(h, w, targets, mask, LinearCrossEntropyOptions{});
    EXPECT_EQ(r.loss, 0.0);
    for (double v : values(r.dh)) EXPECT_EQ(v, 0.0);
    for (double v : values(r.dw)) EXPECT_EQ(v, 0.0);
    for (double v : values(r.losses)) EXPECT_EQ(v, 0.0);
  }
  Tensor h = randn({4, d}), targets = Tensor::full({4}, -100, DType::i64);  // all ignored
  Result r = run(h, w, targets, Tensor(), LinearCrossEntropyOptions{});
  EXPECT_EQ(r.loss, 0.0);
  for (double v : values(r.dw)) EXPECT_EQ(v, 0.0);
}

// accumulate_dw adds the weight gradient to what dw holds (dh is still overwritten),
// also when no position is included.
TEST(LossLinearCrossEntropy, AccumulateDwAddsTheWeightGradient) {
  const int64_t n = 37, d = 13, V = 53;
  Tensor h = randn({n, d}), w = randn({V, d}), targets = random_targets(n, V), start = randn({V, d});
  LinearCrossEntropyOptions opt;
  opt.chunk_size = 8;
  opt.vocab_chunk_size = 16;
  Result fresh = run(h, w, targets, Tensor(), opt);
  opt.accumulate_dw = true;
  Tensor dh = poisoned(h.shape(), DType::f64), dw = start.clone();
  EXPECT_EQ(mt::linear_cross_entropy_backward(h, w, targets, Tensor(), dh, dw, opt), fresh.loss);
  EXPECT_TRUE(mt::testing::same_bits(dh, fresh.dh));
  std::vector<double> want = values(start), got = values(dw), add = values(fresh.dw);
  for (size_t i = 0; i < want.size(); ++i) want[i] += add[i];
  EXPECT_LE(rel(got, want), 1e-14);
  Tensor none = Tensor::full({n}, -100, DType::i64), kept = start.clone();
  mt::linear_cross_entropy_backward(h, w, none, Tensor(), dh, kept, opt);
  EXPECT_TRUE(mt::testing::same_bits(kept, start)) << "nothing included: dw must be left as it was";
}

TEST(LossLinearCrossEntropy, RejectsBadArguments) {
  const int64_t n = 6, d = 5, V = 9;
  Tensor h = randn({n, d}), w = randn({V, d}), targets = random_targets(n, V);
  Tensor dh = poisoned(h.shape()), dw = poisoned(w.shape());
  LinearCrossEntropyOptions opt;
  auto fwd = [&](const Tensor& hh, const Tensor& ww, const Tensor& tt, const Tensor& mm) {
    return mt::linear_cross_entropy_forward(hh, ww, tt, mm, opt);
  };
  using mt::TypeError;
  using mt::ValueError;
  expect_error<TypeError>([&] { fwd(h.to(DType::bf16), w, targets, Tensor()); }, "'h'");
  expect_error<ValueError>([&] { fwd(h.view({1, n, d}), w, targets, Tensor()); }, "'h'");
  expect_error<ValueError>([&] { fwd(Tensor(), w, targets, Tensor()); }, "'h'");
  expect_error<TypeError>([&] { fwd(h, w.to(DType::f32), targets, Tensor()); }, "'w'");
  expect_error<ValueError>([&] { fwd(h, randn({V, d + 1}), targets, Tensor()); }, "expected [V, 5]");
  expect_error<TypeError>([&] { fwd(h, w, targets.to(DType::f32), Tensor()); }, "'targets'");
  expect_error<ValueError>([&] { fwd(h, w, random_targets(n + 1, V), Tensor()); }, "'targets' has shape [7], expected [6]");
  expect_error<TypeError>([&] { fwd(h, w, targets, Tensor::full({n}, 1, DType::i32)); }, "'mask'");
  expect_error<ValueError>([&] { fwd(h, w, targets, random_mask(n - 1)); }, "'mask' has shape [5], expected [6]");
  expect_error<ValueError>([&] { fwd(h.transpose(0, 1).contiguous().transpose(0, 1), w, targets, Tensor()); },
                           "'h'");
  Tensor bad = targets.clone();
  set_target(bad, 3, V);
  expect_error<ValueError>([&] { fwd(h, w, bad, Tensor()); }, "targets[3] = 9");
  set_target(bad, 3, -1);
  expect_error<ValueError>([&] { fwd(h, w, bad, Tensor()); }, "targets[3] = -1");
  Tensor fmask = Tensor::full({n}, 1.0, DType::f64);
  fmask.data<double>()[2] = -0.5;
  expect_error<ValueError>([&] { fwd(h, w, targets, fmask); }, "mask[2]");
  opt.chunk_size = 0;
  expect_error<ValueError>([&] { fwd(h, w, targets, Tensor()); }, "chunk_size");
  opt.chunk_size = 4;
  Tensor losses = poisoned({n + 1});
  expect_error<ValueError>([&] { mt::linear_cross_entropy_forward(h, w, targets, Tensor(), opt, &losses); },
                           "'losses'");
  Tensor dh_bad = poisoned({n, d + 1}), dw_bad = poisoned(w.shape(), DType::f32);
  expect_error<ValueError>([&] { mt::linear_cross_entropy_backward(h, w, targets, Tensor(), dh_bad, dw, opt); },
                           "'dh' has shape [6, 6], expected [6, 5]");
  expect_error<TypeError>([&] { mt::linear_cross_entropy_backward(h, w, targets, Tensor(), dh, dw_bad, opt); },
                          "'dw'");
  // Devices: mixed devices name the argument; f64 is refused on CUDA (before any kernel runs).
  expect_error<TypeError>([&] { fwd(h, on_cuda(w), targets, Tensor()); }, "'w' is on cuda:0");
  expect_error<TypeError>([&] { fwd(h, w, on_cuda(targets), Tensor()); }, "'targets' is on cuda:0");
  expect_error<TypeError>([&] { fwd(on_cuda(h), on_cuda(w), on_cuda(targets), Tensor()); }, "'h'", "on CUDA");
  Tensor cdh = on_cuda(dh), cdw = on_cuda(dw);
  expect_error<TypeError>([&] { mt::linear_cross_entropy_backward(h, w, targets, Tensor(), cdh, dw, opt); },
                          "'dh' is on cuda:0");
  expect_error<TypeError>(
      [&] { mt::linear_cross_entropy_backward(on_cuda(h), on_cuda(w), on_cuda(targets), Tensor(), cdh, cdw, opt); },
      "'h'", "on CUDA");
}
