// The CUDA core against the CPU: random numbers and casts bit for bit, copies,
// the caching allocator, and gemm within DESIGN.md's rule. Skipped without a GPU.
#include "testing.h"

namespace mt = mambatron;
using mt::Device;
using mt::DType;
using mt::Shape;
using mt::Tensor;

namespace {
const Device kGpu = Device::cuda(0);
}

TEST(CudaCore, RandomNumbersEqualCpuBitForBit) {
  SKIP_WITHOUT_GPU();
  for (DType dt : {DType::f32, DType::f64, DType::bf16, DType::f16}) {
    for (bool normal : {false, true}) {
      mt::Generator gc(1234), gg(1234);
      gc.set_offset(77);
      gg.set_offset(77);
      Shape s{1001, 3};
      Tensor c = normal ? Tensor::randn(s, dt, Device::cpu(), &gc) : Tensor::rand(s, dt, Device::cpu(), &gc);
      Tensor g = normal ? Tensor::randn(s, dt, kGpu, &gg) : Tensor::rand(s, dt, kGpu, &gg);
      EXPECT_EQ(mt::testing::values(c), mt::testing::values(g)) << mt::dtype_name(dt) << (normal ? " normal" : " uniform");
      EXPECT_EQ(gc.offset(), gg.offset());
    }
  }
}

TEST(CudaCore, CastsEqualCpuBitForBit) {
  SKIP_WITHOUT_GPU();
  Tensor x = mt::testing::randn({4099}, DType::f64, 300.0);  // many rounding cases in every format
  for (DType to : {DType::f32, DType::bf16, DType::f16, DType::i32, DType::i64}) {
    Tensor cpu = x.to(to);
    Tensor gpu = x.to(kGpu).to(to);
    auto a = mt::testing::values(cpu), b = mt::testing::values(gpu);
    ASSERT_EQ(a.size(), b.size());
    for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(a[i], b[i]) << mt::dtype_name(to) << " element " << i << " x " << mt::testing::values(x)[i];
  }
  Tensor h = mt::testing::randn({513}, DType::f32).to(DType::bf16);
  EXPECT_EQ(mt::testing::values(h.to(kGpu).to(DType::f32)), mt::testing::values(h.to(DType::f32)));
}

TEST(CudaCore, CopiesAcrossDevicesDtypesAndStrides) {
  SKIP_WITHOUT_GPU();
  Tensor x = mt::testing::randn({37, 41}, DType::f32);
  Tensor g = x.to(kGpu);
  EXPECT_TRUE(g.is_cuda());
  EXPECT_EQ(mt::testing::values(g), mt::testing::values(x));
  Tensor gt = g.transpose(0, 1).contiguous();  // strided copy on the GPU
  EXPECT_EQ(mt::testing::values(gt), mt::testing::values(x.transpose(0, 1)));
  Tensor dst = mt::testing::poisoned({41, 37}, DType::f64, kGpu).transpose(0, 1);
  dst.copy_(x);  // CPU f32 into a strided CUDA f64 view
  EXPECT_EQ(mt::testing::values(dst), mt::testing::values(x));
  Tensor sl = g.slice(1, 3, 40, 3);
  EXPECT_EQ(mt::testing::values(sl), mt::testing::values(x.slice(1, 3, 40, 3)));
  Tensor f = Tensor::full({5, 3}, -2.5, DType::bf16, kGpu);
  for (double v : mt::testing::values(f)) EXPECT_EQ(v, -2.5);
}

TEST(CudaCore, CachingAllocatorCountsAndReuses) {
  SKIP_WITHOUT_GPU();
  mt::synchronize(kGpu);
  mt::empty_cache(kGpu);  // blocks cached by earlier tests could serve the request below instead
  size_t before = mt::memory_allocated(kGpu);
  void* first;
  {
    Tensor t = Tensor::empty({3 << 20}, DType::f32, kGpu);  // 12 MiB
    first = t.data_ptr();
    EXPECT_GE(mt::memory_allocated(kGpu), before + (12u << 20));
    EXPECT_GE(mt::max_memory_allocated(kGpu), before + (12u << 20));
  }
  EXPECT_EQ(mt::memory_allocated(kGpu), before);
  Tensor again = Tensor::empty({3 << 20}, DType::f32, kGpu);
  EXPECT_EQ(again.data_ptr(), first);
  EXPECT_GE(mt::memory_reserved(kGpu), mt::memory_allocated(kGpu));
  EXPECT_THROW(Tensor::empty({int64_t(1) << 50}, DType::f32, kGpu), mt::OutOfMemoryError);
}

TEST(CudaGemm, MatchesCpuWithinRule) {
  SKIP_WITHOUT_GPU();
  struct Case { int64_t batch, m, n, k; bool ta, tb; };
  for (Case c : {Case{0, 1, 1, 1, false, false}, Case{0, 67, 45, 129, false, false}, Case{0, 128, 256, 64, false, true},
                 Case{0, 33, 17, 255, true, false}, Case{0, 97, 31, 73, true, true}, Case{3, 65, 66, 67, false, true},
                 Case{0, 1024, 768, 512, false, false}}) {
    for (DType in : {DType::bf16, DType::f32}) {
      for (DType out : {in, DType::f32}) {
        Shape sa = c.ta ? Shape{c.k, c.m} : Shape{c.m, c.k}, sb = c.tb ? Shape{c.n, c.k} : Shape{c.k, c.n};
        if (c.batch) { sa.insert(sa.begin(), c.batch); sb.insert(sb.begin(), c.batch); }
        Tensor a = mt::testing::randn(sa, in), b = mt::testing::randn(sb, in);
        mt::GemmOptions o{c.ta, c.tb, 1.0f, 0.0f};
        Tensor ref = mt::gemm(a.to(DType::f64), b.to(DType::f64), o);
        Tensor cpu = mt::gemm(a, b, o, out);
        Shape sc = c.batch ? Shape{c.batch, c.m, c.n} : Shape{c.m, c.n};
        Tensor gpu = mt::testing::poisoned(sc, out, kGpu);
        mt::gemm(a.to(kGpu), b.to(kGpu), gpu, o);
        std::string what = "gemm " + mt::shape_str(sa) + (c.ta ? "T" : "") + " x " + mt::shape_str(sb) + (c.tb ? "T" : "") +
                           " " + mt::dtype_name(in) + "->" + mt::dtype_name(out);
        mt::testing::expect_within_rule(gpu, cpu, ref, what.c_str(), out == DType::f32 ? 1e-5 : 1e-6);
      }
    }
  }
}

// The residual epilogue: c = op(a) @ op(b) + addend, addend a separate tensor or c itself.
TEST(CudaGemm, AddendEpilogueMatchesCpuWithinRule) {
  SKIP_WITHOUT_GPU();
  for (int64_t m : {1, 77, 512}) {
    for (DType in : {DType::bf16, DType::f32}) {
      const int64_t k = 96, n = 130;
      Tensor a = mt::testing::randn({m, k}, in), b = mt::testing::randn({n, k}, in);
      Tensor r = mt::testing::randn({m, n}, in, 4.0);
      mt::GemmOptions o{false, true, 1.0f, 1.0f};
      o.addend = r.to(DType::f64);
      Tensor ref = Tensor::empty({m, n}, DType::f64);
      mt::gemm(a.to(DType::f64), b.to(DType::f64), ref, o);
      o.addend = r;
      Tensor cpu = Tensor::empty({m, n}, in);
      mt::gemm(a, b, cpu, o);
      Tensor gpu = mt::testing::poisoned({m, n}, in, kGpu);
      o.addend = r.to(kGpu);
      mt::gemm(a.to(kGpu), b.to(kGpu), gpu, o);
      std::string what = "gemm + addend m " + std::to_string(m) + " " + mt::dtype_name(in);
      mt::testing::expect_within_rule(gpu, cpu, ref, what.c_str(), 1e-6);
      Tensor inplace = r.to(kGpu);
      o.addend = inplace;
      mt::gemm(a.to(kGpu), b.to(kGpu), inplace, o);
      EXPECT_TRUE(mt::testing::same_bits(inplace, gpu)) << what << ": in place differs";
    }
  }
}

TEST(CudaGemm, RejectsMixedDevicesAndF64) {
  SKIP_WITHOUT_GPU();
  Tensor a = mt::testing::randn({4, 5}, DType::f32), b = mt::testing::randn({5, 3}, DType::f32);
  EXPECT_THROW(mt::gemm(a.to(kGpu), b), mt::TypeError);
  EXPECT_THROW(mt::gemm(a.to(kGpu, DType::f64), b.to(kGpu, DType::f64)), mt::TypeError);
}
