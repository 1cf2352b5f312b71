// The CUDA linear + cross-entropy against the CPU op, within DESIGN.md's rule: the
// reference is the CPU op in f64 on the same (bf16- or f32-rounded) inputs. The CPU's
// own error is the CPU op in f32 rounded to the output dtype, except for the gradients
// of the bf16 path: there the CUDA op rounds the softmax gradient G to bf16 before the
// gemms dH = G·W and dW = Gᵀ·H (the precision of the model), so the same computation
// on the CPU is the f64 one with G rounded to bf16. Outputs are poisoned first; two
// CUDA runs must agree bit for bit. Skipped without a GPU.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "testing.h"

namespace mt = mambatron;
using mt::Device;
using mt::DType;
using mt::LinearCrossEntropyOptions;
using mt::Shape;
using mt::Tensor;
using mt::testing::expect_error;
using mt::testing::Input;
using mt::testing::input;
using mt::testing::check_cuda;
using mt::testing::poisoned;
using mt::testing::same_bits;
using mt::testing::values;

namespace {
const Device kGpu = Device::cuda(0);
constexpr int64_t kIgnore = -100;


// Targets in [0, V) as dt, with every seventh position (from 2) set to kIgnore.
Tensor random_targets(int64_t n, int64_t V, DType dt) {
  std::mt19937_64 rng(mt::testing::fresh_seed());
  Tensor t = Tensor::empty({n}, DType::i64);
  for (int64_t i = 0; i < n; ++i) t.data<int64_t>()[i] = i % 7 == 2 ? kIgnore : int64_t(rng() % uint64_t(V));
  return t.to(dt);
}

// kind 0: none; 1: u8 with about a quarter 0; 2: f32 weights in [0, 2) with about a quarter 0.
Tensor random_mask(int64_t n, int kind) {
  if (kind == 0) return Tensor();
  std::mt19937_64 rng(mt::testing::fresh_seed());
  std::uniform_real_distribution<double> u(0.0, 2.0);
  Tensor m = Tensor::empty({n}, kind == 1 ? DType::u8 : DType::f32);
  for (int64_t i = 0; i < n; ++i) {
    const bool keep = rng() % 4 != 0;
    if (kind == 1) m.data<uint8_t>()[i] = keep;
    else m.data<float>()[i] = keep ? float(u(rng)) : 0.0f;
  }
  return m;
}

Tensor to_gpu(const Tensor& t) { return t.defined() ? t.to(kGpu) : Tensor(); }

void check_loss(double gpu, double cpu, double ref, const std::string& what) {
  EXPECT_LE(std::fabs(gpu - ref), 2 * std::fabs(cpu - ref) + 1e-5 * std::fabs(ref))
      << what << ": CUDA " << gpu << ", CPU " << cpu << ", reference " << ref;
}

struct Grads {
  Tensor dh, dw;
};

// The gradients in f64 with G = coef·(softmax − one-hot) rounded to bf16 before the gemms.
Grads grads_with_bf16_softmax_gradient(const Tensor& h, const Tensor& w, const Tensor& targets, const Tensor& mask,
                                       double grad_scale) {
  const int64_t n = h.size(0), V = w.size(0);
  mt::GemmOptions tb;
  tb.trans_b = true;
  Tensor logits = mt::gemm(h, w, tb);
  auto tg = values(targets);
  std::vector<double> m(size_t(n), 1.0);
  if (mask.defined()) m = values(mask);
  double total = 0;
  for (int64_t i = 0; i < n; ++i)
    if (int64_t(tg[i]) != kIgnore && m[i] > 0) total += m[i];
  Tensor G = Tensor::zeros({n, V}, DType::f64);
  const double* z = logits.data<double>();
  double* g = G.data<double>();
  for (int64_t i = 0; i < n; ++i) {
    if (int64_t(tg[i]) == kIgnore || m[i] == 0) continue;
    double mx = -INFINITY, s = 0;
    for (int64_t v = 0; v < V; ++v) mx = std::max(mx, z[i * V + v]);
    for (int64_t v = 0; v < V; ++v) s += std::exp(z[i * V + v] - mx);
    const double coef = grad_scale * m[i] / total;
    for (int64_t v = 0; v < V; ++v)
      g[i * V + v] = coef * std::exp(z[i * V + v] - mx) / s - (v == int64_t(tg[i]) ? coef : 0.0);
  }
  G = G.to(DType::bf16).to(DType::f64);
  mt::GemmOptions ta;
  ta.trans_a = true;
  return {mt::gemm(G, w), mt::gemm(G, h, ta)};
}

struct Case {
  int64_t n, d, V, chunk, vchunk;
};

std::string label(const Case& c, DType at, DType wt, DType gt, DType it, int mask_kind) {
  return "n " + std::to_string(c.n) + " d " + std::to_string(c.d) + " V " + std::to_string(c.V) + " chunk " +
         std::to_string(c.chunk) + "/" + std::to_string(c.vchunk) + " h " + mt::dtype_name(at) + " w " +
         mt::dtype_name(wt) + " dw " + mt::dtype_name(gt) + " targets " + mt::dtype_name(it) + " mask " +
         std::to_string(mask_kind);
}

// Forward and backward of one case on the GPU against the CPU op, and the repeat run.
void compare(const Case& c, DType at, DType wt, DType gt, DType it, int mask_kind, double grad_scale) {
  const std::string what = label(c, at, wt, gt, it, mask_kind);
  SCOPED_TRACE(what);
  Input h = input({c.n, c.d}, at, 1.0), w = input({c.V, c.d}, wt, c.d > 0 ? 2.0 / std::sqrt(double(c.d)) : 1.0);
  Tensor targets = random_targets(c.n, c.V, it), mask = random_mask(c.n, mask_kind);
  Tensor targets_gpu = targets.to(kGpu), mask_gpu = to_gpu(mask);
  LinearCrossEntropyOptions opt;
  opt.chunk_size = c.chunk;
  opt.vocab_chunk_size = c.vchunk;
  opt.grad_scale = grad_scale;

  Tensor l64 = Tensor::empty({c.n}, DType::f64), l32 = Tensor::empty({c.n}, DType::f32);
  Tensor dh64 = Tensor::empty({c.n, c.d}, DType::f64), dw64 = Tensor::empty({c.V, c.d}, DType::f64);
  Tensor dh32 = Tensor::empty({c.n, c.d}, DType::f32), dw32 = Tensor::empty({c.V, c.d}, DType::f32);
  const double ref = mt::linear_cross_entropy_backward(h.f64, w.f64, targets, mask, dh64, dw64, opt, &l64);
  const double cpu = mt::linear_cross_entropy_backward(h.f32, w.f32, targets, mask, dh32, dw32, opt, &l32);

  Tensor losses = poisoned({c.n}, DType::f32, kGpu);
  const double fwd = mt::linear_cross_entropy_forward(h.dev, w.dev, targets_gpu, mask_gpu, opt, &losses);
  check_loss(fwd, cpu, ref, what + " loss");
  check_cuda(losses, l32, l64, what + " losses");

  Tensor dh = poisoned({c.n, c.d}, at, kGpu), dw = poisoned({c.V, c.d}, gt, kGpu);
  Tensor losses_b = poisoned({c.n}, DType::f32, kGpu);
  const double bwd = mt::linear_cross_entropy_backward(h.dev, w.dev, targets_gpu, mask_gpu, dh, dw, opt, &losses_b);
  EXPECT_EQ(bwd, fwd) << what << ": forward and backward losses differ";
  EXPECT_TRUE(same_bits(losses_b, losses)) << what << ": forward and backward per-token losses differ";
  if (at == DType::bf16 && wt == DType::bf16) {
    Grads same = grads_with_bf16_softmax_gradient(h.f64, w.f64, targets, mask, grad_scale);
    check_cuda(dh, same.dh, dh64, what + " dh");
    check_cuda(dw, same.dw, dw64, what + " dw");
  } else {
    check_cuda(dh, dh32, dh64, what + " dh");
    check_cuda(dw, dw32, dw64, what + " dw");
  }

  Tensor dh2 = poisoned({c.n, c.d}, at, kGpu), dw2 = poisoned({c.V, c.d}, gt, kGpu);
  Tensor losses2 = poisoned({c.n}, DType::f32, kGpu);
  const double again = mt::linear_cross_entropy_backward(h.dev, w.dev, targets_gpu, mask_gpu, dh2, dw2, opt, &losses2);
  EXPECT_EQ(again, bwd) << what << ": two runs differ";
  EXPECT_TRUE(same_bits(dh, dh2) && same_bits(dw, dw2) && same_bits(losses, losses2)) << what << ": two runs differ";
}
}  // namespace

// Every dtype combination on small and odd shapes: several row and vocabulary chunks,
// ragged last chunks, rows of odd length (the scalar kernel paths), one vocabulary chunk.
TEST(CudaLoss, LinearCrossEntropyMatchesCpuWithinRule) {
  SKIP_WITHOUT_GPU();
  const Case cases[] = {{1, 1, 1, 4096, 32768}, {37, 13, 53, 7, 11}, {300, 64, 1000, 4096, 0},
                        {257, 130, 2050, 100, 512}, {5, 0, 7, 2, 3}};
  int k = 0;
  for (DType at : {DType::bf16, DType::f32})
    for (DType wt : {DType::bf16, DType::f32})
      for (DType gt : {DType::f32, DType::bf16})
        for (const Case& c : cases) {
          ++k;
          compare(c, at, wt, gt, k % 2 ? DType::i64 : DType::i32, k % 3, k % 4 ? 1.0 : 0.37);
        }
}

// Larger shapes in the model's dtypes (bf16 h and w, f32 dw) and in f32.
TEST(CudaLoss, LinearCrossEntropyLargerShapes) {
  SKIP_WITHOUT_GPU();
  compare({1000, 257, 5003, 256, 1024}, DType::bf16, DType::bf16, DType::f32, DType::i64, 1, 1.0);
  compare({1000, 257, 5003, 256, 1024}, DType::f32, DType::f32, DType::f32, DType::i32, 2, 1.0);
  compare({2048, 512, 4096, 4096, 32768}, DType::bf16, DType::bf16, DType::f32, DType::i32, 0, 1.0);
  compare({2048, 512, 4096, 1000, 1500}, DType::bf16, DType::bf16, DType::bf16, DType::i64, 0, 1.0);
}

// accumulate_dw (the model's gradient accumulation and tied embeddings): an f32 dw gets
// the weight gradient added, within the rule of the CPU's; bf16 dw is refused.
TEST(CudaLoss, AccumulateDwAddsTheWeightGradient) {
  SKIP_WITHOUT_GPU();
  for (const Case& c : {Case{257, 130, 2050, 100, 512}, Case{300, 64, 1000, 1024, 0}}) {
    Input h = input({c.n, c.d}, DType::bf16, 1.0), w = input({c.V, c.d}, DType::bf16, 0.2);
    Input start = input({c.V, c.d}, DType::f32, 0.01);
    Tensor targets = random_targets(c.n, c.V, DType::i64), targets_gpu = targets.to(kGpu);
    LinearCrossEntropyOptions opt;
    opt.chunk_size = c.chunk;
    opt.vocab_chunk_size = c.vchunk;
    opt.accumulate_dw = true;
    Tensor dh64 = Tensor::empty({c.n, c.d}, DType::f64), dw64 = start.f64.clone();
    Tensor dh32 = Tensor::empty({c.n, c.d}, DType::f32), dw32 = start.f32.clone();
    mt::linear_cross_entropy_backward(h.f64, w.f64, targets, Tensor(), dh64, dw64, opt);
    mt::linear_cross_entropy_backward(h.f32, w.f32, targets, Tensor(), dh32, dw32, opt);
    Tensor dh = poisoned({c.n, c.d}, DType::bf16, kGpu), dw = start.dev.clone();
    mt::linear_cross_entropy_backward(h.dev, w.dev, targets_gpu, Tensor(), dh, dw, opt);
    Grads same = grads_with_bf16_softmax_gradient(h.f64, w.f64, targets, Tensor(), 1.0);
    Tensor same_dw = Tensor::empty({c.V, c.d}, DType::f64);
    mt::add(same.dw.to(DType::f64), start.f64, same_dw);
    check_cuda(dw, same_dw, dw64, "accumulated dw");
    Tensor dw_bf16 = Tensor::zeros({c.V, c.d}, DType::bf16, kGpu);
    EXPECT_THROW(mt::linear_cross_entropy_backward(h.dev, w.dev, targets_gpu, Tensor(), dh, dw_bf16, opt),
                 mt::TypeError);
  }
}

TEST(CudaLoss, NothingIncludedGivesZeros) {
  SKIP_WITHOUT_GPU();
  const int64_t d = 5, V = 9;
  Tensor w = Tensor::full({V, d}, 1.0, DType::bf16, kGpu);
  for (int64_t n : {int64_t(0), int64_t(6)}) {
    SCOPED_TRACE("n = " + std::to_string(n));
    Tensor h = mt::testing::randn({n, d}, DType::bf16, 1.0, kGpu);
    Tensor targets = Tensor::full({n}, kIgnore, DType::i64, kGpu);
    Tensor dh = poisoned({n, d}, DType::bf16, kGpu), dw = poisoned({V, d}, DType::f32, kGpu);
    Tensor losses = poisoned({n}, DType::f32, kGpu);
    EXPECT_EQ(mt::linear_cross_entropy_backward(h, w, targets, Tensor(), dh, dw, {}, &losses), 0.0);
    for (const Tensor& t : {dh, dw, losses})
      for (double v : values(t)) EXPECT_EQ(v, 0.0);
    Tensor zero_mask = Tensor::zeros({n}, DType::f32, kGpu);
    Tensor targets_ok = Tensor::zeros({n}, DType::i32, kGpu);
    EXPECT_EQ(mt::linear_cross_entropy_forward(h, w, targets_ok, zero_mask), 0.0);
  }
}

TEST(CudaLoss, ReportsTheFirstBadTargetOrMaskLikeTheCpu) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 6, d = 5, V = 9;
  Tensor h = mt::testing::randn({n, d}, DType::bf16, 1.0, kGpu), w = mt::testing::randn({V, d}, DType::f32, 1.0, kGpu);
  Tensor dh = Tensor::zeros({n, d}, DType::bf16, kGpu), dw = Tensor::zeros({V, d}, DType::f32, kGpu);
  for (DType it : {DType::i32, DType::i64}) {
    Tensor t = Tensor::zeros({n}, DType::i64);
    t.data<int64_t>()[1] = kIgnore;
    t.data<int64_t>()[3] = V;
    t.data<int64_t>()[4] = -1;
    Tensor tg = t.to(kGpu, it);
    Tensor mask = Tensor::zeros({n}, DType::u8, kGpu);  // masked positions are checked too
    expect_error<mt::ValueError>([&] { mt::linear_cross_entropy_forward(h, w, tg, mask); }, "targets[3] = 9",
                                 "ignore_index (-100)");
    expect_error<mt::ValueError>([&] { mt::linear_cross_entropy_backward(h, w, tg, Tensor(), dh, dw); },
                                 "linear_cross_entropy_backward: targets[3] = 9");
    Tensor fm = Tensor::full({n}, 1.0, DType::f32);
    fm.data<float>()[2] = -0.5f;
    expect_error<mt::ValueError>([&] { mt::linear_cross_entropy_forward(h, w, tg, fm.to(kGpu)); }, "mask[2] = -0.5");
    fm.data<float>()[2] = NAN;
    expect_error<mt::ValueError>([&] { mt::linear_cross_entropy_forward(h, w, tg, fm.to(kGpu)); }, "mask[2]");
  }
  // The device is still usable after the reported errors.
  EXPECT_NO_THROW(mt::linear_cross_entropy_forward(h, w, Tensor::zeros({n}, DType::i32, kGpu)));
}

TEST(CudaLoss, RejectsBadCudaDtypesAndDevices) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 4, d = 3, V = 5;
  Tensor h = Tensor::zeros({n, d}, DType::bf16, kGpu), w = Tensor::zeros({V, d}, DType::bf16, kGpu);
  Tensor t = Tensor::zeros({n}, DType::i32, kGpu);
  Tensor dh = Tensor::zeros({n, d}, DType::bf16, kGpu), dw = Tensor::zeros({V, d}, DType::f32, kGpu);
  auto fwd = [&](const Tensor& hh, const Tensor& ww, const Tensor& tt, const Tensor& mm) {
    mt::linear_cross_entropy_forward(hh, ww, tt, mm);
  };
  using mt::TypeError;
  expect_error<TypeError>([&] { fwd(h.to(DType::f64), w, t, Tensor()); }, "'h'", "on CUDA");
  expect_error<TypeError>([&] { fwd(h, w.to(DType::f16), t, Tensor()); }, "'w'", "on CUDA");
  expect_error<TypeError>([&] { fwd(h, w, t.to(DType::f32), Tensor()); }, "'targets'");
  expect_error<TypeError>([&] { fwd(h, w, t, Tensor::zeros({n}, DType::f64, kGpu)); }, "'mask'", "u8 or f32");
  expect_error<TypeError>([&] { fwd(h, w, t.to(Device::cpu()), Tensor()); }, "'targets' is on cpu");
  expect_error<TypeError>([&] { fwd(h, w, t, Tensor::full({n}, 1.0, DType::u8)); }, "'mask' is on cpu");
  Tensor losses_bf16 = Tensor::zeros({n}, DType::bf16, kGpu);
  expect_error<TypeError>([&] { mt::linear_cross_entropy_forward(h, w, t, Tensor(), {}, &losses_bf16); }, "'losses'",
                          "f32");
  Tensor dh_f32 = Tensor::zeros({n, d}, DType::f32, kGpu), dw_f64 = Tensor::zeros({V, d}, DType::f64, kGpu);
  expect_error<TypeError>([&] { mt::linear_cross_entropy_backward(h, w, t, Tensor(), dh_f32, dw); }, "'dh'");
  expect_error<TypeError>([&] { mt::linear_cross_entropy_backward(h, w, t, Tensor(), dh, dw_f64); }, "'dw'");
  Tensor dw_cpu = Tensor::zeros({V, d}, DType::f32);
  expect_error<TypeError>([&] { mt::linear_cross_entropy_backward(h, w, t, Tensor(), dh, dw_cpu); }, "'dw' is on cpu");
}
