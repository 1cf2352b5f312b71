// AdamW and the global gradient norm on the CPU. The norm's reduction order is fixed by
// blocks of kBlock elements (not by threads): each block is summed in f64 by one thread,
// then the block sums are added in order, so the result is the same for any thread count.
#include "adamw.h"

#include <algorithm>
#include <cmath>

namespace mambatron::cpu {

namespace {

// Below this many elements a loop runs on one thread: starting a team costs more.
constexpr int64_t kParallelWork = 1 << 15;

template <class T>
void adamw_typed(T* p, const T* g, T* m, T* v, const uint8_t* mask, int64_t N, const AdamWOptions& o) {
  // Scalars in f64 first, then rounded once to T.
  const T b1 = T(o.beta1), b2 = T(o.beta2), c1 = T(1.0 - o.beta1), c2 = T(1.0 - o.beta2);
  const T bc1 = T(1.0 - std::pow(o.beta1, double(o.step)));
  const T bc2 = T(1.0 - std::pow(o.beta2, double(o.step)));
  const T lr = T(o.lr), decay = T(o.lr * o.weight_decay), eps = T(o.eps);
#pragma omp parallel for schedule(static) if (N >= kParallelWork)
  for (int64_t i = 0; i < N; ++i) {
    const T gi = g[i];
    const T mi = b1 * m[i] + c1 * gi;
    const T vi = b2 * v[i] + c2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    T pi = p[i];
    if (!mask || mask[i]) pi -= decay * pi;  // decoupled: uses p before the Adam step
    p[i] = pi - lr * (mi / bc1) / (std::sqrt(vi / bc2) + eps);
  }
}

constexpr int64_t kBlock = int64_t(1) << 14;

struct Block {
  size_t tensor;
  int64_t start, len;
};

std::vector<Block> make_blocks(const std::vector<Tensor>& ts) {
  std::vector<Block> blocks;
  for (size_t t = 0; t < ts.size(); ++t)
    for (int64_t s = 0; s < ts[t].numel(); s += kBlock) blocks.push_back({t, s, std::min(kBlock, ts[t].numel() - s)});
  return blocks;
}

// Σ (x·inv)² over one block, four interleaved f64 accumulators (a fixed order).
template <class T>
double block_sumsq(const T* x, int64_t len, double inv) {
  double a[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= len; i += 4)
    for (int k = 0; k < 4; ++k) {
      double y = double(x[i + k]) * inv;
      a[k] += y * y;
    }
  for (; i < len; ++i) {
    double y = double(x[i]) * inv;
    a[0] += y * y;
  }
  return (a[0] + a[1]) + (a[2] + a[3]);
}

// max |x| over one block; NaN when any element is NaN.
template <class T>
double block_maxabs(const T* x, int64_t len) {
  double mx = 0;
  for (int64_t i = 0; i < len; ++i) {
    double y = std::fabs(double(x[i]));
    if (std::isnan(y)) return y;
    mx = std::max(mx, y);
  }
  return mx;
}

template <class F>
double visit_block(const std::vector<Tensor>& ts, const Block& b, F&& f) {
  const Tensor& t = ts[b.tensor];
  if (t.dtype() == DType::f32) return f(t.data<float>() + b.start, b.len);
  return f(t.data<double>() + b.start, b.len);
}

double sumsq(const std::vector<Tensor>& ts, const std::vector<Block>& blocks, double inv) {
  std::vector<double> part(blocks.size());
#pragma omp parallel for schedule(static) if (blocks.size() > 1)
  for (int64_t b = 0; b < int64_t(blocks.size()); ++b)
    part[b] = visit_block(ts, blocks[b], [&](const auto* x, int64_t len) { return block_sumsq(x, len, inv); });
  double s = 0;
  for (double x : part) s += x;
  return s;
}

}  // namespace

void adamw_update(const Tensor& params, const Tensor& grads, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                  const Tensor& decay_mask, const AdamWOptions& opt) {
  const uint8_t* mask = decay_mask.data_or_null<uint8_t>();
  visit_f32_f64(params.dtype(), "adamw_update", [&](auto tag) {
    using T = typename decltype(tag)::type;
    adamw_typed<T>(params.data<T>(), grads.data<T>(), exp_avg.data<T>(), exp_avg_sq.data<T>(), mask,
                   params.numel(), opt);
  });
}

double grad_norm(const std::vector<Tensor>& grads) {
  const std::vector<Block> blocks = make_blocks(grads);
  const double s = sumsq(grads, blocks, 1.0);
  // The plain sum is right unless squares overflowed (f64 elements beyond ~1e154) or the
  // sum is so small that squares lose digits to underflow; then divide every element by
  // the largest magnitude and sum again.
  if (std::isfinite(s) && s > 1e-280) return std::sqrt(s);
  std::vector<double> part(blocks.size());
#pragma omp parallel for schedule(static) if (blocks.size() > 1)
  for (int64_t b = 0; b < int64_t(blocks.size()); ++b)
    part[b] = visit_block(grads, blocks[b], [](const auto* x, int64_t len) { return block_maxabs(x, len); });
  double mx = 0;
  for (double x : part) {
    if (std::isnan(x)) return x;  // a NaN element: the norm is NaN
    mx = std::max(mx, x);
  }
  if (mx == 0 || std::isinf(mx)) return mx;  // all zeros, or an infinite element
  return mx * std::sqrt(sumsq(grads, blocks, 1.0 / mx));
}

void scale_inplace(const std::vector<Tensor>& grads, double scale) {
  for (const Tensor& t : grads) {
    visit_f32_f64(t.dtype(), "clip_grad_norm", [&](auto tag) {
      using T = typename decltype(tag)::type;
      T* x = t.data<T>();
      const T s = T(scale);
      const int64_t n = t.numel();
#pragma omp parallel for schedule(static) if (n >= kParallelWork)
      for (int64_t i = 0; i < n; ++i) x[i] *= s;
    });
  }
}

}  // namespace mambatron::cpu
