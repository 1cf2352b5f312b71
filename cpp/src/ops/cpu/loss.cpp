// Linear + cross-entropy on the CPU. Only the included rows are gathered, chunk_size at a
// time. For each row chunk, a first sweep over vocabulary chunks computes the logits
// block H·W_vᵀ (Eigen GEMM) and folds it into a running max and sum of exponentials
// (online logsumexp, sums in f64). For gradients a second sweep turns each logits block
// into coef·(softmax − one-hot) and feeds the GEMMs dH += G·W_v and dW_v += Gᵀ·H. With a
// single vocabulary chunk the exponentials of the first sweep are reused, not recomputed.
#include "loss.h"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "mambatron/error.h"

namespace mambatron::cpu {

namespace {

template <class T>
using RowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Below this many elements a loop runs on one thread: starting a team costs more.
constexpr int64_t kParallelWork = 1 << 15;

// The included positions in order, with their targets and weights.
struct Included {
  std::vector<int64_t> index, target;
  std::vector<double> weight;
  double total = 0;  // Σ weight, the loss's denominator
};

double mask_value(const Tensor& mask, int64_t i) {
  switch (mask.dtype()) {
    case DType::u8: return mask.data<uint8_t>()[i] ? 1.0 : 0.0;
    case DType::f32: return mask.data<float>()[i];
    default: return mask.data<double>()[i];
  }
}

// Reads targets and mask once, serially, so that bad values throw outside any parallel region.
Included find_included(const Tensor& targets, const Tensor& mask, int64_t V, int64_t ignore_index, const char* op) {
  Included inc;
  const int64_t n = targets.numel();
  for (int64_t i = 0; i < n; ++i) {
    int64_t t = targets.dtype() == DType::i32 ? int64_t(targets.data<int32_t>()[i]) : targets.data<int64_t>()[i];
    double m = mask.defined() ? mask_value(mask, i) : 1.0;
    MT_CHECK(std::isfinite(m) && m >= 0, ValueError, op, ": mask[", i, "] = ", m,
             ", expected a finite weight >= 0 (0 excludes the position)");
    if (t == ignore_index) continue;
    MT_CHECK(t >= 0 && t < V, ValueError, op, ": targets[", i, "] = ", t, " is outside the vocabulary [0, ", V,
             ") and is not ignore_index (", ignore_index, ")");
    if (m == 0) continue;
    inc.index.push_back(i);
    inc.target.push_back(t);
    inc.weight.push_back(m);
    inc.total += m;
  }
  return inc;
}

template <class T>
double run(const T* h, const T* w, int64_t n, int64_t d, int64_t V, const Included& inc,
           const LinearCrossEntropyOptions& opt, bool grad, T* dh, T* dw, T* losses) {
  if (losses) std::fill(losses, losses + n, T(0));
  if (grad) {
    std::fill(dh, dh + n * d, T(0));  // excluded rows keep these zeros
    if (!opt.accumulate_dw) std::fill(dw, dw + V * d, T(0));
  }
  const int64_t R = int64_t(inc.index.size());
  if (R == 0) return 0.0;

  const int64_t C = std::min(opt.chunk_size, R);
  const int64_t VC = opt.vocab_chunk_size > 0 ? std::min(opt.vocab_chunk_size, V) : V;
  const bool one_vocab_chunk = VC == V;
  using Block = Eigen::Map<RowMat<T>, Eigen::Unaligned, Eigen::OuterStride<>>;
  RowMat<T> hc(C, d), dhc(grad ? C : 0, d);
  // Rows of the logits block start on aligned addresses (stride a multiple of 16 values in an
  // aligned buffer): Eigen's vectorised exp and sums split a row by its alignment, so this
  // makes the rounding the same in every call (forward and backward give the same loss).
  const int64_t ld = (VC + 15) / 16 * 16;
  Eigen::Matrix<T, Eigen::Dynamic, 1> logits(C * ld);
  std::vector<double> mx(C), sum(C), target_logit(C), row_loss(R);

  for (int64_t r0 = 0; r0 < R; r0 += C) {
    const int64_t rc = std::min(C, R - r0);
#pragma omp parallel for schedule(static) if (rc * d >= kParallelWork)
    for (int64_t i = 0; i < rc; ++i)
      std::copy(h + inc.index[r0 + i] * d, h + (inc.index[r0 + i] + 1) * d, hc.row(i).data());
    const auto H = hc.topRows(rc);
    std::fill(mx.begin(), mx.end(), -std::numeric_limits<double>::infinity());
    std::fill(sum.begin(), sum.end(), 0.0);

    // Sweep 1: logsumexp and the target's logit.
    for (int64_t v0 = 0; v0 < V; v0 += VC) {
      const int64_t vc = std::min(VC, V - v0);
      Block L(logits.data(), rc, vc, Eigen::OuterStride<>(ld));
      Eigen::Map<const RowMat<T>> Wv(w + v0 * d, vc, d);
      L.noalias() = H * Wv.transpose();
#pragma omp parallel for schedule(static) if (rc * vc >= kParallelWork)
      for (int64_t i = 0; i < rc; ++i) {
        auto row = L.row(i).array();
        const int64_t t = inc.target[r0 + i] - v0;
        if (t >= 0 && t < vc) target_logit[i] = double(row(t));
        const double m = std::max(mx[i], double(row.maxCoeff()));
        row = (row - T(m)).exp();  // kept for sweep 2 when there is one vocabulary chunk
        const double s = row.template cast<double>().sum();
        sum[i] = sum[i] * std::exp(mx[i] - m) + s;  // rescale the earlier chunks to the new max
        mx[i] = m;
      }
    }
    for (int64_t i = 0; i < rc; ++i) {
      const double loss = mx[i] + std::log(sum[i]) - target_logit[i];
      row_loss[r0 + i] = loss;
      if (losses) losses[inc.index[r0 + i]] = T(loss);
    }
    if (!grad) continue;

    // Sweep 2: G = coef·(softmax − one-hot), coef = grad_scale·weight/total; then the GEMMs.
    auto dH = dhc.topRows(rc);
    dH.setZero();
    for (int64_t v0 = 0; v0 < V; v0 += VC) {
      const int64_t vc = std::min(VC, V - v0);
      Block G(logits.data(), rc, vc, Eigen::OuterStride<>(ld));
      Eigen::Map<const RowMat<T>> Wv(w + v0 * d, vc, d);
      if (!one_vocab_chunk) G.noalias() = H * Wv.transpose();
#pragma omp parallel for schedule(static) if (rc * vc >= kParallelWork)
      for (int64_t i = 0; i < rc; ++i) {
        const double coef = opt.grad_scale * inc.weight[r0 + i] / inc.total;
        // softmax_j · coef = exp(logit_j − max) · (coef / Σ exp(logit − max)): no rounding of the
        // logsumexp inside the exponential.
        auto row = G.row(i).array();
        if (one_vocab_chunk) row *= T(coef / sum[i]);
        else row = (row - T(mx[i])).exp() * T(coef / sum[i]);
        const int64_t t = inc.target[r0 + i] - v0;
        if (t >= 0 && t < vc) row(t) -= T(coef);
      }
      dH.noalias() += G * Wv;
      Eigen::Map<RowMat<T>> dWv(dw + v0 * d, vc, d);
      dWv.noalias() += G.transpose() * H;
    }
#pragma omp parallel for schedule(static) if (rc * d >= kParallelWork)
    for (int64_t i = 0; i < rc; ++i) std::copy(dH.row(i).data(), dH.row(i).data() + d, dh + inc.index[r0 + i] * d);
  }

  double total = 0;  // in row order: the same sum whatever the chunking or thread count
  for (int64_t r = 0; r < R; ++r) total += inc.weight[r] * row_loss[r];
  return total / inc.total;
}

}  // namespace

double linear_cross_entropy(const Tensor& h, const Tensor& w, const Tensor& targets, const Tensor& mask,
                            const LinearCrossEntropyOptions& opt, Tensor* dh, Tensor* dw, Tensor* losses,
                            const char* op) {
  const int64_t n = h.size(0), d = h.size(1), V = w.size(0);
  Included inc = find_included(targets, mask, V, opt.ignore_index, op);
  return visit_f32_f64(h.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return run<T>(h.data<T>(), w.data<T>(), n, d, V, inc, opt, dh != nullptr, dh ? dh->data<T>() : nullptr,
                  dw ? dw->data<T>() : nullptr, losses ? losses->data<T>() : nullptr);
  });
}

}  // namespace mambatron::cpu
