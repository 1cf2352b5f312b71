// The CUDA conv1d against the CPU op, within DESIGN.md's rule: the reference is the
// CPU op in f64 on the same (bf16- or f32-rounded) inputs, and the CPU's own error is
// the CPU op in f32 rounded to the output dtype. Outputs are poisoned first; two CUDA
// runs must agree bit for bit. Skipped without a GPU.
#include <algorithm>
#include <cstring>
#include <random>
#include <string>

#include "testing.h"

namespace mt = mambatron;
using mt::Device;
using mt::DType;
using mt::Shape;
using mt::Tensor;
using mt::testing::expect_error;
using mt::testing::Input;
using mt::testing::input;
using mt::testing::opt;
using mt::testing::check_cuda;
using mt::testing::poisoned;
using mt::testing::random_doc_ids;
using mt::testing::same_bits;

namespace {
const Device kGpu = Device::cuda(0);

Input none() { return {}; }

struct Case {
  int64_t b, l, c, w;
  bool silu, bias, init, seq, dfinal, dinit;
  std::string str() const {
    return "b " + std::to_string(b) + " l " + std::to_string(l) + " c " + std::to_string(c) + " w " +
           std::to_string(w) + (silu ? " silu" : "") + (bias ? " bias" : "") + (init ? " init" : "") +
           (seq ? " seq" : "") + (dfinal ? " d_final" : "") + (dinit ? " d_init" : "");
  }
};

// Odd sizes, one token, an empty sequence, more than one forward tile (256 tokens) and
// many backward units (four segments of 16 tokens at these sizes), channel counts that
// take the staged vector path (multiples of 4) and those that do not.
const Case kCases[] = {
    {1, 1, 1, 2, false, false, false, false, false, false}, {2, 13, 37, 4, true, true, true, false, true, true},
    {3, 300, 40, 3, true, true, true, true, true, true},    {2, 257, 64, 4, false, true, false, true, true, true},
    {1, 600, 72, 2, true, false, true, true, false, true},  {3, 2, 16, 4, true, true, true, true, true, true},
    {2, 0, 8, 4, true, true, true, false, true, true},      {1, 700, 4099, 4, true, true, true, true, true, true},
    {5, 129, 24, 4, true, true, false, false, false, false},
};

struct Conv {
  Input x, weight, bias, init, dout, dfinal;
  Tensor seq, seq_gpu;
};

// Documents start at any token with probability 1 / doc_one_in.
Conv make(const Case& k, DType at, DType pt, int doc_one_in = 6) {
  Conv cv;
  cv.x = input({k.b, k.l, k.c}, at);
  cv.weight = input({k.c, k.w}, pt, 0.5);
  if (k.bias) cv.bias = input({k.c}, pt);
  if (k.init) cv.init = input({k.b, k.c, k.w - 1}, at);
  cv.dout = input({k.b, k.l, k.c}, at);
  if (k.dfinal) cv.dfinal = input({k.b, k.c, k.w - 1}, at);
  if (k.seq) {
    cv.seq = random_doc_ids(k.b, k.l, doc_one_in);
    cv.seq_gpu = cv.seq.to(kGpu);
  }
  return cv;
}

struct Fwd {
  Tensor out, fin;
};
Fwd forward(const Conv& cv, const Case& k, Tensor Input::*form, DType dt, Device dev) {
  const bool gpu = dev.is_cuda();
  Fwd f{poisoned({k.b, k.l, k.c}, dt, dev), poisoned({k.b, k.c, k.w - 1}, dt, dev)};
  mt::conv1d_forward(cv.x.*form, cv.weight.*form, opt(cv.bias, form), opt(cv.init, form), gpu ? cv.seq_gpu : cv.seq,
                     f.out, f.fin, {k.silu});
  return f;
}

struct Bwd {
  Tensor dx, dw, db, dinit;
};
Bwd backward(const Conv& cv, const Case& k, Tensor Input::*form, DType dt, DType gt, Device dev) {
  const bool gpu = dev.is_cuda();
  Bwd g{poisoned({k.b, k.l, k.c}, dt, dev), poisoned({k.c, k.w}, gt, dev),
        k.bias ? poisoned({k.c}, gt, dev) : Tensor(), k.dinit ? poisoned({k.b, k.c, k.w - 1}, dt, dev) : Tensor()};
  mt::conv1d_backward(cv.dout.*form, opt(cv.dfinal, form), cv.x.*form, cv.weight.*form, opt(cv.bias, form),
                      opt(cv.init, form), gpu ? cv.seq_gpu : cv.seq, g.dx, g.dw, g.db, g.dinit, {k.silu});
  return g;
}
}  // namespace

TEST(CudaConv1d, MatchesCpuWithinRule) {
  SKIP_WITHOUT_GPU();
  for (DType at : {DType::bf16, DType::f32})
    for (DType pt : {DType::f32, DType::bf16})
      for (const Case& k : kCases) {
        const DType gt = pt == DType::bf16 && at == DType::bf16 ? DType::bf16 : DType::f32;
        const std::string what = k.str() + " act " + mt::dtype_name(at) + " weight " + mt::dtype_name(pt) +
                                 " grads " + mt::dtype_name(gt);
        Conv cv = make(k, at, pt);
        Fwd r64 = forward(cv, k, &Input::f64, DType::f64, Device::cpu());
        Fwd r32 = forward(cv, k, &Input::f32, DType::f32, Device::cpu());
        Fwd g1 = forward(cv, k, &Input::dev, at, kGpu), g2 = forward(cv, k, &Input::dev, at, kGpu);
        check_cuda(g1.out, r32.out, r64.out, what + " out");
        check_cuda(g1.fin, r32.fin, r64.fin, what + " final_state");
        EXPECT_TRUE(same_bits(g1.out, g2.out) && same_bits(g1.fin, g2.fin)) << what << ": two forward runs differ";

        Bwd b64 = backward(cv, k, &Input::f64, DType::f64, DType::f64, Device::cpu());
        Bwd b32 = backward(cv, k, &Input::f32, DType::f32, DType::f32, Device::cpu());
        Bwd h1 = backward(cv, k, &Input::dev, at, gt, kGpu), h2 = backward(cv, k, &Input::dev, at, gt, kGpu);
        check_cuda(h1.dx, b32.dx, b64.dx, what + " dx");
        check_cuda(h1.dw, b32.dw, b64.dw, what + " dweight");
        if (k.bias) check_cuda(h1.db, b32.db, b64.db, what + " dbias");
        if (k.dinit) check_cuda(h1.dinit, b32.dinit, b64.dinit, what + " d_initial_state");
        EXPECT_TRUE(same_bits(h1.dx, h2.dx) && same_bits(h1.dw, h2.dw) && same_bits(h1.db, h2.db) &&
                    same_bits(h1.dinit, h2.dinit))
            << what << ": two backward runs differ";
      }
}

// Decoding token by token from the initial state: each output within the rule of the
// CPU step, and the state after the last token equal to the forward's final_state.
TEST(CudaConv1d, StepsContinueTheForward) {
  SKIP_WITHOUT_GPU();
  for (DType at : {DType::bf16, DType::f32})
    for (DType pt : {DType::f32, DType::bf16})
      for (int64_t w = 2; w <= 4; ++w) {
        const Case k{3, 9, 37, w, true, true, true, false, false, false};
        const std::string what = k.str() + " act " + mt::dtype_name(at) + " weight " + mt::dtype_name(pt);
        Conv cv = make(k, at, pt);
        Tensor st64 = cv.init.f64.clone(), st32 = cv.init.f32.clone(), st = cv.init.dev.clone();
        for (int64_t t = 0; t < k.l; ++t) {
          Tensor xt = cv.x.f64.select(1, t).contiguous();
          Tensor o64 = Tensor::empty({k.b, k.c}, DType::f64), o32 = Tensor::empty({k.b, k.c}, DType::f32);
          Tensor o = poisoned({k.b, k.c}, at, kGpu);
          mt::conv1d_step(xt, cv.weight.f64, cv.bias.f64, st64, o64, {k.silu});
          mt::conv1d_step(xt.to(DType::f32), cv.weight.f32, cv.bias.f32, st32, o32, {k.silu});
          mt::conv1d_step(xt.to(kGpu, at), cv.weight.dev, cv.bias.dev, st, o, {k.silu});
          check_cuda(o, o32, o64, what + " step " + std::to_string(t));
        }
        Fwd full = forward(cv, k, &Input::dev, at, kGpu);
        EXPECT_TRUE(same_bits(st, full.fin)) << what << ": the state after the steps is not the final_state";
      }
}

// A row one element into its buffer is not aligned for vector accesses: the scalar
// path must give the same bits.
TEST(CudaConv1d, UnalignedRowsMatchAlignedOnes) {
  SKIP_WITHOUT_GPU();
  for (DType at : {DType::bf16, DType::f32}) {
    const Case k{2, 70, 64, 4, true, true, true, false, true, false};
    Conv cv = make(k, at, DType::f32);
    const int64_t n = k.b * k.l * k.c;
    auto shifted = [&](const Tensor& t) {
      Tensor buf = Tensor::zeros({n + 1}, at, kGpu);
      Tensor v = buf.slice(0, 1, n + 1).view({k.b, k.l, k.c});
      v.copy_(t);
      return v;
    };
    Tensor xs = shifted(cv.x.dev), gs = shifted(cv.dout.dev);
    Tensor out = poisoned({k.b, k.l, k.c}, at, kGpu), fin = poisoned({k.b, k.c, 3}, at, kGpu);
    Tensor outs = shifted(out);
    mt::conv1d_forward(cv.x.dev, cv.weight.dev, cv.bias.dev, cv.init.dev, Tensor(), out, fin, {true});
    mt::conv1d_forward(xs, cv.weight.dev, cv.bias.dev, cv.init.dev, Tensor(), outs, fin, {true});
    EXPECT_TRUE(same_bits(out, outs)) << mt::dtype_name(at) << " forward";
    Tensor dx = poisoned({k.b, k.l, k.c}, at, kGpu), dxs = shifted(dx);
    Tensor dw = poisoned({k.c, 4}, DType::f32, kGpu), dws = poisoned({k.c, 4}, DType::f32, kGpu);
    Tensor none;
    mt::conv1d_backward(cv.dout.dev, cv.dfinal.dev, cv.x.dev, cv.weight.dev, none, none, none, dx, dw, none, none,
                        {true});
    mt::conv1d_backward(gs, cv.dfinal.dev, xs, cv.weight.dev, none, none, none, dxs, dws, none, none, {true});
    EXPECT_TRUE(same_bits(dx, dxs) && same_bits(dw, dws)) << mt::dtype_name(at) << " backward";
  }
}

// One row of 512K tokens × 4104 channels: offsets past 2^31 elements. The first and
// last 8 channels (whole, over every token) against the CPU op on those channels.
TEST(CudaConv1d, HalfMillionTokenRow) {
  SKIP_WITHOUT_GPU();
  const int64_t l = 524293, c = 4104, w = 4;
  ASSERT_GT(l * c, int64_t(1) << 31);
  mt::Generator gen(mt::testing::fresh_seed());
  Tensor x = Tensor::randn({1, l, c}, DType::bf16, kGpu, &gen), dout = Tensor::randn({1, l, c}, DType::bf16, kGpu, &gen);
  Input weight = input({c, w}, DType::f32, 0.5), bias = input({c}, DType::f32);
  Tensor out = poisoned({1, l, c}, DType::bf16, kGpu), fin = poisoned({1, c, w - 1}, DType::bf16, kGpu), none;
  mt::conv1d_forward(x, weight.dev, bias.dev, none, none, out, fin, {true});
  Tensor dx = poisoned({1, l, c}, DType::bf16, kGpu), dw = poisoned({c, w}, DType::f32, kGpu);
  Tensor db = poisoned({c}, DType::f32, kGpu);
  mt::conv1d_backward(dout, none, x, weight.dev, bias.dev, none, none, dx, dw, db, none, {true});
  for (int64_t c0 : {int64_t(0), c - 8}) {
    const std::string what = "channels " + std::to_string(c0) + "..";
    auto part = [&](const Tensor& t) { return t.narrow(2, c0, 8).contiguous().to(Device::cpu()); };
    Tensor xs = part(x), gs = part(dout);
    Tensor ws64 = weight.f64.narrow(0, c0, 8).contiguous(), bs64 = bias.f64.narrow(0, c0, 8).contiguous();
    Tensor o64 = Tensor::empty({1, l, 8}, DType::f64), o32 = Tensor::empty({1, l, 8}, DType::f32);
    mt::conv1d_forward(xs.to(DType::f64), ws64, bs64, none, none, o64, none, {true});
    mt::conv1d_forward(xs.to(DType::f32), ws64.to(DType::f32), bs64.to(DType::f32), none, none, o32, none, {true});
    check_cuda(out.narrow(2, c0, 8).contiguous(), o32, o64, what + " out");
    Tensor dx64 = Tensor::empty({1, l, 8}, DType::f64), dw64 = Tensor::empty({8, w}, DType::f64);
    Tensor db64 = Tensor::empty({8}, DType::f64);
    Tensor dx32 = Tensor::empty({1, l, 8}, DType::f32), dw32 = Tensor::empty({8, w}, DType::f32);
    Tensor db32 = Tensor::empty({8}, DType::f32);
    mt::conv1d_backward(gs.to(DType::f64), none, xs.to(DType::f64), ws64, bs64, none, none, dx64, dw64, db64, none,
                        {true});
    mt::conv1d_backward(gs.to(DType::f32), none, xs.to(DType::f32), ws64.to(DType::f32), bs64.to(DType::f32), none,
                        none, dx32, dw32, db32, none, {true});
    check_cuda(dx.narrow(2, c0, 8).contiguous(), dx32, dx64, what + " dx");
    check_cuda(dw.narrow(0, c0, 8).contiguous(), dw32, dw64, what + " dweight");
    check_cuda(db.narrow(0, c0, 8).contiguous(), db32, db64, what + " dbias");
  }
}

// A tensor large enough that the backward's warps walk segments of 128 tokens (small
// ones get 16), with documents of ~200 tokens, initial states, d_final_state and
// d_initial_state: the first and last 8 channels against the CPU op on those channels
// (the conv is depthwise: channels do not mix).
TEST(CudaConv1d, LongSegmentsWithDocuments) {
  SKIP_WITHOUT_GPU();
  const Case k{4, 2085, 4096, 4, true, true, true, true, true, true};
  const int64_t n = 8;
  for (DType at : {DType::bf16, DType::f32}) {
    Conv cv = make(k, at, DType::f32, 200);
    const Bwd g = backward(cv, k, &Input::dev, at, DType::f32, kGpu);
    for (int64_t c0 : {int64_t(0), k.c - n}) {
      const std::string what = k.str() + " act " + mt::dtype_name(at) + " channels " + std::to_string(c0) + "..";
      auto part = [&](const Input& in, int64_t dim) {
        return Input{in.dev.narrow(dim, c0, n).contiguous(), in.f32.narrow(dim, c0, n).contiguous(),
                     in.f64.narrow(dim, c0, n).contiguous()};
      };
      Conv sub{part(cv.x, 2), part(cv.weight, 0), part(cv.bias, 0), part(cv.init, 1), part(cv.dout, 2),
               part(cv.dfinal, 1), cv.seq, cv.seq_gpu};
      Case ks = k;
      ks.c = n;
      Bwd b64 = backward(sub, ks, &Input::f64, DType::f64, DType::f64, Device::cpu());
      Bwd b32 = backward(sub, ks, &Input::f32, DType::f32, DType::f32, Device::cpu());
      check_cuda(g.dx.narrow(2, c0, n).contiguous(), b32.dx, b64.dx, what + " dx");
      check_cuda(g.dw.narrow(0, c0, n).contiguous(), b32.dw, b64.dw, what + " dweight");
      check_cuda(g.db.narrow(0, c0, n).contiguous(), b32.db, b64.db, what + " dbias");
      check_cuda(g.dinit.narrow(1, c0, n).contiguous(), b32.dinit, b64.dinit, what + " d_initial_state");
    }
  }
}

// More rows than one grid dimension holds (65,535 backward units): the launches loop.
TEST(CudaConv1d, MoreUnitsThanOneGridDimension) {
  SKIP_WITHOUT_GPU();
  const Case k{70000, 3, 4, 4, true, true, true, false, true, true};
  const std::string what = k.str();
  Conv cv = make(k, DType::bf16, DType::f32);
  Fwd r64 = forward(cv, k, &Input::f64, DType::f64, Device::cpu());
  Fwd r32 = forward(cv, k, &Input::f32, DType::f32, Device::cpu());
  Fwd g = forward(cv, k, &Input::dev, DType::bf16, kGpu);
  check_cuda(g.out, r32.out, r64.out, what + " out");
  Bwd b64 = backward(cv, k, &Input::f64, DType::f64, DType::f64, Device::cpu());
  Bwd b32 = backward(cv, k, &Input::f32, DType::f32, DType::f32, Device::cpu());
  Bwd h = backward(cv, k, &Input::dev, DType::bf16, DType::f32, kGpu);
  check_cuda(h.dx, b32.dx, b64.dx, what + " dx");
  check_cuda(h.dw, b32.dw, b64.dw, what + " dweight");
  check_cuda(h.db, b32.db, b64.db, what + " dbias");
  check_cuda(h.dinit, b32.dinit, b64.dinit, what + " d_initial_state");
}

TEST(CudaConv1d, RejectsBadDtypes) {
  SKIP_WITHOUT_GPU();
  using TE = mt::TypeError;
  Tensor x = Tensor::zeros({2, 5, 8}, DType::bf16, kGpu), out = Tensor::zeros({2, 5, 8}, DType::bf16, kGpu);
  Tensor w = Tensor::zeros({8, 4}, DType::f32, kGpu), none;
  Tensor x64 = Tensor::zeros({2, 5, 8}, DType::f64, kGpu), out64 = Tensor::zeros({2, 5, 8}, DType::f64, kGpu);
  Tensor w64 = Tensor::zeros({8, 4}, DType::f64, kGpu);
  expect_error<TE>([&] { mt::conv1d_forward(x64, w, none, none, none, out64, none); }, "'x'", "bf16 or f32 on CUDA");
  expect_error<TE>([&] { mt::conv1d_forward(x, w64, none, none, none, out, none); }, "'weight'", "bf16 or f32");
  Tensor bias_bf16 = Tensor::zeros({8}, DType::bf16, kGpu);
  expect_error<TE>([&] { mt::conv1d_forward(x, w, bias_bf16, none, none, out, none); }, "'bias'");
  Tensor init32 = Tensor::zeros({2, 8, 3}, DType::f32, kGpu);
  expect_error<TE>([&] { mt::conv1d_forward(x, w, none, init32, none, out, none); }, "'initial_state'");
  Tensor dx = Tensor::zeros({2, 5, 8}, DType::bf16, kGpu), dw = Tensor::zeros({8, 4}, DType::bf16, kGpu);
  Tensor db32 = Tensor::zeros({8}, DType::f32, kGpu);
  expect_error<TE>([&] { mt::conv1d_backward(x, none, x, w, none, none, none, dx, dw, db32, none); }, "'dbias'");
  Tensor xc = Tensor::zeros({2, 5, 8}, DType::f32);
  expect_error<TE>([&] { mt::conv1d_forward(xc, w, none, none, none, out, none); }, "'weight'", "cuda");
}
