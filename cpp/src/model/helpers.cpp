// Small tensor helpers of the model: projections through gemm, column splits,
// elementwise sums and the arena, on either device.
#include <cmath>

#include "internal.h"
#include "mambatron/ops.h"

namespace mambatron::model_detail {

Tensor Arena::get(const std::string& name, const Shape& shape, std::optional<DType> dtype) {
  DType dt = dtype.value_or(prec_.act);
  auto it = buffers_.find(name);
  if (it != buffers_.end() && it->second.dtype() == dt) {
    if (it->second.shape() == shape) return it->second;
    if (it->second.numel() == shape_numel(shape)) return it->second.view(shape);
  }
  Tensor t = Tensor::empty(shape, dt, prec_.device);
  buffers_[name] = t;
  return t;
}

Workspace::Workspace(int64_t b_, int64_t l_, int64_t layers_count, const Precision& p)
    : b(b_), l(l_), prec(p), arena(p), layers(size_t(layers_count), Arena(p)) {}

Tensor as_2d(const Tensor& t, int64_t cols) { return t.view({t.numel() / cols, cols}); }

void linear(const Tensor& x, const Tensor& w, const Tensor& y, bool accumulate) {
  Tensor out = as_2d(y, w.size(0));
  GemmOptions opt;
  opt.trans_b = true;
  opt.beta = accumulate ? 1.0f : 0.0f;
  gemm(as_2d(x, w.size(1)), w, out, opt);
}

void linear_add(const Tensor& x, const Tensor& w, const Tensor& residual, const Tensor& y) {
  Tensor out = as_2d(y, w.size(0));
  GemmOptions opt;
  opt.trans_b = true;
  opt.beta = 1.0f;
  opt.addend = as_2d(residual, w.size(0));
  gemm(as_2d(x, w.size(1)), w, out, opt);
}

void linear_grad_weight(const Tensor& dy, const Tensor& x, const Tensor& dw, bool accumulate) {
  Tensor out = dw;
  GemmOptions opt;
  opt.trans_a = true;
  opt.beta = accumulate ? 1.0f : 0.0f;
  gemm(as_2d(dy, dw.size(0)), as_2d(x, dw.size(1)), out, opt);
}

void linear_grad_input(const Tensor& dy, const Tensor& w, const Tensor& dx, bool accumulate) {
  Tensor out = as_2d(dx, w.size(1));
  GemmOptions opt;
  opt.beta = accumulate ? 1.0f : 0.0f;
  gemm(as_2d(dy, w.size(0)), w, out, opt);
}

namespace {
int64_t total_columns(const std::vector<Tensor>& parts, int64_t rows) {
  int64_t c = 0;
  for (const Tensor& p : parts) c += p.numel() / rows;
  return c;
}
}  // namespace

void split_columns(const Tensor& src, const std::vector<Tensor>& parts) {
  int64_t cols = src.size(-1), rows = src.numel() / cols, start = 0;
  MT_CHECK(total_columns(parts, rows) == cols, ValueError, "split_columns: parts do not cover ", cols, " columns");
  Tensor s = as_2d(src, cols);
  for (const Tensor& p : parts) {
    int64_t c = p.numel() / rows;
    Tensor d = as_2d(p, c);
    d.copy_(s.narrow(1, start, c));
    start += c;
  }
}

void join_columns(const std::vector<Tensor>& parts, const Tensor& dst) {
  int64_t cols = dst.size(-1), rows = dst.numel() / cols, start = 0;
  MT_CHECK(total_columns(parts, rows) == cols, ValueError, "join_columns: parts do not cover ", cols, " columns");
  Tensor d = as_2d(dst, cols);
  for (const Tensor& p : parts) {
    int64_t c = p.numel() / rows;
    Tensor block = d.narrow(1, start, c);
    block.copy_(as_2d(p, c));
    start += c;
  }
}

Tensor Grads::out(size_t k) {
  if (!accumulate_) return views_[k];
  Tensor t = scratch_->get("grad_" + std::to_string(k), views_[k].shape(), views_[k].dtype());
  pending_.emplace_back(k, t);
  return t;
}

void Grads::finish() {
  for (auto& [k, t] : pending_) add_(views_[k], t);
  pending_.clear();
}

void add_(const Tensor& y, const Tensor& x) {
  Tensor out = y;
  add(y, x, out);
}

void neg_exp(const Tensor& a_log, const Tensor& a) {
  Tensor o = a;
  mambatron::neg_exp(a_log, o);
}

void mul_into(const Tensor& out, const Tensor& a, const Tensor& b) {
  Tensor o = out;
  mul(a, b, o);
}

}  // namespace mambatron::model_detail
