// Whole-tensor arithmetic (add, mul, neg_exp): the CPU ops against naive loops,
// in place, argument checks; the CUDA ops against the CPU ops (skipped without a GPU).
#include <cmath>

#include "testing.h"

namespace mt = mambatron;
using mt::Device;
using mt::DType;
using mt::Shape;
using mt::Tensor;
using namespace mt::testing;

namespace {
const Shape kShapes[] = {{1}, {7, 37}, {3, 5, 129}, {1000, 33}};

Tensor apply(const char* op, const Tensor& a, const Tensor& b, Device dev, DType dt) {
  Tensor out = poisoned(a.shape(), dt, dev);
  Tensor da = a.to(dev, dt), db = b.to(dev, dt);
  if (std::string(op) == "add") mt::add(da, db, out);
  else if (std::string(op) == "mul") mt::mul(da, db, out);
  else mt::neg_exp(da, out);
  return out;
}

double naive(const char* op, double a, double b) {
  if (std::string(op) == "add") return a + b;
  if (std::string(op) == "mul") return a * b;
  return -std::exp(a);
}
}  // namespace

TEST(Arith, CpuMatchesNaiveLoops) {
  for (const Shape& s : kShapes)
    for (const char* op : {"add", "mul", "neg_exp"}) {
      Tensor a = randn(s), b = randn(s);
      Tensor out = apply(op, a, b, Device::cpu(), DType::f64);
      std::vector<double> va = values(a), vb = values(b), vo = values(out);
      for (size_t i = 0; i < vo.size(); ++i) ASSERT_DOUBLE_EQ(vo[i], naive(op, va[i], vb[i])) << op << " " << i;
      // The f32 op against f64 on the same f32 inputs: only the result's rounding is
      // left (rounding the inputs too would be unbounded where a + b cancels).
      Tensor a32 = a.to(DType::f32).to(DType::f64), b32 = b.to(DType::f32).to(DType::f64);
      Tensor out32 = apply(op, a32, b32, Device::cpu(), DType::f32);
      EXPECT_LE(max_rel_error(out32, apply(op, a32, b32, Device::cpu(), DType::f64)), 1e-6) << op;
    }
}

TEST(Arith, InPlace) {
  Tensor a = randn({5, 9}), b = randn({5, 9}), expect = a.clone();
  mt::add(expect, b, expect);
  Tensor y = a.clone();
  mt::add(y, b, y);
  EXPECT_EQ(max_abs_diff(y, expect), 0.0);
}

TEST(Arith, Errors) {
  Tensor a = randn({4, 3}), b = randn({3, 4}), out = Tensor::empty({4, 3}, DType::f64);
  expect_error<mt::ValueError>([&] { mt::add(a, b, out); }, "add: argument 'b' has shape");
  Tensor i = Tensor::zeros({4, 3}, DType::i32);
  expect_error<mt::TypeError>([&] { mt::mul(i, i, out); }, "mul: argument 'a' has dtype i32");
  Tensor f = Tensor::empty({4, 3}, DType::f32);
  expect_error<mt::TypeError>([&] { mt::neg_exp(a, f); }, "neg_exp: argument 'out'");
}

TEST(CudaArith, MatchCpuWithinRule) {
  SKIP_WITHOUT_GPU();
  for (const Shape& s : kShapes)
    for (const char* op : {"add", "mul", "neg_exp"})
      for (DType dt : {DType::bf16, DType::f32}) {
        // Inputs rounded to dt first, so both sides see the same numbers.
        Tensor a = randn(s).to(dt).to(DType::f64), b = randn(s).to(dt).to(DType::f64);
        Tensor gpu = apply(op, a, b, Device::cuda(0), dt);
        Tensor ref = apply(op, a, b, Device::cpu(), DType::f64);
        Tensor cpu_same = apply(op, a, b, Device::cpu(), DType::f32).to(dt).to(DType::f64);
        expect_within_rule(gpu.to(Device::cpu()).to(DType::f64), cpu_same, ref, op, 1e-6);
      }
}
