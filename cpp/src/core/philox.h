// Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
// SC 2011) and the maps from its words to uniform and normal numbers. Shared by
// the CPU and CUDA kernels; every operation here is exactly rounded IEEE
// arithmetic (explicit fma, no library log/sin/cos), so both devices draw
// bit-identical numbers.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define MT_HD __host__ __device__ __forceinline__
#else
#define MT_HD inline
#endif

namespace mambatron::rng {

struct Words { uint32_t w[4]; };

MT_HD Words philox(uint64_t counter_lo, uint64_t counter_hi, uint64_t key) {
  uint32_t c0 = uint32_t(counter_lo), c1 = uint32_t(counter_lo >> 32);
  uint32_t c2 = uint32_t(counter_hi), c3 = uint32_t(counter_hi >> 32);
  uint32_t k0 = uint32_t(key), k1 = uint32_t(key >> 32);
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = uint64_t(0xD2511F53u) * c0, p1 = uint64_t(0xCD9E8D57u) * c2;
    uint32_t n0 = uint32_t(p1 >> 32) ^ c1 ^ k0, n1 = uint32_t(p1);
    uint32_t n2 = uint32_t(p0 >> 32) ^ c3 ^ k1, n3 = uint32_t(p0);
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Words{{c0, c1, c2, c3}};
}

// 53 random bits from two words.
MT_HD uint64_t bits53(uint32_t hi, uint32_t lo) { return ((uint64_t(hi) << 32) | lo) >> 11; }

MT_HD double bits_to_double(uint64_t b) {
  double d;
  memcpy(&d, &b, 8);
  return d;
}
MT_HD uint64_t double_to_bits(double d) {
  uint64_t b;
  memcpy(&b, &d, 8);
  return b;
}

// Natural log of a positive normal double: x = m·2^e with m in [√½, √2),
// log m = 2·atanh(s), s = (m−1)/(m+1), |s| ≤ 0.172, by its series to s^25.
MT_HD double portable_log(double x) {
  uint64_t b = double_to_bits(x);
  int e = int((b >> 52) & 0x7ff) - 1023;
  double m = bits_to_double((b & 0x000fffffffffffffULL) | 0x3ff0000000000000ULL);
  if (m > 1.4142135623730951) { m = m * 0.5; e += 1; }
  double s = (m - 1.0) / (m + 1.0), s2 = s * s;
  double p = 1.0 / 25;
  p = fma(p, s2, 1.0 / 23); p = fma(p, s2, 1.0 / 21); p = fma(p, s2, 1.0 / 19); p = fma(p, s2, 1.0 / 17);
  p = fma(p, s2, 1.0 / 15); p = fma(p, s2, 1.0 / 13); p = fma(p, s2, 1.0 / 11); p = fma(p, s2, 1.0 / 9);
  p = fma(p, s2, 1.0 / 7); p = fma(p, s2, 1.0 / 5); p = fma(p, s2, 1.0 / 3); p = fma(p, s2, 1.0);
  const double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
  double de = double(e);
  return fma(de, ln2_hi, fma(de, ln2_lo, 2.0 * s * p));
}

// sin and cos of 2π·u for u in [0, 1): reduce to a quarter turn exactly, then
// Taylor polynomials on [−π/4, π/4].
MT_HD void portable_sincos_2pi(double u, double* sin_out, double* cos_out) {
  double t = 4.0 * u;
  double q = floor(t + 0.5);
  double a = (t - q) * 1.5707963267948966;
  double a2 = a * a;
  double sp = -1.0 / 1307674368000.0;  // -1/15!
  sp = fma(sp, a2, 1.0 / 6227020800.0); sp = fma(sp, a2, -1.0 / 39916800.0); sp = fma(sp, a2, 1.0 / 362880.0);
  sp = fma(sp, a2, -1.0 / 5040.0); sp = fma(sp, a2, 1.0 / 120.0); sp = fma(sp, a2, -1.0 / 6.0);
  double sn = fma(a * a2, sp, a);
  double cp = 1.0 / 20922789888000.0;  // 1/16!
  cp = fma(cp, a2, -1.0 / 87178291200.0); cp = fma(cp, a2, 1.0 / 479001600.0); cp = fma(cp, a2, -1.0 / 3628800.0);
  cp = fma(cp, a2, 1.0 / 40320.0); cp = fma(cp, a2, -1.0 / 720.0); cp = fma(cp, a2, 1.0 / 24.0);
  cp = fma(cp, a2, -0.5);
  double cs = fma(a2, cp, 1.0);
  switch (int(q) & 3) {
    case 0: *sin_out = sn; *cos_out = cs; break;
    case 1: *sin_out = cs; *cos_out = -sn; break;
    case 2: *sin_out = -sn; *cos_out = -cs; break;
    default: *sin_out = -cs; *cos_out = sn; break;
  }
}

// Uniform in [0, 1) with `bits` significant bits (24 f32, 53 f64, 8 bf16, 11 f16),
// so the value is exact in its dtype and never rounds up to 1.
MT_HD double uniform_from_word(uint32_t w, int bits) { return double(w >> (32 - bits)) * ldexp(1.0, -bits); }

// The i-th uniform number of a draw that starts at counter `offset` (four
// numbers per counter, two when more than 32 bits are needed).
MT_HD double uniform_at(uint64_t i, uint64_t seed, uint64_t offset, int bits) {
  if (bits > 32) {
    Words r = philox(offset + i / 2, 0, seed);
    int j = int(i % 2) * 2;
    return double(bits53(r.w[j], r.w[j + 1])) * ldexp(1.0, -53);
  }
  Words r = philox(offset + i / 4, 0, seed);
  return uniform_from_word(r.w[i % 4], bits);
}

// The i-th standard normal number of a draw: Box–Muller, two per counter.
MT_HD double normal_at(uint64_t i, uint64_t seed, uint64_t offset) {
  Words r = philox(offset + i / 2, 0, seed);
  double u1 = double(bits53(r.w[0], r.w[1]) + 1) * ldexp(1.0, -53);  // (0, 1]
  double u2 = double(bits53(r.w[2], r.w[3])) * ldexp(1.0, -53);      // [0, 1)
  double radius = sqrt(-2.0 * portable_log(u1));
  double s, c;
  portable_sincos_2pi(u2, &s, &c);
  return radius * ((i % 2) ? s : c);
}

}  // namespace mambatron::rng
