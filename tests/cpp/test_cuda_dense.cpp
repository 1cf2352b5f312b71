// The dense CUDA ops (activations, norms, embedding, AdamW and the gradient norm)
// against the CPU ops, within DESIGN.md's rule: the reference is the CPU op in f64
// on the same (bf16- or f32-rounded) inputs, and the CPU's own error is the CPU op
// in f32 rounded to the output dtype. Outputs are poisoned first; two CUDA runs
// must agree bit for bit. Skipped without a GPU.
#include <algorithm>
#include <cstring>
#include <string>

#include "testing.h"

namespace mt = mambatron;
using mt::Device;
using mt::DType;
using mt::Shape;
using mt::Tensor;
using mt::testing::Input;
using mt::testing::input;
using mt::testing::check_cuda;
using mt::testing::poisoned;
using mt::testing::same_bits;

namespace {
const Device kGpu = Device::cuda(0);
constexpr double kEps = 1e-5;


Tensor empty(const Shape& s, DType dt) { return Tensor::empty(s, dt); }

// The product of the largest magnitudes of some tensors (a size for `floor` above).
double term_scale(std::initializer_list<Tensor> ts) {
  double p = 1;
  for (const Tensor& t : ts) {
    double m = 0;
    for (double v : mt::testing::values(t)) m = std::max(m, std::fabs(v));
    p *= m;
  }
  return p;
}

std::string label(const char* op, DType dt, const Shape& s) {
  return std::string(op) + " " + mt::dtype_name(dt) + " " + mt::shape_str(s);
}

// Odd widths take the scalar kernels; multiples of 8 the register-resident ones (d 16 to
// 8192: one to four vectors per thread, and 8192 beyond the backward's register budget).
const Shape kRows[] = {{1, 1},     {1, 4099},   {7, 37},   {7, 1},      {1000, 37}, {1000, 4099},
                       {2, 3, 37}, {1000, 4096}, {300, 768}, {5, 16},   {3, 8192},  {70, 2056}};
}  // namespace

// ---------------------------------------------------------------- activations
namespace {
struct Unary {
  const char* name;
  void (*fwd)(const Tensor&, Tensor&);
  void (*bwd)(const Tensor&, const Tensor&, Tensor&);
};
const Unary kUnary[] = {{"gelu", mt::gelu_forward, mt::gelu_backward},
                        {"squared_relu", mt::squared_relu_forward, mt::squared_relu_backward},
                        {"silu", mt::silu_forward, mt::silu_backward}};
}  // namespace

TEST(CudaActivation, UnaryMatchCpuWithinRule) {
  SKIP_WITHOUT_GPU();
  for (const Unary& u : kUnary) {
    for (DType dt : {DType::bf16, DType::f32}) {
      for (const Shape& s : {Shape{1}, Shape{4099}, Shape{7, 37}, Shape{1000, 4099}, Shape{3, 5, 9}}) {
        const std::string what = label(u.name, dt, s);
        Input x = input(s, dt, 3.0), g = input(s, dt);
        Tensor ref = empty(s, DType::f64), cpu = empty(s, DType::f32);
        u.fwd(x.f64, ref);
        u.fwd(x.f32, cpu);
        Tensor out = poisoned(s, dt, kGpu), out2 = poisoned(s, dt, kGpu);
        u.fwd(x.dev, out);
        u.fwd(x.dev, out2);
        check_cuda(out, cpu, ref, what + " forward");
        EXPECT_TRUE(same_bits(out, out2)) << what;

        Tensor gref = empty(s, DType::f64), gcpu = empty(s, DType::f32);
        u.bwd(g.f64, x.f64, gref);
        u.bwd(g.f32, x.f32, gcpu);
        Tensor dx = poisoned(s, dt, kGpu), dx2 = poisoned(s, dt, kGpu);
        u.bwd(g.dev, x.dev, dx);
        u.bwd(g.dev, x.dev, dx2);
        check_cuda(dx, gcpu, gref, what + " backward");
        EXPECT_TRUE(same_bits(dx, dx2)) << what;

        // In place, as ops.h allows: out into x, dx into dout.
        Tensor xi = x.dev.clone(), gi = g.dev.clone();
        u.fwd(xi, xi);
        EXPECT_TRUE(same_bits(xi, out)) << what << " in place";
        u.bwd(gi, x.dev, gi);
        EXPECT_TRUE(same_bits(gi, dx)) << what << " in place";
      }
    }
  }
}

// A view one element into its storage is not 16-byte aligned: the scalar path.
TEST(CudaActivation, UnalignedViewsMatchAlignedOnes) {
  SKIP_WITHOUT_GPU();
  for (DType dt : {DType::bf16, DType::f32}) {
    Input x = input({4100}, dt, 3.0);
    Tensor view = x.dev.slice(0, 1, 4100), dense = view.contiguous();
    Tensor a = poisoned({4099}, dt, kGpu), b = poisoned({4099}, dt, kGpu);
    Tensor out_view = poisoned({4100}, dt, kGpu).slice(0, 1, 4100);
    mt::gelu_forward(view, out_view);
    mt::gelu_forward(dense, b);
    EXPECT_TRUE(same_bits(out_view, b)) << mt::dtype_name(dt);
    mt::silu_backward(view, view, a);
    mt::silu_backward(dense, dense, b);
    EXPECT_TRUE(same_bits(a, b)) << mt::dtype_name(dt);
  }
}

TEST(CudaActivation, SwigluMatchesCpuWithinRule) {
  SKIP_WITHOUT_GPU();
  for (DType dt : {DType::bf16, DType::f32}) {
    for (const Shape& half : {Shape{1, 1}, Shape{7, 37}, Shape{7, 64}, Shape{1000, 4099}, Shape{2, 3, 40}}) {
      Shape full = half;
      full.back() *= 2;
      const std::string what = label("swiglu", dt, full);
      Input x = input(full, dt, 3.0), g = input(half, dt);
      Tensor ref = empty(half, DType::f64), cpu = empty(half, DType::f32);
      mt::swiglu_forward(x.f64, ref);
      mt::swiglu_forward(x.f32, cpu);
      Tensor out = poisoned(half, dt, kGpu), out2 = poisoned(half, dt, kGpu);
      mt::swiglu_forward(x.dev, out);
      mt::swiglu_forward(x.dev, out2);
      check_cuda(out, cpu, ref, what + " forward");
      EXPECT_TRUE(same_bits(out, out2)) << what;

      Tensor gref = empty(full, DType::f64), gcpu = empty(full, DType::f32);
      mt::swiglu_backward(g.f64, x.f64, gref);
      mt::swiglu_backward(g.f32, x.f32, gcpu);
      Tensor dx = poisoned(full, dt, kGpu), dx2 = poisoned(full, dt, kGpu);
      mt::swiglu_backward(g.dev, x.dev, dx);
      mt::swiglu_backward(g.dev, x.dev, dx2);
      check_cuda(dx, gcpu, gref, what + " backward");
      EXPECT_TRUE(same_bits(dx, dx2)) << what;
    }
  }
}

TEST(CudaActivation, RejectsF64AndMixedDtypes) {
  SKIP_WITHOUT_GPU();
  Tensor x = Tensor::zeros({3, 4}, DType::f64, kGpu), o = Tensor::zeros({3, 4}, DType::f64, kGpu);
  EXPECT_THROW(mt::gelu_forward(x, o), mt::TypeError);
  Tensor xb = Tensor::zeros({3, 4}, DType::bf16, kGpu), of = Tensor::zeros({3, 4}, DType::f32, kGpu);
  EXPECT_THROW(mt::silu_forward(xb, of), mt::TypeError);
}

// ---------------------------------------------------------------- norms
namespace {
Shape rows_of(const Shape& s) { return Shape(s.begin(), s.end() - 1); }
Tensor stat_gpu(const Shape& s) { return poisoned(s, DType::f32, kGpu); }
}  // namespace

TEST(CudaNorm, RmsnormMatchesCpuWithinRule) {
  SKIP_WITHOUT_GPU();
  for (DType dt : {DType::bf16, DType::f32}) {
    for (DType pt : {DType::f32, DType::bf16}) {
      for (const Shape& s : kRows) {
        const std::string what = label("rmsnorm", dt, s) + " params " + mt::dtype_name(pt);
        const int64_t d = s.back();
        Input x = input(s, dt, 2.0), w = input({d}, pt), g = input(s, dt);
        Tensor ref = empty(s, DType::f64), r64 = empty(rows_of(s), DType::f64);
        Tensor cpu = empty(s, DType::f32), r32 = empty(rows_of(s), DType::f32);
        mt::rmsnorm_forward(x.f64, w.f64, kEps, ref, r64);
        mt::rmsnorm_forward(x.f32, w.f32, kEps, cpu, r32);
        Tensor out = poisoned(s, dt, kGpu), rs = stat_gpu(rows_of(s));
        mt::rmsnorm_forward(x.dev, w.dev, kEps, out, rs);
        check_cuda(out, cpu, ref, what + " out");
        check_cuda(rs, r32, r64, what + " rstd");

        // The backward takes the CPU's f32 rstd everywhere, so only the backward differs.
        Tensor dx64 = empty(s, DType::f64), dw64 = empty({d}, DType::f64);
        Tensor dx32 = empty(s, DType::f32), dw32 = empty({d}, DType::f32);
        mt::rmsnorm_backward(g.f64, x.f64, w.f64, r32.to(DType::f64), dx64, dw64);
        mt::rmsnorm_backward(g.f32, x.f32, w.f32, r32, dx32, dw32);
        Tensor rg = r32.to(kGpu);
        Tensor dx = poisoned(s, dt, kGpu), dw = poisoned({d}, pt, kGpu);
        Tensor dxb = poisoned(s, dt, kGpu), dwb = poisoned({d}, pt, kGpu);
        mt::rmsnorm_backward(g.dev, x.dev, w.dev, rg, dx, dw);
        mt::rmsnorm_backward(g.dev, x.dev, w.dev, rg, dxb, dwb);
        // dx = r (g − x r² mean(g x)) cancels when d is small: its terms are |dy · w · r|.
        check_cuda(dx, dx32, dx64, what + " dx", term_scale({g.f64, w.f64, r32}));
        check_cuda(dw, dw32, dw64, what + " dweight");
        EXPECT_TRUE(same_bits(dx, dxb) && same_bits(dw, dwb)) << what << ": two runs differ";
        // The residual stream's gradient added in the same pass, in place as the model does.
        Input res = input(s, dt);
        Tensor sum32 = empty(s, DType::f32), sum64 = empty(s, DType::f64);
        mt::add(dx32, res.f32, sum32);
        mt::add(dx64, res.f64, sum64);
        Tensor dxr = res.dev.clone();
        mt::rmsnorm_backward(g.dev, x.dev, w.dev, rg, dxr, dwb, dxr);
        check_cuda(dxr, sum32, sum64, what + " dx + dresidual", term_scale({g.f64, w.f64, r32}));
        EXPECT_TRUE(same_bits(dw, dwb)) << what << ": dweight changed with dresidual";
      }
    }
  }
}

TEST(CudaNorm, Layernorm1pMatchesCpuWithinRule) {
  SKIP_WITHOUT_GPU();
  for (DType dt : {DType::bf16, DType::f32}) {
    for (DType pt : {DType::f32, DType::bf16}) {
      for (const Shape& s : kRows) {
        const std::string what = label("layernorm1p", dt, s) + " params " + mt::dtype_name(pt);
        const int64_t d = s.back();
        const Shape rs_shape = rows_of(s);
        Input x = input(s, dt, 2.0), ga = input({d}, pt, 0.5), be = input({d}, pt), g = input(s, dt);
        Tensor ref = empty(s, DType::f64), m64 = empty(rs_shape, DType::f64), r64 = empty(rs_shape, DType::f64);
        Tensor cpu = empty(s, DType::f32), m32 = empty(rs_shape, DType::f32), r32 = empty(rs_shape, DType::f32);
        mt::layernorm1p_forward(x.f64, ga.f64, be.f64, kEps, ref, m64, r64);
        mt::layernorm1p_forward(x.f32, ga.f32, be.f32, kEps, cpu, m32, r32);
        Tensor out = poisoned(s, dt, kGpu), mean = stat_gpu(rs_shape), rs = stat_gpu(rs_shape);
        mt::layernorm1p_forward(x.dev, ga.dev, be.dev, kEps, out, mean, rs);
        check_cuda(out, cpu, ref, what + " out");
        check_cuda(mean, m32, m64, what + " mean", term_scale({x.f64}));  // a sum that cancels
        check_cuda(rs, r32, r64, what + " rstd");

        Tensor dx64 = empty(s, DType::f64), dg64 = empty({d}, DType::f64), db64 = empty({d}, DType::f64);
        Tensor dx32 = empty(s, DType::f32), dg32 = empty({d}, DType::f32), db32 = empty({d}, DType::f32);
        mt::layernorm1p_backward(g.f64, x.f64, ga.f64, m32.to(DType::f64), r32.to(DType::f64), dx64, dg64, db64);
        mt::layernorm1p_backward(g.f32, x.f32, ga.f32, m32, r32, dx32, dg32, db32);
        Tensor mg = m32.to(kGpu), rg = r32.to(kGpu);
        Tensor dx = poisoned(s, dt, kGpu), dg = poisoned({d}, pt, kGpu), db = poisoned({d}, pt, kGpu);
        Tensor dxb = poisoned(s, dt, kGpu), dgb = poisoned({d}, pt, kGpu), dbb = poisoned({d}, pt, kGpu);
        mt::layernorm1p_backward(g.dev, x.dev, ga.dev, mg, rg, dx, dg, db);
        mt::layernorm1p_backward(g.dev, x.dev, ga.dev, mg, rg, dxb, dgb, dbb);
        Tensor one_plus_gamma = ga.f64.clone();
        for (int64_t j = 0; j < d; ++j) one_plus_gamma.data<double>()[j] += 1.0;
        check_cuda(dx, dx32, dx64, what + " dx", term_scale({g.f64, one_plus_gamma, r32}));
        check_cuda(dg, dg32, dg64, what + " dgamma");
        check_cuda(db, db32, db64, what + " dbeta");
        EXPECT_TRUE(same_bits(dx, dxb) && same_bits(dg, dgb) && same_bits(db, dbb)) << what << ": two runs differ";
        Input res = input(s, dt);
        Tensor sum32 = empty(s, DType::f32), sum64 = empty(s, DType::f64);
        mt::add(dx32, res.f32, sum32);
        mt::add(dx64, res.f64, sum64);
        Tensor dxr = res.dev.clone();
        mt::layernorm1p_backward(g.dev, x.dev, ga.dev, mg, rg, dxr, dgb, dbb, dxr);
        check_cuda(dxr, sum32, sum64, what + " dx + dresidual", term_scale({g.f64, one_plus_gamma, r32}));
      }
    }
  }
}

namespace {
struct GatedCase { Shape s; int64_t groups; };

// A copy of t one element into a fresh buffer, so not 16-byte aligned.
Tensor shifted(const Tensor& t) {
  const int64_t n = t.numel();
  Tensor v = Tensor::zeros({n + 1}, t.dtype(), t.device()).slice(0, 1, n + 1).view(t.shape());
  v.copy_(t);
  return v;
}

// Group widths (d / groups) that are a multiple of the 16-byte vector (8 bf16, 4 f32) take
// the register-resident kernels: sub-warp teams (widths 8 to 64; 12 in f32 only; 200
// groups of 8 take more than one block of teams in the backward), then a
// warp or a block a group: 520 (a ragged last sweep), the models' 1024, and 8192 on up to
// 512 threads (where the f32 backward goes generic). The other widths take the generic
// kernels. 33 to 1000 rows make several row chunks for dweight's sum.
const GatedCase kGated[] = {{{1, 1}, 1},       {{7, 37}, 1},     {{7, 37}, 37},    {{1000, 36}, 4},
                            {{1000, 4104}, 8}, {{2, 3, 4099}, 1}, {{5, 64}, 8},     {{33, 48}, 2},
                            {{50, 48}, 4},     {{2, 3, 256}, 4},  {{40, 1040}, 2},  {{1000, 2048}, 2},
                            {{300, 8192}, 8},  {{70, 8192}, 1},   {{3, 1600}, 200}};
}  // namespace

TEST(CudaNorm, GatedRmsnormMatchesCpuWithinRule) {
  SKIP_WITHOUT_GPU();
  for (DType dt : {DType::bf16, DType::f32}) {
    for (DType pt : {DType::f32, DType::bf16}) {
      for (const GatedCase& c : kGated) {
        const Shape& s = c.s;
        const std::string what = label("gated_rmsnorm", dt, s) + " groups " + std::to_string(c.groups) + " params " +
                                 mt::dtype_name(pt);
        const int64_t d = s.back();
        Shape rs_shape = s;
        rs_shape.back() = c.groups;
        Input y = input(s, dt, 2.0), z = input(s, dt, 2.0), w = input({d}, pt), g = input(s, dt);
        Tensor ref = empty(s, DType::f64), r64 = empty(rs_shape, DType::f64);
        Tensor cpu = empty(s, DType::f32), r32 = empty(rs_shape, DType::f32);
        mt::gated_rmsnorm_forward(y.f64, z.f64, w.f64, c.groups, kEps, ref, r64);
        mt::gated_rmsnorm_forward(y.f32, z.f32, w.f32, c.groups, kEps, cpu, r32);
        Tensor out = poisoned(s, dt, kGpu), rs = stat_gpu(rs_shape);
        mt::gated_rmsnorm_forward(y.dev, z.dev, w.dev, c.groups, kEps, out, rs);
        check_cuda(out, cpu, ref, what + " out");
        check_cuda(rs, r32, r64, what + " rstd");

        Tensor dy64 = empty(s, DType::f64), dz64 = empty(s, DType::f64), dw64 = empty({d}, DType::f64);
        Tensor dy32 = empty(s, DType::f32), dz32 = empty(s, DType::f32), dw32 = empty({d}, DType::f32);
        mt::gated_rmsnorm_backward(g.f64, y.f64, z.f64, w.f64, r32.to(DType::f64), c.groups, dy64, dz64, dw64);
        mt::gated_rmsnorm_backward(g.f32, y.f32, z.f32, w.f32, r32, c.groups, dy32, dz32, dw32);
        Tensor rg = r32.to(kGpu);
        Tensor dy = poisoned(s, dt, kGpu), dz = poisoned(s, dt, kGpu), dw = poisoned({d}, pt, kGpu);
        Tensor dyb = poisoned(s, dt, kGpu), dzb = poisoned(s, dt, kGpu), dwb = poisoned({d}, pt, kGpu);
        mt::gated_rmsnorm_backward(g.dev, y.dev, z.dev, w.dev, rg, c.groups, dy, dz, dw);
        mt::gated_rmsnorm_backward(g.dev, y.dev, z.dev, w.dev, rg, c.groups, dyb, dzb, dwb);
        // du cancels like RMSNorm's dx; dy and dz scale it by silu(z) (|silu(z)| < |z| + 0.3)
        // and y · silu'(z) (silu' < 1.1).
        const double du = term_scale({g.f64, w.f64, r32});
        check_cuda(dy, dy32, dy64, what + " dy", du * (term_scale({z.f64}) + 0.3));
        check_cuda(dz, dz32, dz64, what + " dz", du * term_scale({y.f64}) * 1.1);
        check_cuda(dw, dw32, dw64, what + " dweight");
        EXPECT_TRUE(same_bits(dy, dyb) && same_bits(dz, dzb) && same_bits(dw, dwb)) << what << ": two runs differ";

        // y one element into its buffer is not 16-byte aligned: the generic kernels, within
        // the same rule. Both paths round dweight's terms alike and add them in the same
        // order (row chunks, then the chunks), so its bits agree.
        const Tensor ys = shifted(y.dev);
        Tensor outs = poisoned(s, dt, kGpu), rss = stat_gpu(rs_shape);
        mt::gated_rmsnorm_forward(ys, z.dev, w.dev, c.groups, kEps, outs, rss);
        check_cuda(outs, cpu, ref, what + " out, y unaligned");
        check_cuda(rss, r32, r64, what + " rstd, y unaligned");
        Tensor dys = poisoned(s, dt, kGpu), dzs = poisoned(s, dt, kGpu), dws = poisoned({d}, pt, kGpu);
        mt::gated_rmsnorm_backward(g.dev, ys, z.dev, w.dev, rg, c.groups, dys, dzs, dws);
        check_cuda(dys, dy32, dy64, what + " dy, y unaligned", du * (term_scale({z.f64}) + 0.3));
        check_cuda(dzs, dz32, dz64, what + " dz, y unaligned", du * term_scale({y.f64}) * 1.1);
        EXPECT_TRUE(same_bits(dw, dws)) << what << ": dweight differs with y unaligned";
      }
    }
  }
}

TEST(CudaNorm, RejectsBadCudaDtypes) {
  SKIP_WITHOUT_GPU();
  Tensor x = Tensor::zeros({3, 4}, DType::bf16, kGpu), w = Tensor::zeros({4}, DType::f32, kGpu);
  Tensor out = Tensor::zeros({3, 4}, DType::bf16, kGpu);
  Tensor r_bf16 = Tensor::zeros({3}, DType::bf16, kGpu);
  EXPECT_THROW(mt::rmsnorm_forward(x, w, kEps, out, r_bf16), mt::TypeError);  // statistics are f32
  Tensor x64 = Tensor::zeros({3, 4}, DType::f64, kGpu), o64 = Tensor::zeros({3, 4}, DType::f64, kGpu);
  Tensor r = Tensor::zeros({3}, DType::f32, kGpu);
  EXPECT_THROW(mt::rmsnorm_forward(x64, w, kEps, o64, r), mt::TypeError);
  Tensor dx = Tensor::zeros({3, 4}, DType::bf16, kGpu), dw_bf16 = Tensor::zeros({4}, DType::bf16, kGpu);
  EXPECT_THROW(mt::rmsnorm_backward(out, x, w, r, dx, dw_bf16), mt::TypeError);  // dweight like weight
}

// ---------------------------------------------------------------- embedding
namespace {
// Random ids in [0, vocab) as a [b, l] tensor of dtype dt; ids cluster on a few rows
// when vocab is small, so rows sum many positions.
Tensor random_ids(int64_t b, int64_t l, int64_t vocab, DType dt) {
  Tensor u = mt::testing::uniform({b, l}, 0.0, double(vocab));
  Tensor ids = Tensor::empty({b, l}, DType::i64);
  for (int64_t i = 0; i < b * l; ++i) ids.data<int64_t>()[i] = std::min<int64_t>(vocab - 1, int64_t(u.data<double>()[i]));
  return ids.to(dt);
}
}  // namespace

TEST(CudaEmbedding, MatchesCpuWithinRule) {
  SKIP_WITHOUT_GPU();
  struct Case { int64_t b, l, vocab, d; };
  for (DType it : {DType::i32, DType::i64}) {
    for (DType wt : {DType::f32, DType::bf16}) {
      for (DType at : {DType::bf16, DType::f32}) {
        for (const Case& c : {Case{1, 1, 1, 1}, Case{2, 7, 3, 37}, Case{4, 250, 50, 4099}, Case{1, 1000, 5000, 64}}) {
          const std::string what = std::string("embedding ") + mt::dtype_name(it) + " table " + mt::dtype_name(wt) +
                                   " act " + mt::dtype_name(at) + " V " + std::to_string(c.vocab) + " d " +
                                   std::to_string(c.d);
          Tensor ids = random_ids(c.b, c.l, c.vocab, it), ids_gpu = ids.to(kGpu);
          Input w = input({c.vocab, c.d}, wt), g = input({c.b, c.l, c.d}, at);
          const Shape os{c.b, c.l, c.d};
          Tensor ref = empty(os, DType::f64), cpu = empty(os, DType::f32);
          mt::embedding_forward(w.f64, ids, ref);
          mt::embedding_forward(w.f32, ids, cpu);
          Tensor out = poisoned(os, at, kGpu);
          mt::embedding_forward(w.dev, ids_gpu, out);
          check_cuda(out, cpu, ref, what + " forward");

          Tensor dw64 = empty({c.vocab, c.d}, DType::f64), dw32 = empty({c.vocab, c.d}, DType::f32);
          mt::embedding_backward(g.f64, ids, dw64);
          mt::embedding_backward(g.f32, ids, dw32);
          Tensor dw = poisoned({c.vocab, c.d}, wt, kGpu), dwb = poisoned({c.vocab, c.d}, wt, kGpu);
          mt::embedding_backward(g.dev, ids_gpu, dw);
          mt::embedding_backward(g.dev, ids_gpu, dwb);
          check_cuda(dw, dw32, dw64, what + " backward");
          EXPECT_TRUE(same_bits(dw, dwb)) << what << ": two runs differ";
          if (wt == DType::f32) {  // accumulating (the model's f32 gradients): dw + the same sums
            Tensor twice = dw.clone();
            mt::embedding_backward(g.dev, ids_gpu, twice, true);
            Tensor expected = empty({c.vocab, c.d}, DType::f32), dw_host = dw.to(Device::cpu());
            mt::add(dw_host, dw_host, expected);
            EXPECT_TRUE(same_bits(twice, expected)) << what << ": accumulate differs from a separate add";
          }
        }
      }
    }
  }
}

TEST(CudaEmbedding, ReportsTheFirstBadIdLikeTheCpu) {
  SKIP_WITHOUT_GPU();
  Tensor ids = Tensor::zeros({2, 5}, DType::i64);
  ids.data<int64_t>()[7] = 9;
  ids.data<int64_t>()[8] = -1;
  Tensor w = Tensor::zeros({4, 3}, DType::f32, kGpu), out = Tensor::zeros({2, 5, 3}, DType::f32, kGpu);
  Tensor g = Tensor::zeros({2, 5, 3}, DType::bf16, kGpu), dw = Tensor::zeros({4, 3}, DType::f32, kGpu);
  for (DType it : {DType::i32, DType::i64}) {
    Tensor gi = ids.to(kGpu, it);
    try {
      mt::embedding_forward(w, gi, out);
      ADD_FAILURE() << "no error";
    } catch (const mt::ValueError& e) {
      EXPECT_NE(std::string(e.what()).find("id 9 at [1, 2]"), std::string::npos) << e.what();
    }
    try {
      mt::embedding_backward(g, gi, dw);
      ADD_FAILURE() << "no error";
    } catch (const mt::ValueError& e) {
      EXPECT_NE(std::string(e.what()).find("id 9 at [1, 2]"), std::string::npos) << e.what();
    }
  }
  // The device is still usable after the reported error.
  Tensor ok = Tensor::zeros({2, 5}, DType::i64, kGpu);
  EXPECT_NO_THROW(mt::embedding_forward(w, ok, out));
}

// ---------------------------------------------------------------- AdamW and the gradient norm
TEST(CudaAdamW, MatchesCpuWithinRuleAndWritesTheCopy) {
  SKIP_WITHOUT_GPU();
  for (int64_t n : {int64_t(1), int64_t(37), int64_t(1000003)}) {
    for (bool masked : {false, true}) {
      const std::string what = "adamw N " + std::to_string(n) + (masked ? " masked" : "");
      Input p = input({n}, DType::f32), m = input({n}, DType::f32, 0.01);
      Tensor v32 = mt::testing::uniform({n}, 1e-4, 2e-4, DType::f32);
      Tensor mask = mt::testing::uniform({n}, 0.0, 2.0).to(DType::u8);
      Tensor mask_gpu = masked ? mask.to(kGpu) : Tensor(), mask_cpu = masked ? mask : Tensor();
      Tensor p64 = p.f64.clone(), m64 = m.f64.clone(), v64 = v32.to(DType::f64);
      Tensor p32 = p.f32.clone(), m32 = m.f32.clone(), vv32 = v32.clone();
      Tensor pg = p.dev.clone(), mg = m.dev.clone(), vg = v32.to(kGpu);
      Tensor copy = poisoned({n}, DType::bf16, kGpu);
      for (int64_t step = 1; step <= 3; ++step) {
        mt::AdamWOptions o;
        o.lr = 1e-2;
        o.step = step;
        Input g = input({n}, DType::f32, 0.1 * double(step));
        mt::adamw_update(p64, g.f64, m64, v64, mask_cpu, o);
        mt::adamw_update(p32, g.f32, m32, vv32, mask_cpu, o);
        mt::adamw_update(pg, g.dev, mg, vg, mask_gpu, o, copy);
      }
      check_cuda(pg, p32, p64, what + " params");
      check_cuda(mg, m32, m64, what + " exp_avg");
      check_cuda(vg, vv32, v64, what + " exp_avg_sq");
      EXPECT_TRUE(same_bits(copy, pg.to(DType::bf16))) << what << ": the bf16 copy is not the rounded params";
    }
  }
}

TEST(CudaGradNorm, MatchesCpuIsDeterministicAndClips) {
  SKIP_WITHOUT_GPU();
  for (DType dt : {DType::f32, DType::bf16}) {
    std::vector<Input> parts;
    for (const Shape& s : {Shape{3, 37}, Shape{40000}, Shape{1}, Shape{0}, Shape{5, 7, 11}, Shape{1000003}})
      parts.push_back(input(s, dt, 0.01));
    std::vector<Tensor> g64, g32, gg;
    for (const Input& in : parts) {
      g64.push_back(in.f64.clone());
      g32.push_back(in.f32.clone());
      gg.push_back(in.dev.clone());
    }
    const double ref = mt::grad_norm(g64), cpu = mt::grad_norm(g32);
    const double gpu = mt::grad_norm(gg), again = mt::grad_norm(gg);
    EXPECT_LE(std::fabs(gpu - ref), 2 * std::fabs(cpu - ref) + 1e-12 * ref) << mt::dtype_name(dt);
    EXPECT_EQ(gpu, again) << mt::dtype_name(dt) << ": two runs differ";

    // Clipping to half the norm: every element scaled by max_norm / (norm + 1e-6).
    const double max_norm = ref / 2;
    EXPECT_EQ(mt::clip_grad_norm(g64, max_norm), ref);
    mt::clip_grad_norm(g32, max_norm);
    EXPECT_EQ(mt::clip_grad_norm(gg, max_norm), gpu);
    for (size_t i = 0; i < gg.size(); ++i)
      check_cuda(gg[i], g32[i], g64[i], std::string("clip ") + mt::dtype_name(dt) + " part " + std::to_string(i));

    // A NaN anywhere gives NaN; an infinite element gives inf and leaves the gradients alone.
    Tensor inf_gpu = Tensor::full({5}, INFINITY, dt, kGpu);
    EXPECT_TRUE(std::isinf(mt::clip_grad_norm({gg[0], inf_gpu}, 1.0)));
    Tensor nan_gpu = Tensor::full({5}, NAN, dt, kGpu);
    EXPECT_TRUE(std::isnan(mt::grad_norm({gg[0], inf_gpu, nan_gpu})));
  }
  EXPECT_EQ(mt::grad_norm(std::vector<Tensor>{Tensor::zeros({0}, DType::f32, kGpu)}), 0.0);
}

TEST(CudaAdamW, RejectsNonF32State) {
  SKIP_WITHOUT_GPU();
  Tensor p = Tensor::zeros({4}, DType::bf16, kGpu), g = p.clone(), m = p.clone(), v = p.clone();
  EXPECT_THROW(mt::adamw_update(p, g, m, v, Tensor(), mt::AdamWOptions{}), mt::TypeError);
  Tensor p32 = Tensor::zeros({4}, DType::f32, kGpu), g32 = p32.clone(), m32 = p32.clone(), v32 = p32.clone();
  Tensor copy64 = Tensor::zeros({4}, DType::f64, kGpu);
  EXPECT_THROW(mt::adamw_update(p32, g32, m32, v32, Tensor(), mt::AdamWOptions{}, copy64), mt::TypeError);
}
