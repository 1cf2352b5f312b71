// The Philox generator: known-answer vectors, the portable math under the normal
// draws, and the statistics of uniform and normal tensors.
#include <cmath>

#include "core/philox.h"
#include "testing.h"

namespace mt = mambatron;
using mt::DType;
using mt::Tensor;

namespace {
uint64_t pack(uint32_t lo, uint32_t hi) { return uint64_t(lo) | (uint64_t(hi) << 32); }
}  // namespace

// Known-answer vectors of Philox-4x32-10 from the Random123 distribution.
TEST(Random, PhiloxKnownAnswers) {
  auto r = mt::rng::philox(0, 0, 0);
  EXPECT_EQ(r.w[0], 0x6627e8d5u);
  EXPECT_EQ(r.w[1], 0xe169c58du);
  EXPECT_EQ(r.w[2], 0xbc57ac4cu);
  EXPECT_EQ(r.w[3], 0x9b00dbd8u);
  r = mt::rng::philox(~0ull, ~0ull, ~0ull);
  EXPECT_EQ(r.w[0], 0x408f276du);
  EXPECT_EQ(r.w[1], 0x41c83b0eu);
  EXPECT_EQ(r.w[2], 0xa20bc7c6u);
  EXPECT_EQ(r.w[3], 0x6d5451fdu);
  r = mt::rng::philox(pack(0x243f6a88u, 0x85a308d3u), pack(0x13198a2eu, 0x03707344u), pack(0xa4093822u, 0x299f31d0u));
  EXPECT_EQ(r.w[0], 0xd16cfe09u);
  EXPECT_EQ(r.w[1], 0x94fdccebu);
  EXPECT_EQ(r.w[2], 0x5001e420u);
  EXPECT_EQ(r.w[3], 0x24126ea1u);
}

TEST(Random, PortableMathIsAccurate) {
  for (double x : {1.0, 0.5, 0.999999, 1e-300, 3e-16, 0.7071, 0.1234567}) {
    EXPECT_NEAR(mt::rng::portable_log(x), std::log(x), 4e-16 * std::max(1.0, std::fabs(std::log(x)))) << x;
  }
  for (int i = 0; i < 1000; ++i) {
    double u = i / 1000.0 + 1.234e-5, s, c;
    mt::rng::portable_sincos_2pi(u, &s, &c);
    EXPECT_NEAR(s, std::sin(2 * M_PI * u), 1e-15) << u;
    EXPECT_NEAR(c, std::cos(2 * M_PI * u), 1e-15) << u;
  }
}

TEST(Random, UniformAndNormalStatistics) {
  for (DType dt : {DType::f32, DType::f64, DType::bf16, DType::f16}) {
    auto u = mt::testing::values(Tensor::rand({100001}, dt));
    double mean = 0, lo = 1, hi = 0;
    for (double v : u) { mean += v; lo = std::min(lo, v); hi = std::max(hi, v); }
    mean /= u.size();
    EXPECT_NEAR(mean, 0.5, 0.005) << mt::dtype_name(dt);
    EXPECT_GE(lo, 0.0);
    EXPECT_LT(hi, 1.0);  // never rounds up to 1
    auto z = mt::testing::values(Tensor::randn({100001}, dt));
    double m1 = 0, m2 = 0;
    for (double v : z) { m1 += v; m2 += v * v; }
    m1 /= z.size();
    m2 /= z.size();
    EXPECT_NEAR(m1, 0.0, 0.01) << mt::dtype_name(dt);
    EXPECT_NEAR(m2, 1.0, 0.02) << mt::dtype_name(dt);
  }
}

TEST(Random, SeedsAndOffsetsAreReproducible) {
  mt::Generator g1(42), g2(42), g3(43);
  auto a = mt::testing::values(Tensor::randn({37}, DType::f32, mt::Device::cpu(), &g1));
  auto b = mt::testing::values(Tensor::randn({37}, DType::f32, mt::Device::cpu(), &g2));
  auto c = mt::testing::values(Tensor::randn({37}, DType::f32, mt::Device::cpu(), &g3));
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  auto a2 = mt::testing::values(Tensor::randn({37}, DType::f32, mt::Device::cpu(), &g1));
  EXPECT_NE(a, a2);  // the offset advanced
  EXPECT_THROW(Tensor::rand({3}, DType::i32), mt::TypeError);
}
