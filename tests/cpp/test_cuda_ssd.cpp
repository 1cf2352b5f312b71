// The CUDA SSD (forward, backward, decode step) against the CPU op, within
// DESIGN.md's rule: the reference is the CPU op in f64 on the same rounded inputs
// (activations rounded to bf16 or f32, A, D, dt_bias and states to f32), and the
// CPU's own error is the CPU op in f32 with the same chunk length, rounded to the
// output's dtype. Outputs are poisoned first; two CUDA runs must agree bit for bit.
// Skipped without a GPU.
#include <algorithm>
#include <cstring>
#include <optional>
#include <string>

#include "ops/cuda/ssd.h"
#include "ssd_testing.h"

namespace mt = mambatron;
using mt::Device;
using mt::DType;
using mt::Shape;
using mt::SsdOptions;
using mt::Tensor;
using namespace mt::testing;
using namespace mt::testing::ssd;

namespace {
const Device kGpu = Device::cuda(0);

// One problem in its three forms: f64 and f32 on the CPU, and on the GPU.
struct Case {
  DType act;
  Inputs f64, f32, gpu;
};

bool is_activation(const Tensor* t, const Inputs& in) {
  return t == &in.x || t == &in.dt || t == &in.B || t == &in.C;
}

Case make_case(Inputs in, DType act) {
  Case c;
  c.act = act;
  for (Tensor* t : {&in.x, &in.dt, &in.A, &in.B, &in.C, &in.D, &in.dt_bias, &in.initial_state})
    if (t->defined()) *t = t->to(is_activation(t, in) ? act : DType::f32).to(DType::f64);
  c.f64 = in;
  c.f32 = in.to(DType::f32);
  c.gpu = in;
  Inputs& g = c.gpu;
  for (Tensor* t : {&g.x, &g.dt, &g.A, &g.B, &g.C, &g.D, &g.dt_bias, &g.initial_state})
    if (t->defined()) *t = t->to(kGpu, is_activation(t, g) ? act : DType::f32);
  if (g.seq_idx.defined()) g.seq_idx = g.seq_idx.to(kGpu);
  return c;
}

// A random tensor rounded to `dt`, as f64 on the CPU.
Tensor rounded(const Shape& s, DType dt) { return randn(s).to(dt).to(DType::f64); }

// The chunk length the CUDA kernels run for `chunk_size`.
int64_t cuda_chunk(int64_t chunk_size) {
  if (chunk_size == 0) return mt::cuda::kSsdDefaultChunk;
  return std::min(chunk_size, mt::cuda::kSsdMaxChunk);
}

Outputs gpu_forward(const Case& c, const SsdOptions& opt) {
  const Inputs& g = c.gpu;
  Outputs o{poisoned(g.x.shape(), c.act, kGpu), poisoned(g.state_shape(), DType::f32, kGpu)};
  mt::ssd_forward(g.x, g.dt, g.A, g.B, g.C, g.D, g.dt_bias, g.initial_state, g.seq_idx, o.y, o.final_state, opt);
  return o;
}

Gradients gpu_backward(const Case& c, const Tensor& dy, const Tensor& dfs, const SsdOptions& opt) {
  const Inputs& g = c.gpu;
  const int64_t h = g.s.h;
  Gradients r{poisoned(g.x.shape(), c.act, kGpu),  poisoned(g.dt.shape(), c.act, kGpu),
              poisoned({h}, DType::f32, kGpu),     poisoned(g.B.shape(), c.act, kGpu),
              poisoned(g.C.shape(), c.act, kGpu),  poisoned({h}, DType::f32, kGpu),
              poisoned({h}, DType::f32, kGpu),     poisoned(g.state_shape(), DType::f32, kGpu)};
  mt::ssd_backward(dy, dfs, g.x, g.dt, g.A, g.B, g.C, g.D, g.dt_bias, g.initial_state, g.seq_idx, r.dx, r.ddt, r.dA,
                   r.dB, r.dC, r.dD, r.ddt_bias, r.d_initial_state, opt);
  return r;
}

std::string label(const Sizes& s, DType act, const SsdOptions& opt) {
  return std::string(mt::dtype_name(act)) + " b" + std::to_string(s.b) + " l" + std::to_string(s.l) + " h" +
         std::to_string(s.h) + " p" + std::to_string(s.p) + " g" + std::to_string(s.g) + " n" +
         std::to_string(s.n) + " Q" + std::to_string(opt.chunk_size);
}

// Forward and backward of one case against the CPU. `cpu_chunk`: the chunk length of
// the CPU runs (the CUDA one by default; 0 runs its sequential form).
void expect_case_within_rule(const Case& c, const SsdOptions& opt, bool with_d_final,
                             std::optional<int64_t> cpu_chunk = std::nullopt) {
  const std::string what = label(c.f64.s, c.act, opt) + (c.f64.seq_idx.defined() ? " docs" : "");
  SsdOptions cpu_opt = opt;
  cpu_opt.chunk_size = cpu_chunk ? *cpu_chunk : cuda_chunk(opt.chunk_size);

  Outputs ref = forward(c.f64, cpu_opt), cpu = forward(c.f32, cpu_opt);
  Outputs g1 = gpu_forward(c, opt), g2 = gpu_forward(c, opt);
  check_cuda(g1.y, cpu.y, ref.y, what + " y");
  check_cuda(g1.final_state, cpu.final_state, ref.final_state, what + " final_state");
  EXPECT_TRUE(same_bits(g1.y, g2.y)) << what << " y bits";
  EXPECT_TRUE(same_bits(g1.final_state, g2.final_state)) << what << " final_state bits";

  Tensor dy = rounded(c.f64.x.shape(), c.act);
  Tensor dfs = with_d_final ? rounded(c.f64.state_shape(), DType::f32) : Tensor();
  Gradients gref = backward(c.f64, dy, dfs, cpu_opt);
  Gradients gcpu = backward(c.f32, dy.to(DType::f32), dfs.defined() ? dfs.to(DType::f32) : Tensor(), cpu_opt);
  Tensor dy_gpu = dy.to(kGpu, c.act), dfs_gpu = dfs.defined() ? dfs.to(kGpu, DType::f32) : Tensor();
  Gradients a = gpu_backward(c, dy_gpu, dfs_gpu, opt), b = gpu_backward(c, dy_gpu, dfs_gpu, opt);
  auto na = a.named(), nb = b.named(), nref = gref.named(), ncpu = gcpu.named();
  for (size_t i = 0; i < na.size(); ++i) {
    check_cuda(na[i].second, ncpu[i].second, nref[i].second, what + " " + na[i].first);
    EXPECT_TRUE(same_bits(na[i].second, nb[i].second)) << what << " " << na[i].first << " bits";
  }
}

struct Spec {
  Sizes s;
  int64_t Q;
  std::vector<std::vector<int>> docs;  // document lengths per row, or empty
  Optional optional;
  bool positive_dt = false, softplus = true, with_d_final = true;
  std::optional<double> dt_min, dt_max;
};

const Spec kSpecs[] = {
    {{2, 200, 4, 16, 2, 32}, 0, {}, {}},
    {{2, 200, 4, 16, 2, 32}, 64, {}, {}},
    {{3, 131, 6, 37, 3, 11}, 16, {}, {}},
    {{1, 1, 1, 1, 1, 1}, 0, {}, {}},
    {{2, 77, 4, 64, 1, 128}, 64, {}, {}, false, true, false},
    {{1, 300, 8, 70, 8, 130}, 128, {}, {}},
    {{2, 150, 4, 8, 2, 16}, 32, {{5, 60, 1, 84}, {150}}, {}},
    {{2, 150, 4, 8, 2, 16}, 7, {{5, 60, 1, 84}, {150}}, {}},
    {{2, 50, 2, 8, 1, 8}, 0, {}, {false, false, false}, true, false, false},
    {{2, 90, 3, 12, 1, 20}, 40, {}, {}, false, true, true, 0.15, 0.3},
    {{1, 20, 2, 5, 1, 6}, 1, {}, {}},
    {{1, 400, 2, 16, 1, 16}, 300, {}, {}},
    {{4, 129, 4, 32, 4, 64}, 0, {}, {}},
    {{2, 512, 8, 64, 2, 128}, 0, {{100, 3, 409}, {512}}, {}},
    // Documents that start at a chunk's first token (the carry into that chunk is cut
    // while the chunk's own state stays whole), one of them a single token long.
    {{2, 160, 4, 16, 2, 24}, 32, {{64, 40, 56}, {32, 1, 31, 96}}, {}},
    {{1, 300, 3, 7, 1, 9}, 128, {{128, 1, 127, 44}}, {}},
    {{2, 300, 4, 64, 4, 128}, 128, {{256, 44}, {128, 172}}, {}},
    // The tensor-core dB/dC path with two steps of p per head and one column tile of n.
    {{1, 200, 4, 128, 2, 64}, 128, {{70, 130}}, {}},
    {{2, 100, 6, 64, 3, 64}, 64, {}, {}, false, true, false},
    // The tensor-core paths (p 64, n 64 or 128) at their edges: chunks of 32 in tiles of
    // 64 with a last chunk of 13 tokens; one head a group; a last chunk of one token with
    // documents; no optional inputs and Δ given directly.
    {{1, 45, 2, 64, 1, 64}, 32, {}, {}},
    {{3, 150, 4, 64, 4, 128}, 128, {{20, 100, 30}, {150}, {1, 149}}, {}},
    {{1, 129, 2, 64, 2, 64}, 128, {{128, 1}}, {}},
    {{2, 96, 4, 64, 2, 128}, 64, {}, {false, false, false}, true, false, false},
};

}  // namespace

TEST(CudaSsd, ForwardBackwardMatchCpuWithinRule) {
  SKIP_WITHOUT_GPU();
  for (DType act : {DType::bf16, DType::f32}) {
    for (const Spec& sp : kSpecs) {
      Inputs in = random_inputs(sp.s, sp.optional, sp.positive_dt);
      if (!sp.docs.empty()) in.seq_idx = seq_idx_from_lengths(sp.docs, sp.s.l);
      SsdOptions opt = options(sp.Q, sp.softplus);
      opt.dt_min = sp.dt_min;
      opt.dt_max = sp.dt_max;
      expect_case_within_rule(make_case(in, act), opt, sp.with_d_final);
    }
  }
}

// One small packed case in both dtypes: quick enough for compute-sanitizer.
TEST(CudaSsd, SmallPackedCase) {
  SKIP_WITHOUT_GPU();
  for (DType act : {DType::bf16, DType::f32}) {
    Inputs in = random_inputs({2, 100, 2, 16, 1, 40});
    in.seq_idx = seq_idx_from_lengths({{30, 1, 69}, {100}}, 100);
    expect_case_within_rule(make_case(in, act), options(32), true);
  }
}

// The tensor-core kernels (bf16, p 64; n 64 at Q 64, n 128 at Q 128) on small rows with
// documents and a short last chunk: small enough for compute-sanitizer
// (scripts/gpu_check.sh, SANITIZE=1).
TEST(CudaSsd, SmallTensorCoreCase) {
  SKIP_WITHOUT_GPU();
  Inputs a = random_inputs({1, 150, 2, 64, 1, 64});
  a.seq_idx = seq_idx_from_lengths({{70, 1, 79}}, 150);
  expect_case_within_rule(make_case(a, DType::bf16), options(64), true);
  Inputs b = random_inputs({1, 300, 4, 64, 2, 128});
  b.seq_idx = seq_idx_from_lengths({{128, 100, 72}}, 300);
  expect_case_within_rule(make_case(b, DType::bf16), options(128), true);
}

// A batch row of 512K tokens (offsets past 2^31 bytes in the state scratch of a real
// model are the same code); the CPU runs its sequential form here, which is cheaper.
TEST(CudaSsd, LongSequenceMatchesCpuWithinRule) {
  SKIP_WITHOUT_GPU();
  const Sizes s{1, (int64_t(1) << 19) + 37, 2, 8, 1, 16};
  Inputs in = random_inputs(s);
  expect_case_within_rule(make_case(in, DType::bf16), options(0), true, 0);
}

// The same length through the tensor-core kernels (bf16, p 64, n 64), with documents.
TEST(CudaSsd, LongSequenceOnTensorCoresMatchesCpuWithinRule) {
  SKIP_WITHOUT_GPU();
  const int64_t l = (int64_t(1) << 19) + 37;
  const Sizes s{1, l, 1, 64, 1, 64};
  Inputs in = random_inputs(s);
  in.seq_idx = seq_idx_from_lengths({{300000, 1, int(l - 300001)}}, l);
  expect_case_within_rule(make_case(in, DType::bf16), options(0), true, 0);
}

TEST(CudaSsd, EmptySequenceKeepsTheState) {
  SKIP_WITHOUT_GPU();
  Case c = make_case(random_inputs({2, 0, 3, 4, 1, 5}), DType::bf16);
  Outputs o = gpu_forward(c, options(0));
  EXPECT_TRUE(same_bits(o.final_state, c.gpu.initial_state));
  Tensor dy = Tensor::zeros(c.gpu.x.shape(), DType::bf16, kGpu);
  Tensor dfs = rounded(c.gpu.state_shape(), DType::f32).to(kGpu, DType::f32);
  Gradients g = gpu_backward(c, dy, dfs, options(0));
  EXPECT_TRUE(same_bits(g.d_initial_state, dfs));
  for (const Tensor& t : {g.dA, g.dD, g.ddt_bias})
    for (double v : values(t)) EXPECT_EQ(v, 0.0);
}

// Decode: several tokens in a row from a random state, each against the CPU step.
TEST(CudaSsd, StepMatchesCpuWithinRule) {
  SKIP_WITHOUT_GPU();
  struct StepSpec {
    int64_t b, h, p, g, n;
    bool optional;
  };
  for (DType act : {DType::bf16, DType::f32}) {
    for (const StepSpec& sp : {StepSpec{3, 4, 7, 2, 9, true}, StepSpec{2, 8, 64, 1, 128, true},
                               StepSpec{1, 3, 5, 3, 33, false}}) {
      const std::string what = std::string(mt::dtype_name(act)) + " b" + std::to_string(sp.b) + " p" +
                               std::to_string(sp.p) + " n" + std::to_string(sp.n);
      SsdOptions opt = options(0);
      opt.dt_max = 0.9;
      Tensor A = uniform({sp.h}, -2.0, -0.3).to(DType::f32).to(DType::f64);
      Tensor D = sp.optional ? rounded({sp.h}, DType::f32) : Tensor();
      Tensor bias = sp.optional ? uniform({sp.h}, -0.5, 0.5).to(DType::f32).to(DType::f64) : Tensor();
      Tensor s64 = rounded({sp.b, sp.h, sp.p, sp.n}, DType::f32);
      Tensor s32 = s64.to(DType::f32), sg = s64.to(kGpu, DType::f32);
      auto gpu32 = [&](const Tensor& t) { return t.defined() ? t.to(kGpu, DType::f32) : Tensor(); };
      for (int step = 0; step < 3; ++step) {
        Tensor x = rounded({sp.b, sp.h, sp.p}, act), dt = uniform({sp.b, sp.h}, -2.5, 0.5).to(act).to(DType::f64);
        Tensor B = rounded({sp.b, sp.g, sp.n}, act), C = rounded({sp.b, sp.g, sp.n}, act);
        Tensor y64 = poisoned({sp.b, sp.h, sp.p}), y32 = poisoned({sp.b, sp.h, sp.p}, DType::f32);
        mt::ssd_step(x, dt, A, B, C, D, bias, s64, y64, opt);
        mt::ssd_step(x.to(DType::f32), dt.to(DType::f32), A.to(DType::f32), B.to(DType::f32), C.to(DType::f32),
                     D.defined() ? D.to(DType::f32) : Tensor(), bias.defined() ? bias.to(DType::f32) : Tensor(), s32,
                     y32, opt);
        Tensor before = sg.clone(), again = sg.clone();
        Tensor y = poisoned({sp.b, sp.h, sp.p}, act, kGpu), y2 = poisoned({sp.b, sp.h, sp.p}, act, kGpu);
        mt::ssd_step(x.to(kGpu, act), dt.to(kGpu, act), gpu32(A), B.to(kGpu, act), C.to(kGpu, act), gpu32(D),
                     gpu32(bias), sg, y, opt);
        mt::ssd_step(x.to(kGpu, act), dt.to(kGpu, act), gpu32(A), B.to(kGpu, act), C.to(kGpu, act), gpu32(D),
                     gpu32(bias), again, y2, opt);
        check_cuda(y, y32, y64, what + " y step " + std::to_string(step));
        check_cuda(sg, s32, s64, what + " state step " + std::to_string(step));
        EXPECT_TRUE(same_bits(y, y2) && same_bits(sg, again)) << what << " bits";
        EXPECT_FALSE(same_bits(sg, before)) << what << " state not advanced";
      }
    }
  }
}

TEST(CudaSsd, RejectsBadDtypesAndDevices) {
  SKIP_WITHOUT_GPU();
  Case c = make_case(random_inputs({2, 5, 4, 3, 2, 6}), DType::bf16);
  const Inputs& g = c.gpu;
  auto fwd = [&](const Tensor& x, const Tensor& A, const Tensor& dt, const Tensor& seq, Tensor y, Tensor fs) {
    mt::ssd_forward(x, dt, A, g.B, g.C, g.D, g.dt_bias, g.initial_state, seq, y, fs, options(0));
  };
  Tensor y = poisoned(g.x.shape(), DType::bf16, kGpu), fs = poisoned(g.state_shape(), DType::f32, kGpu);
  expect_error<mt::TypeError>([&] { fwd(g.x.to(DType::f64), g.A, g.dt.to(DType::f64), Tensor(), y, fs); },
                              "ssd_forward", "'x'", "bf16 or f32 on CUDA");
  expect_error<mt::TypeError>([&] { fwd(g.x, g.A.to(DType::bf16), g.dt, Tensor(), y, fs); }, "'A'", "f32");
  expect_error<mt::TypeError>([&] { fwd(g.x, g.A, g.dt.to(DType::f32), Tensor(), y, fs); }, "'dt'", "bf16");
  expect_error<mt::TypeError>([&] { fwd(g.x, g.A, g.dt, Tensor(), y, fs.to(DType::bf16)); }, "'final_state'", "f32");
  expect_error<mt::TypeError>(
      [&] { fwd(g.x, g.A, g.dt, Tensor::zeros({2, 5}, DType::i32), y, fs); }, "'seq_idx'", "cuda:0");

  Tensor dy = poisoned(g.x.shape(), DType::bf16, kGpu);
  Gradients r = gpu_backward(c, rounded(g.x.shape(), DType::bf16).to(kGpu, DType::bf16), Tensor(), options(0));
  auto bwd = [&](const Tensor& dA, const Tensor& dinit) {
    Tensor a = dA, d0 = dinit;
    mt::ssd_backward(dy, Tensor(), g.x, g.dt, g.A, g.B, g.C, g.D, g.dt_bias, g.initial_state, Tensor(), r.dx, r.ddt,
                     a, r.dB, r.dC, r.dD, r.ddt_bias, d0, options(0));
  };
  expect_error<mt::TypeError>([&] { bwd(r.dA.to(DType::bf16), r.d_initial_state); }, "ssd_backward", "'dA'", "f32");
  expect_error<mt::TypeError>([&] { bwd(r.dA, r.d_initial_state.to(DType::bf16)); }, "'d_initial_state'", "f32");

  Tensor x = g.x.select(1, 0).contiguous(), dt = g.dt.select(1, 0).contiguous();
  Tensor B = g.B.select(1, 0).contiguous(), C = g.C.select(1, 0).contiguous();
  Tensor state = Tensor::zeros(g.state_shape(), DType::bf16, kGpu), ys = poisoned(x.shape(), DType::bf16, kGpu);
  expect_error<mt::TypeError>([&] { mt::ssd_step(x, dt, g.A, B, C, g.D, g.dt_bias, state, ys, options(0)); },
                              "ssd_step", "'state'", "f32");
}
