#include "mambatron/dtype.h"

#include <cmath>

namespace mambatron {

size_t dtype_size(DType dt) {
  switch (dt) {
    case DType::f64: case DType::i64: return 8;
    case DType::f32: case DType::i32: return 4;
    case DType::bf16: case DType::f16: case DType::u16: return 2;
    case DType::u8: return 1;
  }
  throw TypeError("dtype_size: invalid dtype code " + std::to_string(int(dt)));
}

const char* dtype_name(DType dt) {
  static const char* names[kNumDTypes] = {"f32", "f64", "bf16", "f16", "i32", "i64", "u16", "u8"};
  int i = int(dt);
  return i >= 0 && i < kNumDTypes ? names[i] : "invalid";
}

DType dtype_from_string(const std::string& s) {
  struct Alias { const char* name; DType dt; };
  static const Alias aliases[] = {
      {"f32", DType::f32}, {"float32", DType::f32}, {"float", DType::f32},
      {"f64", DType::f64}, {"float64", DType::f64}, {"double", DType::f64},
      {"bf16", DType::bf16}, {"bfloat16", DType::bf16},
      {"f16", DType::f16}, {"float16", DType::f16}, {"half", DType::f16},
      {"i32", DType::i32}, {"int32", DType::i32},
      {"i64", DType::i64}, {"int64", DType::i64},
      {"u16", DType::u16}, {"uint16", DType::u16},
      {"u8", DType::u8}, {"uint8", DType::u8},
  };
  for (const auto& a : aliases)
    if (s == a.name) return a.dt;
  throw TypeError("unknown dtype '" + s + "': expected one of f32 f64 bf16 f16 i32 i64 u16 u8");
}

float round_to_odd_float(double d) {
  float f = static_cast<float>(d);
  if (std::isnan(d) || std::isinf(d) || static_cast<double>(f) == d) return f;
  uint32_t u = float_bits(f);
  if (std::fabs(static_cast<double>(f)) > std::fabs(d)) u -= 1;  // rounded away: step back toward zero
  return bits_float(u | 1u);
}

float f16_bits_to_float(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) {
    float v = std::ldexp(static_cast<float>(m), -24);
    return bits_float(float_bits(v) | sign);
  }
  if (e == 31) return bits_float(sign | 0x7f800000u | (m << 13));
  return bits_float(sign | ((e + 112) << 23) | (m << 13));
}

uint16_t float_to_f16_bits(float f) {
  uint32_t x = float_bits(f);
  uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  uint32_t ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return sign | 0x7e00u;  // NaN
  if (ax >= 0x477ff000u) return sign | 0x7c00u;  // rounds past 65504: inf
  auto round_shift = [](uint32_t m, uint32_t s) {  // m >> s, ties to even
    uint32_t h = m >> s, rem = m & ((1u << s) - 1), half = 1u << (s - 1);
    return (rem > half || (rem == half && (h & 1u))) ? h + 1 : h;
  };
  uint32_t e = ax >> 23;
  if (e < 113) {  // half subnormal (or zero)
    uint32_t s = 126 - e;
    if (s > 24) return sign;
    return sign | uint16_t(round_shift((ax & 0x7fffffu) | 0x800000u, s));
  }
  uint32_t h = ((e - 112) << 10) | ((ax & 0x7fffffu) >> 13);
  uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h += 1;  // a carry rolls into the exponent
  return sign | uint16_t(h);
}

}  // namespace mambatron
