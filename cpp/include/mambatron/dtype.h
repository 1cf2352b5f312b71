// Element types, host-side 16-bit float types with round-to-nearest-even,
// and a visitor that turns a runtime DType into a compile-time type.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

#include "mambatron/error.h"

namespace mambatron {

enum class DType : uint8_t { f32, f64, bf16, f16, i32, i64, u16, u8 };
constexpr int kNumDTypes = 8;

size_t dtype_size(DType dt);
const char* dtype_name(DType dt);  // "f32", "bf16", ...
// Accepts the short names and the long ones ("float32", "bfloat16", "half", "int64", ...).
DType dtype_from_string(const std::string& name);
inline bool is_floating(DType dt) {
  return dt == DType::f32 || dt == DType::f64 || dt == DType::bf16 || dt == DType::f16;
}

// ---- bit conversions (host) ----
inline uint32_t float_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float bits_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

// Rounds a double to float with round-to-odd, so that a second rounding to a
// narrower format (bf16, f16) is the correctly rounded result of the double.
float round_to_odd_float(double d);

inline float bf16_bits_to_float(uint16_t b) { return bits_float(uint32_t(b) << 16); }
inline uint16_t float_to_bf16_bits(float f) {
  uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
  return uint16_t(u >> 16);
}
float f16_bits_to_float(uint16_t h);
uint16_t float_to_f16_bits(float f);

struct bfloat16 {
  uint16_t bits = 0;
  bfloat16() = default;
  bfloat16(float f) : bits(float_to_bf16_bits(f)) {}
  bfloat16(double d) : bits(float_to_bf16_bits(round_to_odd_float(d))) {}
  operator float() const { return bf16_bits_to_float(bits); }
  static bfloat16 from_bits(uint16_t b) { bfloat16 r; r.bits = b; return r; }
};
struct float16 {
  uint16_t bits = 0;
  float16() = default;
  float16(float f) : bits(float_to_f16_bits(f)) {}
  float16(double d) : bits(float_to_f16_bits(round_to_odd_float(d))) {}
  operator float() const { return f16_bits_to_float(bits); }
  static float16 from_bits(uint16_t b) { float16 r; r.bits = b; return r; }
};

template <class T> struct DTypeOf;
template <> struct DTypeOf<float> { static constexpr DType value = DType::f32; };
template <> struct DTypeOf<double> { static constexpr DType value = DType::f64; };
template <> struct DTypeOf<bfloat16> { static constexpr DType value = DType::bf16; };
template <> struct DTypeOf<float16> { static constexpr DType value = DType::f16; };
template <> struct DTypeOf<int32_t> { static constexpr DType value = DType::i32; };
template <> struct DTypeOf<int64_t> { static constexpr DType value = DType::i64; };
template <> struct DTypeOf<uint16_t> { static constexpr DType value = DType::u16; };
template <> struct DTypeOf<uint8_t> { static constexpr DType value = DType::u8; };

template <class T> struct TypeTag { using type = T; };

// visit_dtype(dt, [&](auto tag) { using T = typename decltype(tag)::type; ... });
template <class F>
decltype(auto) visit_dtype(DType dt, F&& f) {
  switch (dt) {
    case DType::f32: return f(TypeTag<float>{});
    case DType::f64: return f(TypeTag<double>{});
    case DType::bf16: return f(TypeTag<bfloat16>{});
    case DType::f16: return f(TypeTag<float16>{});
    case DType::i32: return f(TypeTag<int32_t>{});
    case DType::i64: return f(TypeTag<int64_t>{});
    case DType::u16: return f(TypeTag<uint16_t>{});
    case DType::u8: return f(TypeTag<uint8_t>{});
  }
  throw TypeError("visit_dtype: invalid dtype code " + std::to_string(int(dt)));
}

// The same for ops that compute in fp32 or fp64 only (the CPU reference).
template <class F>
decltype(auto) visit_f32_f64(DType dt, const char* op, F&& f) {
  if (dt == DType::f32) return f(TypeTag<float>{});
  if (dt == DType::f64) return f(TypeTag<double>{});
  throw TypeError(detail::cat(op, ": dtype ", dtype_name(dt), " is not supported on the CPU, expected f32 or f64"));
}

}  // namespace mambatron
