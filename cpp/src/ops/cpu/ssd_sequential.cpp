// SSD on the CPU, sequential form: the recurrence token by token, its backward,
// and the one-token decode step. One task per (batch row, head), run by OpenMP.
#include <Eigen/Core>
#include <algorithm>
#include <vector>

#include "scratch.h"
#include "../backend.h"
#include "ssd.h"

namespace mambatron::cpu {
namespace ssd {

namespace {

template <class T>
using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using Vec = Eigen::Matrix<T, Eigen::Dynamic, 1>;

// H ← alpha·H + Δ·x ⊗ B, then y = H·C + D·x, for one token of one head (H: p×n).
// Eigen vectorizes the row sums, which plain loops cannot without reassociation.
template <class T>
void advance(T* H, int64_t p, int64_t n, T alpha, T dv, const T* x, const T* B, const T* C, T Dj, T* y) {
  Eigen::Map<Mat<T>> Hm(H, p, n);
  Eigen::Map<const Vec<T>> xv(x, p), Bv(B, n), Cv(C, n);
  Hm = alpha * Hm + (dv * xv) * Bv.transpose();
  if (y) Eigen::Map<Vec<T>>(y, p).noalias() = Hm * Cv + Dj * xv;
}

template <class T>
void load_initial_state(const Problem<T>& P, int64_t bi, int64_t j, T* H) {
  int64_t size = P.p * P.n;
  if (P.initial_state) std::copy_n(P.initial_state + P.state_offset(bi, j), size, H);
  else std::fill_n(H, size, T(0));
}

// Decay of the state from token t−1 into token t: exp(Δ_t·A), or 0 where a new document starts.
template <class T>
T decay(const Problem<T>& P, int64_t bi, int64_t t, double delta, double A) {
  bool reset = t > 0 && P.doc(bi, t) != P.doc(bi, t - 1);
  return reset ? T(0) : T(std::exp(delta * A));
}

// Tokens between saved states in backward: memory per task is (l/K + K)·p·n.
constexpr int64_t kSegment = 64;

}  // namespace

template <class T>
void sequential_forward(const Problem<T>& P, T* y, T* final_state) {
#pragma omp parallel for schedule(static)
  for (int64_t task = 0; task < P.b * P.h; ++task) {
    int64_t bi = task / P.h, j = task % P.h, gi = P.group(j);
    Scratch<T> H(P.p * P.n);
    load_initial_state(P, bi, j, H.data());
    double A = double(P.A[j]);
    for (int64_t t = 0; t < P.l; ++t) {
      double d = delta_at(P, bi, t, j).value;
      int64_t bc = P.bc_offset(bi, t, gi);
      advance(H.data(), P.p, P.n, decay(P, bi, t, d, A), T(d), P.x_at(bi, t, j), P.B + bc, P.C + bc, T(P.D_of(j)),
              y + P.dt_index(bi, t, j) * P.p);
    }
    if (final_state) std::copy(H.begin(), H.end(), final_state + P.state_offset(bi, j));
  }
}

// Reverse recurrence. With Ĥ_t the gradient of the loss with respect to H_t:
//   Ĥ_t = α_{t+1}·Ĥ_{t+1} + dy_t ⊗ C_t        (Ĥ_{l−1} also gets d_final_state)
//   dx_t = Δ_t·Ĥ_t·B_t + D·dy_t,  dB_t = Δ_t·Ĥ_tᵀ·x_t,  dC_t = H_tᵀ·dy_t,
//   dΔ_t = x_tᵀ·Ĥ_t·B_t + A·α_t·⟨Ĥ_t, H_{t−1}⟩,  dA = Σ_t Δ_t·α_t·⟨Ĥ_t, H_{t−1}⟩.
// H_{t−1} is recomputed forward from states saved every kSegment tokens.
template <class T>
void sequential_backward(const Problem<T>& P, const Grads<T>& G) {
  const int64_t p = P.p, n = P.n, pn = p * n, nseg = (P.l + kSegment - 1) / kSegment;
#pragma omp parallel for schedule(static)
  for (int64_t task = 0; task < P.b * P.h; ++task) {
    int64_t bi = task / P.h, j = task % P.h, gi = P.group(j);
    double A = double(P.A[j]), Dj = P.D_of(j);
    Scratch<T> saved(nseg * pn), Hs((kSegment + 1) * pn), Hadj(pn);
    Vec<T> hb(p);
    std::vector<Delta> deltas(kSegment);
    Scratch<T> alphas(kSegment);
    // Forward pass keeping the state that enters each segment.
    Scratch<T> H(pn);
    load_initial_state(P, bi, j, H.data());
    for (int64_t t = 0; t < P.l; ++t) {
      if (t % kSegment == 0) std::copy(H.begin(), H.end(), saved.begin() + (t / kSegment) * pn);
      double d = delta_at(P, bi, t, j).value;
      int64_t bc = P.bc_offset(bi, t, gi);
      advance<T>(H.data(), p, n, decay(P, bi, t, d, A), T(d), P.x_at(bi, t, j), P.B + bc, P.C + bc, T(0), nullptr);
    }
    if (G.d_final_state) std::copy_n(G.d_final_state + P.state_offset(bi, j), pn, Hadj.begin());
    else std::fill(Hadj.begin(), Hadj.end(), T(0));
    double dA = 0, dD = 0, dbias = 0;
    for (int64_t seg = nseg - 1; seg >= 0; --seg) {
      int64_t t0 = seg * kSegment, t1 = std::min(P.l, t0 + kSegment);
      // Hs[s] = H_{t0+s−1}: the segment's states, recomputed.
      std::copy_n(saved.begin() + seg * pn, pn, Hs.begin());
      for (int64_t t = t0; t < t1; ++t) {
        int64_t s = t - t0, bc = P.bc_offset(bi, t, gi);
        deltas[s] = delta_at(P, bi, t, j);
        alphas[s] = decay(P, bi, t, deltas[s].value, A);
        std::copy_n(Hs.begin() + s * pn, pn, Hs.begin() + (s + 1) * pn);
        advance<T>(Hs.data() + (s + 1) * pn, p, n, alphas[s], T(deltas[s].value), P.x_at(bi, t, j), P.B + bc,
                   P.C + bc, T(0), nullptr);
      }
      for (int64_t t = t1 - 1; t >= t0; --t) {
        int64_t s = t - t0, bc = P.bc_offset(bi, t, gi), row = P.dt_index(bi, t, j);
        const T *x = P.x_at(bi, t, j), *Bt = P.B + bc, *Ct = P.C + bc, *dy = G.dy + row * p;
        const T *Hprev = Hs.data() + s * pn, *Hcur = Hs.data() + (s + 1) * pn;
        T dv = T(deltas[s].value), alpha = alphas[s];
        Eigen::Map<Mat<T>> Ha(Hadj.data(), p, n);
        Eigen::Map<const Mat<T>> Hp(Hprev, p, n), Hc(Hcur, p, n);
        Eigen::Map<const Vec<T>> xv(x, p), Bv(Bt, n), Cv(Ct, n), dyv(dy, p);
        Ha.noalias() += dyv * Cv.transpose();  // now Ĥ_t
        hb.noalias() = Ha * Bv;
        Eigen::Map<Vec<T>>(G.dx + row * p, p) = dv * hb + T(Dj) * dyv;
        Eigen::Map<Vec<T>>(G.dB_head + ((bi * P.h + j) * P.l + t) * n, n).noalias() = dv * (Ha.transpose() * xv);
        Eigen::Map<Vec<T>>(G.dC_head + ((bi * P.h + j) * P.l + t) * n, n).noalias() = Hc.transpose() * dyv;
        double xhb = double(xv.dot(hb)), hh = double(Ha.cwiseProduct(Hp).sum()), dyx = double(dyv.dot(xv));
        Ha *= alpha;  // now the gradient with respect to H_{t−1}
        double ddelta = xhb + A * double(alpha) * hh, ddt = ddelta * deltas[s].slope;
        G.ddt[row] = T(ddt);
        dA += deltas[s].value * double(alpha) * hh;
        dD += dyx;
        dbias += ddt;
      }
    }
    if (G.d_initial_state) std::copy(Hadj.begin(), Hadj.end(), G.d_initial_state + P.state_offset(bi, j));
    G.dA_part[task] = dA;
    G.dD_part[task] = dD;
    G.ddt_bias_part[task] = dbias;
  }
}

template void sequential_forward<float>(const Problem<float>&, float*, float*);
template void sequential_forward<double>(const Problem<double>&, double*, double*);
template void sequential_backward<float>(const Problem<float>&, const Grads<float>&);
template void sequential_backward<double>(const Problem<double>&, const Grads<double>&);

}  // namespace ssd

void ssd_step(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B, const Tensor& C, const Tensor& D,
              const Tensor& dt_bias, Tensor& state, Tensor& y, const SsdOptions& opt) {
  visit_f32_f64(x.dtype(), "ssd_step", [&](auto tag) {
    using T = typename decltype(tag)::type;
    int64_t b = x.size(0), h = x.size(1), p = x.size(2), g = B.size(1), n = B.size(2);
    const T *px = x.data<T>(), *pdt = dt.data<T>(), *pA = A.data<T>(), *pB = B.data<T>(), *pC = C.data<T>();
    const T* pD = D.data_or_null<T>();
    const T* pbias = dt_bias.data_or_null<T>();
    T *ps = state.data<T>(), *py = y.data<T>();
#pragma omp parallel for schedule(static)
    for (int64_t task = 0; task < b * h; ++task) {
      int64_t bi = task / h, j = task % h, gi = j / (h / g);
      double d = ssd::delta(double(pdt[task]), pbias ? double(pbias[j]) : 0.0, opt).value;
      const T* Bt = pB + (bi * g + gi) * n;
      const T* Ct = pC + (bi * g + gi) * n;
      ssd::advance(ps + task * p * n, p, n, T(std::exp(d * double(pA[j]))), T(d), px + task * p, Bt, Ct,
                   pD ? pD[j] : T(0), py + task * p);
    }
  });
}

}  // namespace mambatron::cpu
