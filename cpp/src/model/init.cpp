// Parameter initialisation (MODELS.md §2, "Init"). Values are drawn in f64 from the
// counter-based Philox generator and rounded once into the parameter's dtype, so a
// seed gives the same weights on every device and in f32 and f64 alike.
#include <cmath>

#include "internal.h"

namespace mambatron::model_detail {

namespace {
// Counters reserved per parameter: parameter k draws from [k·2⁴⁰, (k+1)·2⁴⁰), so
// its values do not depend on the sizes of the parameters before it.
constexpr int kCounterBits = 40;
}  // namespace

void init_parameter(Tensor& p, const InitRule& rule, Generator& gen) {
  const Shape& shape = p.shape();
  Tensor v;
  switch (rule.kind) {
    case InitRule::normal: {
      v = Tensor::randn(shape, DType::f64, Device::cpu(), &gen);
      double* x = v.data<double>();
      for (int64_t i = 0; i < v.numel(); ++i) x[i] *= rule.a;
      break;
    }
    case InitRule::uniform: {
      v = Tensor::rand(shape, DType::f64, Device::cpu(), &gen);
      double* x = v.data<double>();
      for (int64_t i = 0; i < v.numel(); ++i) x[i] = rule.a + (rule.b - rule.a) * x[i];
      break;
    }
    case InitRule::constant:
      v = Tensor::full(shape, rule.a, DType::f64);
      break;
    case InitRule::dt_bias: {
      v = Tensor::rand(shape, DType::f64, Device::cpu(), &gen);
      double* x = v.data<double>();
      double lo = std::log(rule.a), hi = std::log(rule.b);
      for (int64_t i = 0; i < v.numel(); ++i) {
        double dt = std::max(std::exp(lo + (hi - lo) * x[i]), rule.c);
        x[i] = dt + std::log(-std::expm1(-dt));  // softplus(x) = dt
      }
      break;
    }
    case InitRule::log_uniform: {
      v = Tensor::rand(shape, DType::f64, Device::cpu(), &gen);
      double* x = v.data<double>();
      for (int64_t i = 0; i < v.numel(); ++i) x[i] = std::log(rule.a + (rule.b - rule.a) * x[i]);
      break;
    }
    case InitRule::s4d_real: {
      v = Tensor::empty(shape, DType::f64);
      double* x = v.data<double>();
      int64_t n = shape.back();
      for (int64_t i = 0; i < v.numel(); ++i) x[i] = std::log(double(i % n + 1));
      break;
    }
  }
  p.copy_(v);
}

}  // namespace mambatron::model_detail

namespace mambatron {

void Model::init(uint64_t seed) {
  for (size_t k = 0; k < params_.size(); ++k) {
    Generator gen(seed);
    gen.set_offset(uint64_t(k) << model_detail::kCounterBits);
    init_parameter(params_[k].second, specs_[k].init, gen);
  }
  sync_working_copy();
}

}  // namespace mambatron
