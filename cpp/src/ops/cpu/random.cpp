// Uniform and normal draws from the Philox generator (core/philox.h).
#include "../../core/philox.h"
#include "../backend.h"
#include "elementwise.h"

namespace mambatron::cpu {

namespace {
// Writes gen(i) into element i (row-major) of a contiguous floating tensor.
template <class G>
void generate(Tensor& dst, G&& gen) {
  visit_dtype(dst.dtype(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_floating_point_v<T> || std::is_same_v<T, bfloat16> || std::is_same_v<T, float16>) {
      T* d = static_cast<T*>(dst.data_ptr());
      int64_t n = dst.numel();
#pragma omp parallel for if (n > (1 << 14))
      for (int64_t i = 0; i < n; ++i) d[i] = cast_value<T>(gen(uint64_t(i)));
    } else {
      throw TypeError(std::string("rand: dtype ") + dtype_name(dst.dtype()) + " is not a floating type");
    }
  });
}
}  // namespace

void rand_uniform(Tensor& dst, uint64_t seed, uint64_t offset) {
  int bits = uniform_bits(dst.dtype());
  generate(dst, [=](uint64_t i) { return rng::uniform_at(i, seed, offset, bits); });
}

void rand_normal(Tensor& dst, uint64_t seed, uint64_t offset) {
  generate(dst, [=](uint64_t i) { return rng::normal_at(i, seed, offset); });
}

}  // namespace mambatron::cpu
