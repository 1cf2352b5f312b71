// The attention family on CUDA (forward, backward, RoPE, KV-cache append, decode)
// against the CPU ops, within DESIGN.md's rule: the reference is the CPU op in f64
// on the same (bf16- or f32-rounded) inputs, and the CPU's own error is the CPU op
// in f32 rounded to the output dtype. The forward/backward tests pin the built-in
// kernels; cuDNN's engine, which keeps P and dS in bf16, has its own test against the
// rule's bf16-computation yardstick. Outputs are poisoned first; two CUDA runs must
// agree bit for bit. Skipped without a GPU.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>

#include "attention_testing.h"
#if defined(MAMBATRON_WITH_CUDA)
#include "ops/cuda/attention_cudnn.h"
#endif

namespace mt = mambatron;
using mt::Device;
using mt::DType;
using mt::Shape;
using mt::Tensor;
using mt::testing::expect_error;
using mt::testing::Input;
using mt::testing::input;
using mt::testing::check_cuda;
using mt::testing::poisoned;
using mt::testing::same_bits;

namespace {
const Device kGpu = Device::cuda(0);

// Runs a test under one attention engine, then restores the one before.
struct EngineScope {
  explicit EngineScope(mt::AttentionEngine e) : prev(mt::attention_engine()) { mt::set_attention_engine(e); }
  ~EngineScope() { mt::set_attention_engine(prev); }
  mt::AttentionEngine prev;
};


Tensor empty(const Shape& s, DType dt) { return Tensor::empty(s, dt); }

struct Config {
  int64_t b, l, hq, hkv, p;
};
std::string label(const char* op, DType dt, const Config& c, bool docs) {
  return mt::detail::cat(op, " ", mt::dtype_name(dt), " b=", c.b, " l=", c.l, " hq=", c.hq, " hkv=", c.hkv,
                         " p=", c.p, docs ? " documents" : "");
}

// Tiles of 64 queries and keys; slices of 32/64/128 output columns (p = 160 and 256
// take two); GQA ratios 1 to 8; odd sizes everywhere.
const Config kConfigs[] = {{1, 1, 1, 1, 1},     {2, 7, 4, 2, 16},   {1, 64, 2, 2, 64},  {2, 65, 4, 1, 64},
                           {1, 200, 6, 3, 128}, {2, 130, 2, 2, 96}, {1, 100, 4, 2, 160}, {1, 70, 1, 1, 256},
                           {1, 129, 3, 3, 33},  {2, 150, 8, 1, 128}, {1, 333, 2, 1, 80}};

struct AttnInputs {
  Input q, k, v;
  Tensor seq;  // CPU; seq_dev on the GPU
  Tensor seq_dev;
};
AttnInputs attn_inputs(const Config& c, DType dt, bool docs) {
  AttnInputs in{input({c.b, c.l, c.hq, c.p}, dt, 2.0), input({c.b, c.l, c.hkv, c.p}, dt),
                input({c.b, c.l, c.hkv, c.p}, dt), Tensor(), Tensor()};
  if (docs) {
    in.seq = mt::testing::attn::random_documents(c.b, c.l);
    in.seq_dev = in.seq.to(kGpu);
  }
  return in;
}

// The GPU forward against the CPU op (out and lse within the rule of the f64 reference)
// and a second GPU run (the same bits). Returns the CPU's f32 out and lse.
struct CpuForward {
  Tensor out, lse;
};
CpuForward expect_forward_within_rule(const AttnInputs& in, const Config& c, DType dt, const std::string& what) {
  const Shape os{c.b, c.l, c.hq, c.p}, ls{c.b, c.hq, c.l};
  Tensor ref = empty(os, DType::f64), lse64 = empty(ls, DType::f64);
  Tensor cpu = empty(os, DType::f32), lse32 = empty(ls, DType::f32);
  mt::attention_forward(in.q.f64, in.k.f64, in.v.f64, ref, lse64, in.seq);
  mt::attention_forward(in.q.f32, in.k.f32, in.v.f32, cpu, lse32, in.seq);
  Tensor out = poisoned(os, dt, kGpu), lse = poisoned(ls, DType::f32, kGpu);
  Tensor out2 = poisoned(os, dt, kGpu), lse2 = poisoned(ls, DType::f32, kGpu);
  mt::attention_forward(in.q.dev, in.k.dev, in.v.dev, out, lse, in.seq_dev);
  mt::attention_forward(in.q.dev, in.k.dev, in.v.dev, out2, lse2, in.seq_dev);
  check_cuda(out, cpu, ref, what + " out");
  check_cuda(lse, lse32, lse64, what + " lse");
  EXPECT_TRUE(same_bits(out, out2) && same_bits(lse, lse2)) << what << ": two forward runs differ";
  return {cpu, lse32};
}
}  // namespace

// ---------------------------------------------------------------- forward and backward
TEST(CudaAttention, ForwardMatchesCpuWithinRule) {
  SKIP_WITHOUT_GPU();
  EngineScope builtin(mt::AttentionEngine::Builtin);
  for (DType dt : {DType::bf16, DType::f32}) {
    for (const Config& c : kConfigs) {
      for (bool docs : {false, true}) {
        expect_forward_within_rule(attn_inputs(c, dt, docs), c, dt, label("attention_forward", dt, c, docs));
      }
    }
  }
}

TEST(CudaAttention, ForwardWithScaleMatchesCpu) {
  SKIP_WITHOUT_GPU();
  EngineScope builtin(mt::AttentionEngine::Builtin);
  const Config c{2, 90, 4, 2, 48};
  for (DType dt : {DType::bf16, DType::f32}) {
    const std::string what = label("attention_forward scale 0.37", dt, c, false);
    AttnInputs in = attn_inputs(c, dt, false);
    const Shape os{c.b, c.l, c.hq, c.p}, ls{c.b, c.hq, c.l};
    Tensor ref = empty(os, DType::f64), lse64 = empty(ls, DType::f64);
    Tensor cpu = empty(os, DType::f32), lse32 = empty(ls, DType::f32);
    mt::attention_forward(in.q.f64, in.k.f64, in.v.f64, ref, lse64, {}, 0.37);
    mt::attention_forward(in.q.f32, in.k.f32, in.v.f32, cpu, lse32, {}, 0.37);
    Tensor out = poisoned(os, dt, kGpu), lse = poisoned(ls, DType::f32, kGpu);
    mt::attention_forward(in.q.dev, in.k.dev, in.v.dev, out, lse, {}, 0.37);
    check_cuda(out, cpu, ref, what + " out");
    check_cuda(lse, lse32, lse64, what + " lse");
  }
}

// The backward takes the CPU's f32 forward (out rounded to the dtype, lse in f32)
// everywhere, so only the backward itself differs.
TEST(CudaAttention, BackwardMatchesCpuWithinRule) {
  SKIP_WITHOUT_GPU();
  EngineScope builtin(mt::AttentionEngine::Builtin);
  for (DType dt : {DType::bf16, DType::f32}) {
    for (const Config& c : kConfigs) {
      for (bool docs : {false, true}) {
        const std::string what = label("attention_backward", dt, c, docs);
        AttnInputs in = attn_inputs(c, dt, docs);
        const Shape qs{c.b, c.l, c.hq, c.p}, ks{c.b, c.l, c.hkv, c.p}, ls{c.b, c.hq, c.l};
        Tensor o32 = empty(qs, DType::f32), lse32 = empty(ls, DType::f32);
        mt::attention_forward(in.q.f32, in.k.f32, in.v.f32, o32, lse32, in.seq);
        Input out = mt::testing::input_from(o32, dt), dout = input(qs, dt);
        Tensor lse64 = lse32.to(DType::f64), lse_dev = lse32.to(kGpu);

        Tensor dq64 = empty(qs, DType::f64), dk64 = empty(ks, DType::f64), dv64 = empty(ks, DType::f64);
        Tensor dq32 = empty(qs, DType::f32), dk32 = empty(ks, DType::f32), dv32 = empty(ks, DType::f32);
        mt::attention_backward(dout.f64, in.q.f64, in.k.f64, in.v.f64, out.f64, lse64, dq64, dk64, dv64, in.seq);
        mt::attention_backward(dout.f32, in.q.f32, in.k.f32, in.v.f32, out.f32, lse32, dq32, dk32, dv32, in.seq);
        Tensor dq = poisoned(qs, dt, kGpu), dk = poisoned(ks, dt, kGpu), dv = poisoned(ks, dt, kGpu);
        Tensor dq2 = poisoned(qs, dt, kGpu), dk2 = poisoned(ks, dt, kGpu), dv2 = poisoned(ks, dt, kGpu);
        mt::attention_backward(dout.dev, in.q.dev, in.k.dev, in.v.dev, out.dev, lse_dev, dq, dk, dv, in.seq_dev);
        mt::attention_backward(dout.dev, in.q.dev, in.k.dev, in.v.dev, out.dev, lse_dev, dq2, dk2, dv2,
                               in.seq_dev);
        check_cuda(dq, dq32, dq64, what + " dq");
        check_cuda(dk, dk32, dk64, what + " dk");
        check_cuda(dv, dv32, dv64, what + " dv");
        EXPECT_TRUE(same_bits(dq, dq2) && same_bits(dk, dk2) && same_bits(dv, dv2)) << what << ": two runs differ";
      }
    }
  }
}

// The tensor-core path (bf16, p 64 and 128): forward and backward against the CPU
// within the rule, GQA ratios 1, 4 and 8, documents, lengths that are not multiples
// of the 64- and 128-row tiles, poisoned outputs, two runs bit-identical.
namespace {

// The bf16 cases of the built-in tensor-core kernels, documents included.
void expect_bf16_cases_within_rule(const char* name) {
  const DType dt = DType::bf16;
  const Config configs[] = {{1, 1, 2, 1, 64},     {2, 77, 4, 1, 64},   {1, 300, 8, 1, 128}, {2, 77, 4, 4, 128},
                            {1, 300, 8, 2, 64},   {1, 300, 16, 2, 128}, {2, 129, 8, 1, 64}, {1, 1, 4, 4, 128},
                            {1, 520, 4, 1, 128},  {2, 256, 4, 4, 64}};
  for (const Config& c : configs) {
    for (bool docs : {false, true}) {
      const std::string what = label(name, dt, c, docs);
      AttnInputs in = attn_inputs(c, dt, docs);
      const Shape qs{c.b, c.l, c.hq, c.p}, ks{c.b, c.l, c.hkv, c.p};
      const CpuForward f = expect_forward_within_rule(in, c, dt, what);
      const Tensor &o32 = f.out, &lse32 = f.lse;

      // The backward from the CPU's f32 forward on every side.
      Input o = mt::testing::input_from(o32, dt), dout = input(qs, dt);
      Tensor dq64 = empty(qs, DType::f64), dk64 = empty(ks, DType::f64), dv64 = empty(ks, DType::f64);
      Tensor dq32 = empty(qs, DType::f32), dk32 = empty(ks, DType::f32), dv32 = empty(ks, DType::f32);
      mt::attention_backward(dout.f64, in.q.f64, in.k.f64, in.v.f64, o.f64, lse32.to(DType::f64), dq64, dk64,
                             dv64, in.seq);
      mt::attention_backward(dout.f32, in.q.f32, in.k.f32, in.v.f32, o.f32, lse32, dq32, dk32, dv32, in.seq);
      Tensor lse_dev = lse32.to(kGpu);
      Tensor dq = poisoned(qs, dt, kGpu), dk = poisoned(ks, dt, kGpu), dv = poisoned(ks, dt, kGpu);
      Tensor dq2 = poisoned(qs, dt, kGpu), dk2 = poisoned(ks, dt, kGpu), dv2 = poisoned(ks, dt, kGpu);
      mt::attention_backward(dout.dev, in.q.dev, in.k.dev, in.v.dev, o.dev, lse_dev, dq, dk, dv, in.seq_dev);
      mt::attention_backward(dout.dev, in.q.dev, in.k.dev, in.v.dev, o.dev, lse_dev, dq2, dk2, dv2, in.seq_dev);
      // With one token, dS = P·(dout·v − D) cancels exactly and dq = dk = 0: the
      // floor is the size of the cancelling terms times k (or q) and the scale.
      using mt::testing::attn::max_abs;
      const double floor = c.l > 1 ? 0.0
                                   : max_abs(dout.f64) * max_abs(in.v.f64) * c.p *
                                         std::max(max_abs(in.k.f64), max_abs(in.q.f64)) / std::sqrt(double(c.p));
      check_cuda(dq, dq32, dq64, what + " dq", floor);
      check_cuda(dk, dk32, dk64, what + " dk", floor);
      check_cuda(dv, dv32, dv64, what + " dv");
      EXPECT_TRUE(same_bits(dq, dq2) && same_bits(dk, dk2) && same_bits(dv, dv2)) << what << ": two runs differ";
    }
  }
}
}  // namespace

TEST(CudaAttention, TensorCorePathMatchesCpuWithinRule) {
  SKIP_WITHOUT_GPU();
  EngineScope builtin(mt::AttentionEngine::Builtin);
  expect_bf16_cases_within_rule("tensor-core attention");
}

// cuDNN keeps P and dS in bf16 for its tensor-core products, so its yardstick is the
// rule's "same computation done in bf16" (bf16_attention), not the CPU op in f32.
TEST(CudaAttention, CudnnEngineMatchesCpuWithinRule) {
  SKIP_WITHOUT_GPU();
  std::string why;
  if (mt::cudnn_version(&why) == 0) GTEST_SKIP() << "cuDNN is not usable here: " << why;
  EngineScope cudnn(mt::AttentionEngine::Cudnn);
  const DType dt = DType::bf16;
  const Config configs[] = {{2, 77, 4, 1, 64},  {1, 300, 8, 1, 128}, {2, 77, 4, 4, 128}, {1, 300, 8, 2, 64},
                            {2, 129, 8, 8, 96}, {1, 520, 4, 1, 128}, {1, 64, 2, 2, 256}};
  for (const Config& c : configs) {
    const std::string what = label("cuDNN attention", dt, c, false);
    AttnInputs in = attn_inputs(c, dt, false);
    const Shape qs{c.b, c.l, c.hq, c.p}, ks{c.b, c.l, c.hkv, c.p}, ls{c.b, c.hq, c.l};
    Input dout = input(qs, dt);
    const auto bf = mt::testing::attn::bf16_attention(in.q.f64, in.k.f64, in.v.f64, dout.f64,
                                                      1.0 / std::sqrt(double(c.p)));
    Tensor out64 = empty(qs, DType::f64), lse64 = empty(ls, DType::f64);
    mt::attention_forward(in.q.f64, in.k.f64, in.v.f64, out64, lse64);
    Tensor out = poisoned(qs, dt, kGpu), lse = poisoned(ls, DType::f32, kGpu);
    Tensor out2 = poisoned(qs, dt, kGpu), lse2 = poisoned(ls, DType::f32, kGpu);
    mt::attention_forward(in.q.dev, in.k.dev, in.v.dev, out, lse);
    mt::attention_forward(in.q.dev, in.k.dev, in.v.dev, out2, lse2);
    mt::testing::expect_within_rule(out, bf.out, out64, (what + " out").c_str(), 1e-5);
    mt::testing::expect_within_rule(lse, bf.lse, lse64, (what + " lse").c_str(), 1e-5);
    EXPECT_TRUE(same_bits(out, out2) && same_bits(lse, lse2)) << what << ": two forward runs differ";

    // The backward from the f64 forward (its out rounded to bf16) on both sides.
    Input o = mt::testing::input_from(out64, dt);
    Tensor dq64 = empty(qs, DType::f64), dk64 = empty(ks, DType::f64), dv64 = empty(ks, DType::f64);
    mt::attention_backward(dout.f64, in.q.f64, in.k.f64, in.v.f64, o.f64, lse64, dq64, dk64, dv64);
    Tensor lse_dev = lse64.to(kGpu, DType::f32);
    Tensor dq = poisoned(qs, dt, kGpu), dk = poisoned(ks, dt, kGpu), dv = poisoned(ks, dt, kGpu);
    Tensor dq2 = poisoned(qs, dt, kGpu), dk2 = poisoned(ks, dt, kGpu), dv2 = poisoned(ks, dt, kGpu);
    mt::attention_backward(dout.dev, in.q.dev, in.k.dev, in.v.dev, o.dev, lse_dev, dq, dk, dv);
    mt::attention_backward(dout.dev, in.q.dev, in.k.dev, in.v.dev, o.dev, lse_dev, dq2, dk2, dv2);
    mt::testing::expect_within_rule(dq, bf.dq, dq64, (what + " dq").c_str(), 1e-5);
    mt::testing::expect_within_rule(dk, bf.dk, dk64, (what + " dk").c_str(), 1e-5);
    mt::testing::expect_within_rule(dv, bf.dv, dv64, (what + " dv").c_str(), 1e-5);
    EXPECT_TRUE(same_bits(dq, dq2) && same_bits(dk, dk2) && same_bits(dv, dv2)) << what << ": two runs differ";
  }
}

#if defined(MAMBATRON_WITH_CUDA)  // the workspace limit is a CUDA build's internal setting
// Where cuDNN's backward would take more workspace than its limit, it runs in groups of
// batch rows and kv heads (gradients within the rule, the same bits run to run); where
// one row of one kv head would pass the limit, cuDNN is not handed the call: the
// built-in kernels run under the auto engine, and the cudnn engine raises.
TEST(CudaAttention, CudnnBackwardKeepsItsWorkspaceUnderTheLimit) {
  SKIP_WITHOUT_GPU();
  std::string why;
  if (mt::cudnn_version(&why) == 0) GTEST_SKIP() << "cuDNN is not usable here: " << why;
  struct LimitScope {
    explicit LimitScope(int64_t bytes) : prev(mt::cuda::set_cudnn_backward_workspace_limit(bytes)) {}
    ~LimitScope() { mt::cuda::set_cudnn_backward_workspace_limit(prev); }
    int64_t prev;
  };
  const DType dt = DType::bf16;
  const Config c{2, 300, 8, 4, 64};
  const double scale = 1.0 / std::sqrt(double(c.p));
  const std::string what = label("cuDNN attention in head groups", dt, c, false);
  AttnInputs in = attn_inputs(c, dt, false);
  const Shape qs{c.b, c.l, c.hq, c.p}, ks{c.b, c.l, c.hkv, c.p}, ls{c.b, c.hq, c.l};
  Input dout = input(qs, dt);
  const auto bf = mt::testing::attn::bf16_attention(in.q.f64, in.k.f64, in.v.f64, dout.f64, scale);
  Tensor out64 = empty(qs, DType::f64), lse64 = empty(ls, DType::f64);
  mt::attention_forward(in.q.f64, in.k.f64, in.v.f64, out64, lse64);
  Input o = mt::testing::input_from(out64, dt);
  Tensor dq64 = empty(qs, DType::f64), dk64 = empty(ks, DType::f64), dv64 = empty(ks, DType::f64);
  mt::attention_backward(dout.f64, in.q.f64, in.k.f64, in.v.f64, o.f64, lse64, dq64, dk64, dv64);
  Tensor lse_dev = lse64.to(kGpu, DType::f32);
  struct Grads {
    Tensor dq, dk, dv;
  };
  auto backward = [&] {
    Grads g{poisoned(qs, dt, kGpu), poisoned(ks, dt, kGpu), poisoned(ks, dt, kGpu)};
    mt::attention_backward(dout.dev, in.q.dev, in.k.dev, in.v.dev, o.dev, lse_dev, g.dq, g.dk, g.dv);
    return g;
  };
  auto same = [](const Grads& a, const Grads& b) {
    return same_bits(a.dq, b.dq) && same_bits(a.dk, b.dk) && same_bits(a.dv, b.dv);
  };

  const int64_t full = mt::cuda::cudnn_backward_workspace(in.q.dev, in.k.dev, scale);
  ASSERT_GT(full, 0) << "cuDNN's backward takes no workspace here: nothing to group";
  // Half the workspace: one batch row of two a launch; a quarter: some kv heads of one
  // row (two or one of four) a launch.
  for (const int64_t limit_bytes : {full / 2, full / (2 * c.b)}) {
    EngineScope cudnn(mt::AttentionEngine::Cudnn);
    LimitScope limit(limit_bytes);
    const std::string at = what + " (limit " + std::to_string(limit_bytes) + " of " + std::to_string(full) + ")";
    const Grads a = backward(), b = backward();
    mt::testing::expect_within_rule(a.dq, bf.dq, dq64, (at + " dq").c_str(), 1e-5);
    mt::testing::expect_within_rule(a.dk, bf.dk, dk64, (at + " dk").c_str(), 1e-5);
    mt::testing::expect_within_rule(a.dv, bf.dv, dv64, (at + " dv").c_str(), 1e-5);
    EXPECT_TRUE(same(a, b)) << at << ": two runs differ";
  }
  LimitScope limit(full / (c.b * c.hkv) - 1);  // less than one row of one kv head
  {
    EngineScope cudnn(mt::AttentionEngine::Cudnn);
    expect_error<mt::Error>([&] { backward(); }, "workspace");
  }
  Grads builtin, chosen;
  {
    EngineScope e(mt::AttentionEngine::Builtin);
    builtin = backward();
  }
  {
    EngineScope e(mt::AttentionEngine::Auto);
    chosen = backward();
  }
  EXPECT_TRUE(same(builtin, chosen)) << what << ": auto did not fall back to the built-in kernels";
}
#endif

// One small packed case through forward and backward: quick, and small enough for
// compute-sanitizer (racecheck, memcheck).
TEST(CudaAttention, SmallPackedForwardBackward) {
  SKIP_WITHOUT_GPU();
  EngineScope builtin(mt::AttentionEngine::Builtin);
  const Config c{2, 130, 4, 2, 64};
  const DType dt = DType::bf16;
  const std::string what = label("attention small", dt, c, true);
  AttnInputs in = attn_inputs(c, dt, true);
  const Shape qs{c.b, c.l, c.hq, c.p}, ks{c.b, c.l, c.hkv, c.p}, ls{c.b, c.hq, c.l};
  Tensor ref = empty(qs, DType::f64), lse64 = empty(ls, DType::f64);
  Tensor o32 = empty(qs, DType::f32), lse32 = empty(ls, DType::f32);
  mt::attention_forward(in.q.f64, in.k.f64, in.v.f64, ref, lse64, in.seq);
  mt::attention_forward(in.q.f32, in.k.f32, in.v.f32, o32, lse32, in.seq);
  Tensor out = poisoned(qs, dt, kGpu), lse = poisoned(ls, DType::f32, kGpu);
  mt::attention_forward(in.q.dev, in.k.dev, in.v.dev, out, lse, in.seq_dev);
  check_cuda(out, o32, ref, what + " out");
  check_cuda(lse, lse32, lse64, what + " lse");

  Input o = mt::testing::input_from(o32, dt), dout = input(qs, dt);
  Tensor dq64 = empty(qs, DType::f64), dk64 = empty(ks, DType::f64), dv64 = empty(ks, DType::f64);
  Tensor dq32 = empty(qs, DType::f32), dk32 = empty(ks, DType::f32), dv32 = empty(ks, DType::f32);
  mt::attention_backward(dout.f64, in.q.f64, in.k.f64, in.v.f64, o.f64, lse32.to(DType::f64), dq64, dk64, dv64,
                         in.seq);
  mt::attention_backward(dout.f32, in.q.f32, in.k.f32, in.v.f32, o.f32, lse32, dq32, dk32, dv32, in.seq);
  Tensor dq = poisoned(qs, dt, kGpu), dk = poisoned(ks, dt, kGpu), dv = poisoned(ks, dt, kGpu);
  mt::attention_backward(dout.dev, in.q.dev, in.k.dev, in.v.dev, o.dev, lse32.to(kGpu), dq, dk, dv, in.seq_dev);
  check_cuda(dq, dq32, dq64, what + " dq");
  check_cuda(dk, dk32, dk64, what + " dk");
  check_cuda(dv, dv32, dv64, what + " dv");
}

TEST(CudaAttention, RejectsBadDtypesAndDevices) {
  SKIP_WITHOUT_GPU();
  using mt::TypeError;
  const Shape qs{2, 5, 4, 8}, ks{2, 5, 2, 8}, ls{2, 4, 5};
  Tensor q = Tensor::zeros(qs, DType::bf16, kGpu), k = Tensor::zeros(ks, DType::bf16, kGpu);
  Tensor v = Tensor::zeros(ks, DType::bf16, kGpu), out = Tensor::zeros(qs, DType::bf16, kGpu);
  Tensor lse = Tensor::zeros(ls, DType::f32, kGpu);
  expect_error<TypeError>([&] {
    Tensor o = out.to(DType::f64), s = lse;
    mt::attention_forward(q.to(DType::f64), k.to(DType::f64), v.to(DType::f64), o, s);
  }, {"attention_forward", "'q'", "bf16 or f32 on CUDA"});
  expect_error<TypeError>([&] {
    Tensor s = lse.to(DType::bf16);
    mt::attention_forward(q, k, v, out, s);
  }, {"attention_forward", "'lse'", "f32"});
  expect_error<TypeError>([&] { mt::attention_forward(q, k.to(DType::f32), v, out, lse); }, {"'k'", "bf16"});
  expect_error<TypeError>([&] { mt::attention_forward(q, k, v, out, lse, Tensor::zeros({2, 5}, DType::i32)); },
                          {"'seq_idx'", "cpu"});
  expect_error<TypeError>([&] {
    Tensor dq = out, dk = k.clone(), dv = v.clone();
    mt::attention_backward(out, q, k, v, out, lse.to(DType::bf16), dq, dk, dv);
  }, {"attention_backward", "'lse'", "f32"});
  expect_error<TypeError>([&] {
    Tensor o = out.clone();
    mt::rope_forward(q.to(DType::f64), o);
  }, {"rope_forward", "'x'", "bf16 or f32 on CUDA"});
  Tensor kc = Tensor::zeros({2, 6, 2, 8}, DType::bf16, kGpu), vc = kc.clone();
  Tensor lens = Tensor::zeros({2}, DType::i32);
  expect_error<TypeError>([&] { mt::kv_cache_append(k.narrow(1, 0, 1).reshape({2, 2, 8}).clone(),
                                                    v.narrow(1, 0, 1).reshape({2, 2, 8}).clone(), kc, vc, lens); },
                          {"kv_cache_append", "'cache_lens'", "cpu"});
  Tensor qd = poisoned({2, 4, 8}, DType::bf16, kGpu);
  expect_error<TypeError>([&] { mt::attention_decode(qd, kc, vc.to(DType::f32), lens.to(kGpu), qd); },
                          {"attention_decode", "'v_cache'"});
}

// ---------------------------------------------------------------- RoPE
TEST(CudaRope, MatchesCpuWithinRule) {
  SKIP_WITHOUT_GPU();
  struct Case {
    Shape s;
    double fraction;
    bool positions;
  };
  const Case cases[] = {{{1, 1, 1, 2}, 1.0, false},   {{2, 7, 3, 24}, 0.5, true},  {{2, 33, 4, 64}, 1.0, false},
                        {{1, 300, 8, 128}, 1.0, true}, {{3, 5, 2, 10}, 0.4, false}, {{2, 9, 3, 16}, 0.0, true}};
  for (DType dt : {DType::bf16, DType::f32}) {
    for (const Case& c : cases) {
      const std::string what = mt::detail::cat("rope ", mt::dtype_name(dt), " ", mt::shape_str(c.s), " fraction ",
                                               c.fraction, c.positions ? " positions" : "");
      const mt::RopeOptions opt{c.fraction, 10000.0};
      Tensor pos;
      if (c.positions) {
        pos = Tensor::empty({c.s[0], c.s[1]}, DType::i32);
        std::mt19937_64 rng(mt::testing::fresh_seed());
        for (int64_t i = 0; i < pos.numel(); ++i) pos.data<int32_t>()[i] = int32_t(rng() % 100000);
      }
      Tensor pos_dev = c.positions ? pos.to(kGpu) : Tensor();
      Input x = input(c.s, dt);
      for (bool inverse : {false, true}) {
        const std::string w = what + (inverse ? " backward" : " forward");
        auto run = [&](const Tensor& in, Tensor& out, const Tensor& ps) {
          if (inverse) mt::rope_backward(in, out, ps, opt);
          else mt::rope_forward(in, out, ps, opt);
        };
        Tensor ref = empty(c.s, DType::f64), cpu = empty(c.s, DType::f32);
        run(x.f64, ref, pos);
        run(x.f32, cpu, pos);
        Tensor out = poisoned(c.s, dt, kGpu), out2 = poisoned(c.s, dt, kGpu);
        run(x.dev, out, pos_dev);
        run(x.dev, out2, pos_dev);
        check_cuda(out, cpu, ref, w);
        EXPECT_TRUE(same_bits(out, out2)) << w << ": two runs differ";
        Tensor in_place = x.dev.clone();
        run(in_place, in_place, pos_dev);
        EXPECT_TRUE(same_bits(in_place, out)) << w << ": in place differs";
      }
    }
  }
}

// ---------------------------------------------------------------- KV cache and decode
TEST(CudaKvCache, AppendWritesAtEachLengthAndRefusesAFullCache) {
  SKIP_WITHOUT_GPU();
  for (DType dt : {DType::bf16, DType::f32}) {
    const int64_t b = 3, max_len = 7, hkv = 2, p = 12;
    Tensor kc = mt::testing::randn({b, max_len, hkv, p}, DType::f32).to(kGpu, dt);
    Tensor vc = mt::testing::randn({b, max_len, hkv, p}, DType::f32).to(kGpu, dt);
    Tensor kc_cpu = kc.to(Device::cpu(), DType::f32).clone(), vc_cpu = vc.to(Device::cpu(), DType::f32).clone();
    Tensor lens_cpu = Tensor::empty({b}, DType::i32);
    const int32_t start[] = {0, 3, 6};
    std::memcpy(lens_cpu.data<int32_t>(), start, sizeof(start));
    Tensor lens = lens_cpu.clone().to(kGpu);
    Input k = input({b, hkv, p}, dt), v = input({b, hkv, p}, dt);
    mt::kv_cache_append(k.dev, v.dev, kc, vc, lens);
    mt::kv_cache_append(k.f32, v.f32, kc_cpu, vc_cpu, lens_cpu);
    EXPECT_TRUE(same_bits(kc.to(Device::cpu(), DType::f32), kc_cpu)) << mt::dtype_name(dt);
    EXPECT_TRUE(same_bits(vc.to(Device::cpu(), DType::f32), vc_cpu)) << mt::dtype_name(dt);
    EXPECT_EQ(mt::testing::values(lens), (std::vector<double>{1, 4, 7}));
    // Sequence 2 is now full: the next append changes nothing and names it.
    Tensor before = kc.clone();
    expect_error<mt::ValueError>([&] { mt::kv_cache_append(k.dev, v.dev, kc, vc, lens); },
                                 {"kv_cache_append", "'cache_lens'", "sequence 2", "full"});
    EXPECT_TRUE(same_bits(kc, before));
    EXPECT_EQ(mt::testing::values(lens), (std::vector<double>{1, 4, 7}));
    // Unchecked (the model's decode step): no wait, the same writes, and the full
    // sequence is left as it was instead of raising.
    mt::kv_cache_append(k.dev, v.dev, kc, vc, lens, /*check_lengths=*/false);
    const int32_t second[] = {1, 4, 7};
    std::memcpy(lens_cpu.data<int32_t>(), second, sizeof(second));
    lens_cpu.data<int32_t>()[2] = 6;  // the CPU copy appends at 6 only to compare the other rows
    Tensor kc_ref = kc_cpu.clone(), vc_ref = vc_cpu.clone();
    mt::kv_cache_append(k.f32, v.f32, kc_ref, vc_ref, lens_cpu);
    kc_ref.narrow(0, 2, 1).copy_(kc_cpu.narrow(0, 2, 1));
    vc_ref.narrow(0, 2, 1).copy_(vc_cpu.narrow(0, 2, 1));
    EXPECT_TRUE(same_bits(kc.to(Device::cpu(), DType::f32), kc_ref)) << mt::dtype_name(dt);
    EXPECT_TRUE(same_bits(vc.to(Device::cpu(), DType::f32), vc_ref)) << mt::dtype_name(dt);
    EXPECT_EQ(mt::testing::values(lens), (std::vector<double>{2, 5, 7}));
  }
}

TEST(CudaAttention, DecodeMatchesCpuWithinRule) {
  SKIP_WITHOUT_GPU();
  struct Case {
    int64_t b, max_len, hq, hkv, p;
  };
  // One split and many, lengths 1 to max_len (not a multiple of the 64-key chunk);
  // bf16 p 64 and 128 on the tensor cores (head groups of 1 to 16 in one block, 32 in
  // two); other rows of 16-byte units through the shared-memory ring (p 8, 80, 96, f32
  // 64 and 128, bf16 256, f32 100) and rows read directly (p 13, bf16 100, f32 256);
  // there, head groups of 1, 3, 4, 8, 16 (two blocks of 8 heads) and 32 (four).
  const Case cases[] = {{1, 1, 1, 1, 8},       {3, 5, 4, 2, 13},    {2, 129, 12, 4, 64}, {3, 1000, 32, 8, 128},
                        {2, 5000, 16, 1, 128}, {1, 700, 4, 4, 100}, {5, 300, 8, 8, 96},  {1, 40000, 8, 2, 64},
                        {2, 333, 32, 1, 80},   {2, 150, 8, 1, 256}, {6, 2000, 32, 8, 128}, {2, 200, 32, 1, 64},
                        {1, 70, 1, 1, 128}};
  for (DType dt : {DType::bf16, DType::f32}) {
    for (const Case& c : cases) {
      const std::string what = mt::detail::cat("attention_decode ", mt::dtype_name(dt), " b=", c.b, " max_len=",
                                               c.max_len, " hq=", c.hq, " hkv=", c.hkv, " p=", c.p);
      // Entries past each length are NaN, so reading one fails the comparison.
      Tensor lens = Tensor::empty({c.b}, DType::i32);
      std::mt19937_64 rng(mt::testing::fresh_seed());
      Tensor k = mt::testing::randn({c.b, c.max_len, c.hkv, c.p}, DType::f32).to(dt).to(DType::f32);
      Tensor v = mt::testing::randn({c.b, c.max_len, c.hkv, c.p}, DType::f32).to(dt).to(DType::f32);
      for (int64_t bi = 0; bi < c.b; ++bi) {
        const int32_t n = bi == 0 ? int32_t(c.max_len) : 1 + int32_t(rng() % c.max_len);
        lens.data<int32_t>()[bi] = n;
        for (Tensor* t : {&k, &v}) t->narrow(0, bi, 1).narrow(1, n, c.max_len - n).fill_(NAN);
      }
      Input q = input({c.b, c.hq, c.p}, dt, 2.0);
      Tensor ref = empty({c.b, c.hq, c.p}, DType::f64), cpu = empty({c.b, c.hq, c.p}, DType::f32);
      mt::attention_decode(q.f64, k.to(DType::f64), v.to(DType::f64), lens, ref);
      mt::attention_decode(q.f32, k, v, lens, cpu);
      Tensor kd = k.to(kGpu, dt), vd = v.to(kGpu, dt), ld = lens.to(kGpu);
      Tensor out = poisoned({c.b, c.hq, c.p}, dt, kGpu), out2 = poisoned({c.b, c.hq, c.p}, dt, kGpu);
      mt::attention_decode(q.dev, kd, vd, ld, out);
      mt::attention_decode(q.dev, kd, vd, ld, out2);
      check_cuda(out, cpu, ref, what);
      EXPECT_TRUE(same_bits(out, out2)) << what << ": two runs differ";
    }
  }
}

// The lengths are read on the device and clamped to [0, max_len]: an empty or negative
// length gives zeros, one past max_len attends to the whole cache.
TEST(CudaAttention, DecodeClampsLengthsOnTheDevice) {
  SKIP_WITHOUT_GPU();
  const int64_t b = 4, max_len = 70, hq = 8, hkv = 2;
  const int32_t dev_lens[] = {0, int32_t(max_len) + 9, -3, 5}, cpu_lens[] = {1, int32_t(max_len), 1, 5};
  for (DType dt : {DType::bf16, DType::f32}) {
    for (int64_t p : {64, 13}) {
      const std::string what = mt::detail::cat("attention_decode clamped lengths ", mt::dtype_name(dt), " p=", p);
      Input q = input({b, hq, p}, dt, 2.0), k = input({b, max_len, hkv, p}, dt), v = input({b, max_len, hkv, p}, dt);
      Tensor ld = Tensor::empty({b}, DType::i32), lc = Tensor::empty({b}, DType::i32);
      std::memcpy(ld.data<int32_t>(), dev_lens, sizeof(dev_lens));
      std::memcpy(lc.data<int32_t>(), cpu_lens, sizeof(cpu_lens));
      Tensor ref = empty({b, hq, p}, DType::f64), cpu = empty({b, hq, p}, DType::f32);
      mt::attention_decode(q.f64, k.f64, v.f64, lc, ref);
      mt::attention_decode(q.f32, k.f32, v.f32, lc, cpu);
      Tensor out = poisoned({b, hq, p}, dt, kGpu);
      mt::attention_decode(q.dev, k.dev, v.dev, ld.to(kGpu), out);
      const Tensor zeros = Tensor::zeros({1, hq, p}, DType::f64);
      for (int64_t bi : {0, 2})  // NaN (an unwritten row) counts as infinitely far
        EXPECT_EQ(mt::testing::max_abs_diff(out.narrow(0, bi, 1), zeros), 0.0) << what << " sequence " << bi;
      for (int64_t bi : {1, 3})
        check_cuda(out.narrow(0, bi, 1), cpu.narrow(0, bi, 1), ref.narrow(0, bi, 1),
                   mt::detail::cat(what, " sequence ", bi));
    }
  }
}

// Decoding token by token through the cache gives the forward's rows.
TEST(CudaAttention, DecodeTokenByTokenMatchesForward) {
  SKIP_WITHOUT_GPU();
  const int64_t b = 2, l = 77, hq = 8, hkv = 2, p = 64;
  const DType dt = DType::f32;
  Input q = input({b, l, hq, p}, dt), k = input({b, l, hkv, p}, dt), v = input({b, l, hkv, p}, dt);
  Tensor out = poisoned({b, l, hq, p}, dt, kGpu), lse = poisoned({b, hq, l}, DType::f32, kGpu);
  mt::attention_forward(q.dev, k.dev, v.dev, out, lse);
  Tensor kc = Tensor::zeros({b, l, hkv, p}, dt, kGpu), vc = Tensor::zeros({b, l, hkv, p}, dt, kGpu);
  Tensor lens = Tensor::zeros({b}, DType::i32, kGpu);
  Tensor step_out = poisoned({b, l, hq, p}, dt);
  for (int64_t t = 0; t < l; ++t) {
    mt::kv_cache_append(k.dev.narrow(1, t, 1).reshape({b, hkv, p}).contiguous(),
                        v.dev.narrow(1, t, 1).reshape({b, hkv, p}).contiguous(), kc, vc, lens);
    Tensor o = poisoned({b, hq, p}, dt, kGpu);
    mt::attention_decode(q.dev.narrow(1, t, 1).reshape({b, hq, p}).contiguous(), kc, vc, lens, o);
    step_out.narrow(1, t, 1).copy_(o.to(Device::cpu()).reshape({b, 1, hq, p}));
  }
  EXPECT_LE(mt::testing::max_rel_error(step_out, out.to(Device::cpu())), 1e-5);
}
