// SSD on the CPU: typed dispatch to the sequential or chunked form, and the fixed-order
// sums of per-head partial gradients (dB, dC over the heads of a group; dA, dD,
// ddt_bias over the batch), which keep backward deterministic.
#include "scratch.h"
#include "ssd.h"

#include <vector>

#include "../backend.h"

namespace mambatron::cpu {

namespace {

template <class T>
ssd::Problem<T> make_problem(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B, const Tensor& C,
                             const Tensor& D, const Tensor& dt_bias, const Tensor& initial_state,
                             const Tensor& seq_idx, const SsdOptions& opt) {
  ssd::Problem<T> P;
  P.b = x.size(0), P.l = x.size(1), P.h = x.size(2), P.p = x.size(3), P.g = B.size(2), P.n = B.size(3);
  P.x = x.data<T>(), P.dt = dt.data<T>(), P.A = A.data<T>(), P.B = B.data<T>(), P.C = C.data<T>();
  P.D = D.data_or_null<T>(), P.dt_bias = dt_bias.data_or_null<T>(), P.initial_state = initial_state.data_or_null<T>();
  P.seq_idx = seq_idx.data_or_null<int32_t>();
  P.opt = opt;
  return P;
}

}  // namespace

void ssd_forward(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B, const Tensor& C,
                 const Tensor& D, const Tensor& dt_bias, const Tensor& initial_state, const Tensor& seq_idx,
                 Tensor& y, Tensor& final_state, const SsdOptions& opt) {
  visit_f32_f64(x.dtype(), "ssd_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto P = make_problem<T>(x, dt, A, B, C, D, dt_bias, initial_state, seq_idx, opt);
    T* fs = final_state.data_or_null<T>();
    if (opt.chunk_size == 0) ssd::sequential_forward(P, y.data<T>(), fs);
    else ssd::chunked_forward(P, y.data<T>(), fs);
  });
}

void ssd_backward(const Tensor& dy, const Tensor& d_final_state, const Tensor& x, const Tensor& dt, const Tensor& A,
                  const Tensor& B, const Tensor& C, const Tensor& D, const Tensor& dt_bias,
                  const Tensor& initial_state, const Tensor& seq_idx, Tensor& dx, Tensor& ddt, Tensor& dA, Tensor& dB,
                  Tensor& dC, Tensor& dD, Tensor& ddt_bias, Tensor& d_initial_state, const SsdOptions& opt) {
  visit_f32_f64(x.dtype(), "ssd_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto P = make_problem<T>(x, dt, A, B, C, D, dt_bias, initial_state, seq_idx, opt);
    const int64_t b = P.b, l = P.l, h = P.h, g = P.g, n = P.n, heads = h / g;
    Scratch<T> dB_head(b * h * l * n), dC_head(b * h * l * n);
    Scratch<double> dA_part(b * h), dD_part(b * h), dbias_part(b * h);
    ssd::Grads<T> G{dy.data<T>(),   d_final_state.data_or_null<T>(),
                    dx.data<T>(),   ddt.data<T>(),
                    dB_head.data(), dC_head.data(),
                    dA_part.data(), dD_part.data(),
                    dbias_part.data(), d_initial_state.data_or_null<T>()};
    if (opt.chunk_size == 0) ssd::sequential_backward(P, G);
    else ssd::chunked_backward(P, G);

    // dB, dC [b, l, g, n]: the sum over the heads of each group, in head order.
    T *pdB = dB.data<T>(), *pdC = dC.data<T>();
#pragma omp parallel for schedule(static)
    for (int64_t bt = 0; bt < b * l; ++bt) {
      int64_t bi = bt / l, t = bt % l;
      for (int64_t gi = 0; gi < g; ++gi) {
        T *outB = pdB + (bt * g + gi) * n, *outC = pdC + (bt * g + gi) * n;
        for (int64_t k = 0; k < n; ++k) outB[k] = outC[k] = T(0);
        for (int64_t j = gi * heads; j < (gi + 1) * heads; ++j) {
          const T* srcB = dB_head.data() + ((bi * h + j) * l + t) * n;
          const T* srcC = dC_head.data() + ((bi * h + j) * l + t) * n;
          for (int64_t k = 0; k < n; ++k) outB[k] += srcB[k], outC[k] += srcC[k];
        }
      }
    }
    // Per-head parameters: the sum over batch rows, in row order.
    auto reduce = [&](const Scratch<double>& part, Tensor& out) {
      if (!out.defined()) return;
      T* o = out.data<T>();
      for (int64_t j = 0; j < h; ++j) {
        double s = 0;
        for (int64_t bi = 0; bi < b; ++bi) s += part[bi * h + j];
        o[j] = T(s);
      }
    };
    reduce(dA_part, dA);
    reduce(dD_part, dD);
    reduce(dbias_part, ddt_bias);
  });
}

}  // namespace mambatron::cpu
