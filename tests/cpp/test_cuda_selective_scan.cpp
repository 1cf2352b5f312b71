// The CUDA selective scan against the CPU op, within DESIGN.md's rule: the reference
// is the CPU op in f64 on the same (bf16- or f32-rounded) inputs, and the CPU's own
// error is the CPU op in f32 rounded to the output dtype. Outputs are poisoned first;
// two CUDA runs must agree bit for bit. Skipped without a GPU.
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


struct Case {
  int64_t b, l, d, n, g;
  bool D, z, bias, softplus, init, seq, dfinal;
  std::string str() const {
    return "b " + std::to_string(b) + " l " + std::to_string(l) + " d " + std::to_string(d) + " n " +
           std::to_string(n) + " g " + std::to_string(g) + (D ? " D" : "") + (z ? " z" : "") + (bias ? " bias" : "") +
           (softplus ? " softplus" : "") + (init ? " init" : "") + (seq ? " seq" : "") + (dfinal ? " d_final" : "");
  }
};

// One channel; groups of one channel; small groups packed in a block; a group wider
// than a block (per-block dB/dC sums); several checkpoint segments (64 tokens, 32 for
// n > 32); state sizes 5, 16, 20, 32, 40 and 64 (the three kernel variants, B and C read
// element by element or in 16-byte packs); an empty sequence.
// The forward runs over chunks of at least 64 tokens: rows of one chunk, of several
// (lengths not a multiple of 64, with and without an initial state, with document
// starts) in each kernel variant, and of more than 8 (the carry pass reads 8 at a time).
// The backward runs a block per span of segments: one segment per span in the small
// cases; the three rows of 8200 tokens have enough blocks (about 8200 of one segment)
// to take spans of 2 segments (n 16 and 64; n 32 with a group wider than a block),
// entered from gradient chunks of one or two segments, with documents starting on span
// and chunk boundaries. Staged blocks (teams of lanes a channel; a group's width a
// multiple of 64 channels at n 16, of 32 at n 32 and 64) write dB and dC directly when
// a group is one block (d 64 at n 16; d 128, g 2; d 32 at n 32; d 64, g 2 at n 64) or
// through per-block partials (d 256 at n 16, d 64 at n 32), and take a whole row of
// several segments as one span when the rows have enough blocks (b 4 × d 8192); with
// and without document ids, initial state and d_final_state. Rows of at least 2^13
// channels in all (b·d) are walked whole, forward and for the backward's checkpoints,
// when a group is a multiple of 64 channels and B, C come in packs: n 16, 32 and 64,
// one group, 2 and 8, lengths not a multiple of the 32-token slots.
const Case kCases[] = {
    {1, 1, 1, 1, 1, false, false, false, false, false, false, false},
    {2, 13, 37, 5, 1, true, true, true, true, true, false, true},
    {2, 13, 9, 5, 3, true, true, true, true, true, true, true},
    {1, 150, 70, 16, 2, true, true, true, true, true, true, true},
    {2, 70, 130, 16, 1, false, false, false, false, false, false, false},
    {1, 67, 64, 16, 64, true, true, true, true, false, true, false},
    {2, 0, 8, 4, 2, true, true, true, true, true, false, true},
    {1, 40, 40, 20, 4, true, true, true, true, true, true, true},
    {1, 33, 33, 40, 1, true, false, true, false, true, false, true},
    {3, 1, 24, 16, 1, true, true, true, true, true, false, true},
    {2, 300, 256, 16, 1, true, true, true, true, true, true, true},
    {1, 200, 200, 16, 2, true, true, true, false, false, false, true},
    {2, 150, 48, 20, 3, true, true, true, true, true, true, true},
    {1, 140, 40, 40, 2, true, true, true, true, true, true, false},
    {1, 600, 64, 16, 1, true, true, true, true, true, true, true},
    {2, 530, 32, 32, 1, true, false, true, false, false, true, true},
    {1, 100, 16, 64, 1, true, true, true, true, true, false, true},
    {64, 8200, 1, 16, 1, true, true, true, true, true, true, true},
    {32, 8200, 3, 64, 3, true, true, false, true, true, true, true},
    {32, 8200, 33, 32, 1, true, true, true, true, true, true, true},
    {2, 140, 128, 16, 2, true, true, true, true, true, true, true},
    {2, 100, 64, 32, 1, true, true, true, true, true, false, true},
    {2, 200, 128, 16, 1, false, true, false, true, false, false, false},
    {1, 90, 64, 64, 2, true, true, true, true, true, true, true},
    {4, 150, 8192, 16, 1, true, true, true, true, true, true, true},
    {2, 140, 4096, 64, 2, true, true, true, true, true, true, true},
    {1, 100, 8192, 32, 8, true, false, true, false, false, true, true},
};

struct Scan {
  Input u, delta, A, B, C, D, z, bias, init, dy, dfinal;
  Tensor seq, seq_gpu;
};

// Inputs like the CPU tests': without softplus Δ = delta + bias stays positive; with
// it a few values lie past softplus's linear threshold (20). A, D, delta_bias and the
// states are f32.
Scan make(const Case& k, DType at) {
  Scan s;
  s.u = input({k.b, k.l, k.d}, at);
  Tensor delta = k.softplus ? mt::testing::uniform({k.b, k.l, k.d}, -3.0, 1.0)
                            : mt::testing::uniform({k.b, k.l, k.d}, 0.05, 1.0);
  if (k.softplus)
    for (int64_t e = 7; e < delta.numel(); e += 101) delta.data<double>()[e] = 20.5 + 0.01 * double(e % 13);
  s.delta = mt::testing::input_from(delta, at);
  s.A = mt::testing::input_from(mt::testing::uniform({k.d, k.n}, -2.0, -0.3), DType::f32);
  s.B = input({k.b, k.l, k.g, k.n}, at);
  s.C = input({k.b, k.l, k.g, k.n}, at);
  if (k.D) s.D = input({k.d}, DType::f32);
  if (k.z) s.z = input({k.b, k.l, k.d}, at);
  if (k.bias)
    s.bias = k.softplus ? input({k.d}, DType::f32, 0.5) : mt::testing::input_from(mt::testing::uniform({k.d}, 0.0, 0.3), DType::f32);
  if (k.init) s.init = input({k.b, k.d, k.n}, DType::f32);
  s.dy = input({k.b, k.l, k.d}, at);
  if (k.dfinal) s.dfinal = input({k.b, k.d, k.n}, DType::f32);
  if (k.seq) {
    // Rows past 512 tokens get longer documents, so that some chunks carry the state
    // entering them and others start a document.
    s.seq = random_doc_ids(k.b, k.l, k.l > 512 ? 97 : 11);
    if (k.l > 4096)  // documents also start every 640th token: on span and chunk boundaries
      for (int64_t i = 0; i < k.b; ++i)
        for (int64_t t = 640; t < k.l; ++t) s.seq.data<int32_t>()[i * k.l + t] += int32_t(t / 640);
    s.seq_gpu = s.seq.to(kGpu);
  }
  return s;
}

// On the GPU activations have dtype `at` and the rest f32; on the CPU everything has `dt`.
struct Fwd {
  Tensor y, fin;
};
Fwd forward(const Scan& s, const Case& k, Tensor Input::*form, DType at, Device dev) {
  const bool gpu = dev.is_cuda();
  const DType st = gpu ? DType::f32 : at;
  Fwd f{poisoned({k.b, k.l, k.d}, at, dev), poisoned({k.b, k.d, k.n}, st, dev)};
  mt::selective_scan_forward(s.u.*form, s.delta.*form, s.A.*form, s.B.*form, s.C.*form, opt(s.D, form),
                             opt(s.z, form), opt(s.bias, form), opt(s.init, form), gpu ? s.seq_gpu : s.seq, f.y, f.fin,
                             {k.softplus});
  return f;
}

struct Bwd {
  Tensor du, ddelta, dA, dB, dC, dD, dz, dbias, dinit;
};
Bwd backward(const Scan& s, const Case& k, Tensor Input::*form, DType at, Device dev) {
  const bool gpu = dev.is_cuda();
  const DType pt = gpu ? DType::f32 : at;
  Bwd g{poisoned({k.b, k.l, k.d}, at, dev),
        poisoned({k.b, k.l, k.d}, at, dev),
        poisoned({k.d, k.n}, pt, dev),
        poisoned({k.b, k.l, k.g, k.n}, at, dev),
        poisoned({k.b, k.l, k.g, k.n}, at, dev),
        k.D ? poisoned({k.d}, pt, dev) : Tensor(),
        k.z ? poisoned({k.b, k.l, k.d}, at, dev) : Tensor(),
        k.bias ? poisoned({k.d}, pt, dev) : Tensor(),
        poisoned({k.b, k.d, k.n}, pt, dev)};
  mt::selective_scan_backward(s.dy.*form, opt(s.dfinal, form), s.u.*form, s.delta.*form, s.A.*form, s.B.*form,
                              s.C.*form, opt(s.D, form), opt(s.z, form), opt(s.bias, form), opt(s.init, form),
                              gpu ? s.seq_gpu : s.seq, g.du, g.ddelta, g.dA, g.dB, g.dC, g.dD, g.dz, g.dbias, g.dinit,
                              {k.softplus});
  return g;
}

bool same_grads(const Bwd& a, const Bwd& b) {
  return same_bits(a.du, b.du) && same_bits(a.ddelta, b.ddelta) && same_bits(a.dA, b.dA) && same_bits(a.dB, b.dB) &&
         same_bits(a.dC, b.dC) && same_bits(a.dD, b.dD) && same_bits(a.dz, b.dz) && same_bits(a.dbias, b.dbias) &&
         same_bits(a.dinit, b.dinit);
}

void check_grads(const Bwd& gpu, const Bwd& b32, const Bwd& b64, const Case& k, const std::string& what) {
  check_cuda(gpu.du, b32.du, b64.du, what + " du");
  check_cuda(gpu.ddelta, b32.ddelta, b64.ddelta, what + " ddelta");
  check_cuda(gpu.dA, b32.dA, b64.dA, what + " dA");
  check_cuda(gpu.dB, b32.dB, b64.dB, what + " dB");
  check_cuda(gpu.dC, b32.dC, b64.dC, what + " dC");
  if (k.D) check_cuda(gpu.dD, b32.dD, b64.dD, what + " dD");
  if (k.z) check_cuda(gpu.dz, b32.dz, b64.dz, what + " dz");
  if (k.bias) check_cuda(gpu.dbias, b32.dbias, b64.dbias, what + " ddelta_bias");
  check_cuda(gpu.dinit, b32.dinit, b64.dinit, what + " d_initial_state");
}

// Forward and backward of one case against the CPU op, and each run twice for the bits.
void expect_case_within_rule(const Case& k, DType at) {
  const std::string what = k.str() + " " + mt::dtype_name(at);
  Scan s = make(k, at);
  Fwd r64 = forward(s, k, &Input::f64, DType::f64, Device::cpu());
  Fwd r32 = forward(s, k, &Input::f32, DType::f32, Device::cpu());
  Fwd g1 = forward(s, k, &Input::dev, at, kGpu), g2 = forward(s, k, &Input::dev, at, kGpu);
  check_cuda(g1.y, r32.y, r64.y, what + " y");
  check_cuda(g1.fin, r32.fin, r64.fin, what + " final_state");
  EXPECT_TRUE(same_bits(g1.y, g2.y) && same_bits(g1.fin, g2.fin)) << what << ": two forward runs differ";

  Bwd b64 = backward(s, k, &Input::f64, DType::f64, Device::cpu());
  Bwd b32 = backward(s, k, &Input::f32, DType::f32, Device::cpu());
  Bwd h1 = backward(s, k, &Input::dev, at, kGpu), h2 = backward(s, k, &Input::dev, at, kGpu);
  check_grads(h1, b32, b64, k, what);
  EXPECT_TRUE(same_grads(h1, h2)) << what << ": two backward runs differ";
}
}  // namespace

TEST(CudaSelectiveScan, MatchesCpuWithinRule) {
  SKIP_WITHOUT_GPU();
  for (DType at : {DType::bf16, DType::f32})
    for (const Case& k : kCases) expect_case_within_rule(k, at);
}

// Rows walked whole (the forward's walk, the backward's checkpoint walk and staged
// blocks) at the smallest size that takes them, n 16 and 32, with documents: small
// enough for compute-sanitizer (scripts/gpu_check.sh, SANITIZE=1).
TEST(CudaSelectiveScan, SmallWalkedCase) {
  SKIP_WITHOUT_GPU();
  expect_case_within_rule({1, 70, 8192, 16, 1, true, true, true, true, true, true, true}, DType::bf16);
  expect_case_within_rule({1, 40, 8192, 32, 8, true, false, true, false, false, true, true}, DType::bf16);
}

// Decoding token by token from the initial state: each output and the state within
// the rule of the CPU steps, and the last state within the rule of the forward's.
TEST(CudaSelectiveScan, StepsContinueTheForward) {
  SKIP_WITHOUT_GPU();
  for (DType at : {DType::bf16, DType::f32})
    for (int64_t n : {int64_t(16), int64_t(5), int64_t(33)}) {
      const Case k{3, 9, 37, n, 1, true, true, true, true, true, false, false};
      const std::string what = k.str() + " " + mt::dtype_name(at);
      Scan s = make(k, at);
      Tensor st64 = s.init.f64.clone(), st32 = s.init.f32.clone(), st = s.init.dev.clone();
      auto token = [](const Input& in, Tensor Input::*form, int64_t t) {
        return in.dev.defined() ? (in.*form).select(1, t).contiguous() : Tensor();
      };
      for (int64_t t = 0; t < k.l; ++t) {
        Tensor y64 = Tensor::empty({k.b, k.d}, DType::f64), y32 = Tensor::empty({k.b, k.d}, DType::f32);
        Tensor y = poisoned({k.b, k.d}, at, kGpu);
        mt::selective_scan_step(token(s.u, &Input::f64, t), token(s.delta, &Input::f64, t), s.A.f64,
                                token(s.B, &Input::f64, t), token(s.C, &Input::f64, t), s.D.f64,
                                token(s.z, &Input::f64, t), s.bias.f64, st64, y64, {k.softplus});
        mt::selective_scan_step(token(s.u, &Input::f32, t), token(s.delta, &Input::f32, t), s.A.f32,
                                token(s.B, &Input::f32, t), token(s.C, &Input::f32, t), s.D.f32,
                                token(s.z, &Input::f32, t), s.bias.f32, st32, y32, {k.softplus});
        mt::selective_scan_step(token(s.u, &Input::dev, t), token(s.delta, &Input::dev, t), s.A.dev,
                                token(s.B, &Input::dev, t), token(s.C, &Input::dev, t), s.D.dev,
                                token(s.z, &Input::dev, t), s.bias.dev, st, y, {k.softplus});
        check_cuda(y, y32, y64, what + " step " + std::to_string(t));
      }
      check_cuda(st, st32, st64, what + " state after the steps");
      Fwd full = forward(s, k, &Input::dev, at, kGpu);
      Fwd r64 = forward(s, k, &Input::f64, DType::f64, Device::cpu());
      check_cuda(st, st32, r64.fin, what + " state against the forward's final_state");
      check_cuda(full.fin, st32, r64.fin, what + " forward final_state");
    }
}

// One row of 512K tokens × 4104 channels: offsets past 2^31 elements. Groups of 8
// channels; the first and last groups (every token) against the CPU op on them.
TEST(CudaSelectiveScan, HalfMillionTokenRow) {
  SKIP_WITHOUT_GPU();
  const int64_t l = 524293, d = 4104, n = 4, g = d / 8;
  ASSERT_GT(l * d, int64_t(1) << 31);
  mt::Generator gen(mt::testing::fresh_seed());
  auto big = [&](const Shape& s) { return Tensor::randn(s, DType::bf16, kGpu, &gen); };
  Tensor u = big({1, l, d}), z = big({1, l, d}), dy = big({1, l, d}), B = big({1, l, g, n}), C = big({1, l, g, n});
  Tensor delta = Tensor::rand({1, l, d}, DType::bf16, kGpu, &gen);  // in [0, 1): softplus of it below
  Input A = mt::testing::input_from(mt::testing::uniform({d, n}, -2.0, -0.3), DType::f32), D = input({d}, DType::f32);
  Input bias = input({d}, DType::f32, 0.5);
  const mt::SelectiveScanOptions o{true};
  Tensor y = poisoned({1, l, d}, DType::bf16, kGpu), fin = poisoned({1, d, n}, DType::f32, kGpu), none;
  mt::selective_scan_forward(u, delta, A.dev, B, C, D.dev, z, bias.dev, none, none, y, fin, o);
  Tensor du = poisoned({1, l, d}, DType::bf16, kGpu), ddelta = poisoned({1, l, d}, DType::bf16, kGpu);
  Tensor dz = poisoned({1, l, d}, DType::bf16, kGpu), dB = poisoned({1, l, g, n}, DType::bf16, kGpu);
  Tensor dC = poisoned({1, l, g, n}, DType::bf16, kGpu), dA = poisoned({d, n}, DType::f32, kGpu);
  Tensor dD = poisoned({d}, DType::f32, kGpu), dbias = poisoned({d}, DType::f32, kGpu);
  mt::selective_scan_backward(dy, none, u, delta, A.dev, B, C, D.dev, z, bias.dev, none, none, du, ddelta, dA, dB, dC,
                              dD, dz, dbias, none, o);
  for (int64_t gr : {int64_t(0), g - 1}) {
    const int64_t c0 = gr * 8;
    const std::string what = "group " + std::to_string(gr);
    auto chans = [&](const Tensor& t) { return t.narrow(-1, c0, 8).contiguous(); };
    auto group = [&](const Tensor& t) { return t.narrow(2, gr, 1).contiguous(); };
    auto host = [&](const Tensor& t, DType dt) { return t.to(Device::cpu()).to(dt); };
    struct Ref {
      Tensor y, fin, du, ddelta, dA, dB, dC, dD, dz, dbias;
    };
    auto ref = [&](DType dt) {
      Ref r{Tensor::empty({1, l, 8}, dt), Tensor::empty({1, 8, n}, dt), Tensor::empty({1, l, 8}, dt),
            Tensor::empty({1, l, 8}, dt), Tensor::empty({8, n}, dt),     Tensor::empty({1, l, 1, n}, dt),
            Tensor::empty({1, l, 1, n}, dt), Tensor::empty({8}, dt),     Tensor::empty({1, l, 8}, dt),
            Tensor::empty({8}, dt)};
      Tensor uh = host(chans(u), dt), dh = host(chans(delta), dt), zh = host(chans(z), dt), gh = host(chans(dy), dt);
      Tensor Bh = host(group(B), dt), Ch = host(group(C), dt);
      Tensor Ah = A.f64.narrow(0, c0, 8).contiguous().to(dt), Dh = D.f64.narrow(0, c0, 8).contiguous().to(dt);
      Tensor bh = bias.f64.narrow(0, c0, 8).contiguous().to(dt);
      mt::selective_scan_forward(uh, dh, Ah, Bh, Ch, Dh, zh, bh, none, none, r.y, r.fin, o);
      mt::selective_scan_backward(gh, none, uh, dh, Ah, Bh, Ch, Dh, zh, bh, none, none, r.du, r.ddelta, r.dA, r.dB,
                                  r.dC, r.dD, r.dz, r.dbias, none, o);
      return r;
    };
    Ref r64 = ref(DType::f64), r32 = ref(DType::f32);
    check_cuda(chans(y), r32.y, r64.y, what + " y");
    check_cuda(fin.narrow(1, c0, 8).contiguous(), r32.fin, r64.fin, what + " final_state");
    check_cuda(chans(du), r32.du, r64.du, what + " du");
    check_cuda(chans(ddelta), r32.ddelta, r64.ddelta, what + " ddelta");
    check_cuda(chans(dz), r32.dz, r64.dz, what + " dz");
    check_cuda(group(dB), r32.dB, r64.dB, what + " dB");
    check_cuda(group(dC), r32.dC, r64.dC, what + " dC");
    check_cuda(dA.narrow(0, c0, 8).contiguous(), r32.dA, r64.dA, what + " dA");
    check_cuda(dD.narrow(0, c0, 8).contiguous(), r32.dD, r64.dD, what + " dD");
    check_cuda(dbias.narrow(0, c0, 8).contiguous(), r32.dbias, r64.dbias, what + " ddelta_bias");
  }
}

TEST(CudaSelectiveScan, RejectsBadDtypesAndSizes) {
  SKIP_WITHOUT_GPU();
  using TE = mt::TypeError;
  const int64_t b = 2, l = 5, d = 8, n = 4, g = 2;
  auto act = [&](const Shape& s) { return Tensor::zeros(s, DType::bf16, kGpu); };
  Tensor u = act({b, l, d}), delta = act({b, l, d}), B = act({b, l, g, n}), C = act({b, l, g, n}), y = act({b, l, d});
  Tensor A = Tensor::zeros({d, n}, DType::f32, kGpu), none;
  Tensor fin = Tensor::zeros({b, d, n}, DType::f32, kGpu);
  auto fwd = [&](const Tensor& uu, const Tensor& AA, const Tensor& D, const Tensor& init, const Tensor& f) {
    Tensor yy = y, ff = f;
    mt::selective_scan_forward(uu, delta, AA, B, C, D, none, none, init, none, yy, ff, {});
  };
  fwd(u, A, none, none, fin);  // the valid call
  Tensor u64 = Tensor::zeros({b, l, d}, DType::f64, kGpu);
  expect_error<TE>([&] { fwd(u64, A, none, none, fin); }, "'u'", "bf16 or f32 on CUDA");
  expect_error<TE>([&] { fwd(u, A.to(DType::bf16), none, none, fin); }, "'A'", "f32");
  expect_error<TE>([&] { fwd(u, A, Tensor::zeros({d}, DType::bf16, kGpu), none, fin); }, "'D'", "f32");
  expect_error<TE>([&] { fwd(u, A, none, Tensor::zeros({b, d, n}, DType::bf16, kGpu), fin); }, "'initial_state'",
                   "f32");
  expect_error<TE>([&] { fwd(u, A, none, none, fin.to(DType::bf16)); }, "'final_state'", "f32");
  expect_error<TE>([&] { fwd(u, A.to(Device::cpu()), none, none, fin); }, "'A'", "cuda");
  Tensor A65 = Tensor::zeros({d, 65}, DType::f32, kGpu);
  Tensor B65 = act({b, l, g, 65}), C65 = act({b, l, g, 65}), fin65 = Tensor::zeros({b, d, 65}, DType::f32, kGpu);
  expect_error<mt::ValueError>(
      [&] { mt::selective_scan_forward(u, delta, A65, B65, C65, none, none, none, none, none, y, fin65, {}); }, "'A'",
      "above 64");
  // Backward: dA f32, dB like u.
  Tensor du = act({b, l, d}), dd = act({b, l, d}), dB = act({b, l, g, n}), dC = act({b, l, g, n});
  Tensor dA = Tensor::zeros({d, n}, DType::f32, kGpu);
  mt::selective_scan_backward(y, none, u, delta, A, B, C, none, none, none, none, none, du, dd, dA, dB, dC, none, none,
                              none, none, {});
  Tensor dA_bf16 = dA.to(DType::bf16), dB32 = dB.to(DType::f32);
  expect_error<TE>(
      [&] {
        mt::selective_scan_backward(y, none, u, delta, A, B, C, none, none, none, none, none, du, dd, dA_bf16, dB, dC,
                                    none, none, none, none, {});
      },
      "'dA'", "f32");
  expect_error<TE>(
      [&] {
        mt::selective_scan_backward(y, none, u, delta, A, B, C, none, none, none, none, none, du, dd, dA, dB32, dC,
                                    none, none, none, none, {});
      },
      "'dB'");
}
