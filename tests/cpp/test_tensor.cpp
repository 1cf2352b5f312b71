// Tensor basics: factories, views, copies across dtypes, allocator statistics.
#include <cmath>

#include "testing.h"

namespace mt = mambatron;
using mt::DType;
using mt::Shape;
using mt::Tensor;

TEST(Tensor, FactoriesAndProperties) {
  Tensor t = Tensor::full({2, 3, 5}, 1.5, DType::f32);
  EXPECT_EQ(t.dim(), 3);
  EXPECT_EQ(t.numel(), 30);
  EXPECT_EQ(t.strides(), (Shape{15, 5, 1}));
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(t.nbytes(), 120u);
  for (double v : mt::testing::values(t)) EXPECT_EQ(v, 1.5);
  Tensor z = Tensor::zeros({4}, DType::i64);
  for (double v : mt::testing::values(z)) EXPECT_EQ(v, 0.0);
  EXPECT_EQ(Tensor::empty({0, 3}).numel(), 0);
  EXPECT_THROW(Tensor::empty({-1, 3}), mt::ValueError);
}

TEST(Tensor, DataOrNullForOptionalTensors) {
  Tensor t = Tensor::full({3}, 2.0, DType::f32);
  EXPECT_EQ(t.data_or_null<float>(), t.data<float>());
  EXPECT_EQ(Tensor().data_or_null<float>(), nullptr);
  EXPECT_THROW(t.data_or_null<double>(), mt::TypeError);  // the dtype is still checked
}

TEST(Tensor, ViewsShareStorage) {
  Tensor t = Tensor::empty({4, 6}, DType::f64);
  double* p = t.data<double>();
  for (int i = 0; i < 24; ++i) p[i] = i;
  Tensor tr = t.transpose(0, 1);
  EXPECT_FALSE(tr.is_contiguous());
  EXPECT_EQ(tr.shape(), (Shape{6, 4}));
  EXPECT_EQ(mt::testing::values(tr)[1], 6.0);  // tr[0, 1] = t[1, 0]
  Tensor sl = t.slice(1, 1, 6, 2);             // columns 1, 3, 5
  EXPECT_EQ(sl.shape(), (Shape{4, 3}));
  EXPECT_EQ(mt::testing::values(sl)[4], 9.0);  // row 1, column 3
  Tensor row = t.select(0, 2);
  EXPECT_EQ(mt::testing::values(row)[0], 12.0);
  Tensor v = t.view({2, -1});
  EXPECT_EQ(v.shape(), (Shape{2, 12}));
  EXPECT_EQ(v.data_ptr(), t.data_ptr());
  EXPECT_THROW(tr.view({24}), mt::ValueError);  // not contiguous: view refuses
  Tensor r = tr.reshape({24});                   // reshape copies
  EXPECT_EQ(mt::testing::values(r)[1], 6.0);
  Tensor n = t.narrow(0, 1, 2);
  EXPECT_EQ(mt::testing::values(n)[0], 6.0);
  EXPECT_THROW(t.narrow(0, 3, 2), mt::ValueError);
  EXPECT_THROW(t.select(2, 0), mt::ValueError);
  Tensor pm = t.view({2, 2, 6}).permute({2, 0, 1});
  EXPECT_EQ(pm.shape(), (Shape{6, 2, 2}));
  EXPECT_EQ(mt::testing::values(pm.contiguous())[1], 6.0);
  EXPECT_EQ(t.unsqueeze(1).shape(), (Shape{4, 1, 6}));
}

TEST(Tensor, CopyAcrossDtypesAndStrides) {
  Tensor src = mt::testing::randn({5, 7}, DType::f64);
  Tensor dst = Tensor::empty({7, 5}, DType::f32).transpose(0, 1);  // strided destination
  dst.copy_(src);
  auto a = mt::testing::values(src), b = mt::testing::values(dst);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(b[i], double(float(a[i])));
  Tensor ints = Tensor::full({3}, 7.9, DType::f64).to(DType::i32);
  EXPECT_EQ(mt::testing::values(ints)[0], 7.0);  // toward zero, as C++ does
  EXPECT_THROW(dst.copy_(Tensor::empty({5, 6})), mt::ValueError);
  EXPECT_DOUBLE_EQ(Tensor::full({1}, 3.25, DType::bf16).item(), 3.25);
  EXPECT_THROW(src.item(), mt::ValueError);
}

// bf16 rounding: exhaustive over the 16 low bits for a spread of high bits.
TEST(DTypes, Bf16RoundToNearestEven) {
  for (uint32_t hi : {0x3f80u, 0x4049u, 0xc2f7u, 0x0001u, 0x7f7fu}) {
    for (uint32_t lo = 0; lo < 0x10000u; lo += 7) {
      uint32_t bits = (hi << 16) | lo;
      float f = mt::bits_float(bits);
      uint16_t r = mt::float_to_bf16_bits(f);
      // Reference: pick the nearer of the two neighbours, ties to the even one.
      uint32_t down = bits & 0xffff0000u, up = down + 0x10000u;
      uint32_t expect;
      if (lo < 0x8000u) expect = down;
      else if (lo > 0x8000u) expect = up;
      else expect = ((down >> 16) & 1u) ? up : down;
      ASSERT_EQ(r, uint16_t(expect >> 16)) << std::hex << bits;
    }
  }
  EXPECT_TRUE(std::isnan(float(mt::bfloat16(std::nanf("")))));
  EXPECT_EQ(float(mt::bfloat16(1e39)), INFINITY);  // past the largest bf16
}

// Double to bf16 rounds once (no double rounding through float).
TEST(DTypes, Bf16FromDoubleRoundsOnce) {
  // 1 + 2^-8 + 2^-30 is just above the midpoint between two bf16 values; through a
  // float's round-to-nearest it would become the exact midpoint and round to even (down).
  double d = 1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -30);
  EXPECT_EQ(float(mt::bfloat16(d)), 1.0f + std::ldexp(1.0f, -7));
  EXPECT_EQ(float(mt::bfloat16(float(d))), 1.0f);
}

TEST(DTypes, F16RoundTripAndRounding) {
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    uint16_t b = uint16_t(h);
    float f = mt::f16_bits_to_float(b);
    if (std::isnan(f)) continue;
    ASSERT_EQ(mt::float_to_f16_bits(f), b) << std::hex << h;
  }
  EXPECT_EQ(float(mt::float16(65504.0f)), 65504.0f);
  EXPECT_EQ(float(mt::float16(65520.0f)), INFINITY);
  EXPECT_EQ(float(mt::float16(1.0f + std::ldexp(1.0f, -11))), 1.0f);                 // tie: even
  EXPECT_EQ(float(mt::float16(1.0f + 3 * std::ldexp(1.0f, -11))), 1.0f + std::ldexp(1.0f, -9));  // tie: even, up
  EXPECT_EQ(float(mt::float16(std::ldexp(1.0f, -25))), 0.0f);                        // half the smallest: even (0)
  EXPECT_EQ(float(mt::float16(std::ldexp(1.5f, -25))), std::ldexp(1.0f, -24));
}

TEST(DTypes, Names) {
  EXPECT_EQ(mt::dtype_from_string("bfloat16"), DType::bf16);
  EXPECT_EQ(mt::dtype_from_string("u16"), DType::u16);
  EXPECT_STREQ(mt::dtype_name(DType::i64), "i64");
  EXPECT_THROW(mt::dtype_from_string("complex64"), mt::TypeError);
  EXPECT_EQ(mt::Device::parse("cuda:3"), mt::Device::cuda(3));
  EXPECT_THROW(mt::Device::parse("gpu"), mt::ValueError);
}

TEST(Memory, CpuArenaCountsAndReuses) {
  mt::reset_peak_memory_stats(mt::Device::cpu());
  size_t before = mt::memory_allocated(mt::Device::cpu());
  {
    Tensor t = Tensor::empty({1 << 20}, DType::f32);  // 4 MiB
    EXPECT_GE(mt::memory_allocated(mt::Device::cpu()), before + (4u << 20));
  }
  EXPECT_EQ(mt::memory_allocated(mt::Device::cpu()), before);
  EXPECT_GE(mt::max_memory_allocated(mt::Device::cpu()), before + (4u << 20));
  size_t reserved = mt::memory_reserved(mt::Device::cpu());
  Tensor again = Tensor::empty({1 << 20}, DType::f32);
  EXPECT_EQ(mt::memory_reserved(mt::Device::cpu()), reserved);  // served from the cache
}

TEST(Errors, MessagesNameTheProblem) {
  Tensor a = Tensor::zeros({3, 4});
  try {
    mt::check_shape(a, "myop", "weight", {4, 3});
    FAIL();
  } catch (const mt::ValueError& e) {
    EXPECT_NE(std::string(e.what()).find("myop: argument 'weight' has shape [3, 4], expected [4, 3]"), std::string::npos);
  }
  EXPECT_THROW(mt::check_dtype(a, "myop", "x", DType::f64), mt::TypeError);
  EXPECT_THROW(mt::check_contiguous(a.transpose(0, 1), "myop", "x"), mt::ValueError);
}
