// Helpers shared by the SSD tests: random problems, a naive fp64 loop of the
// recurrence written from MODELS.md, and calls of the ops into poisoned outputs.
#pragma once
#include <cmath>
#include <vector>

#include "testing.h"

namespace mambatron::testing::ssd {

struct Sizes {
  int64_t b, l, h, p, g, n;
};

// The inputs of one SSD call; optional ones may stay undefined.
struct Inputs {
  Sizes s;
  Tensor x, dt, A, B, C, D, dt_bias, initial_state, seq_idx;

  Inputs to(DType dt_) const {
    Inputs r = *this;
    for (Tensor* t : {&r.x, &r.dt, &r.A, &r.B, &r.C, &r.D, &r.dt_bias, &r.initial_state})
      if (t->defined()) *t = t->to(dt_);
    return r;
  }
  Shape state_shape() const { return {s.b, s.h, s.p, s.n}; }
};

struct Optional {
  bool D = true, dt_bias = true, initial_state = true;
};

// Random inputs; dt is drawn for the softplus case (raw values around −1) unless
// positive_dt asks for Δ itself (uniform in [0.05, 0.6)).
inline Inputs random_inputs(const Sizes& s, Optional o = {}, bool positive_dt = false) {
  Inputs in;
  in.s = s;
  in.x = randn({s.b, s.l, s.h, s.p});
  in.dt = positive_dt ? uniform({s.b, s.l, s.h}, 0.05, 0.6) : uniform({s.b, s.l, s.h}, -2.5, 0.5);
  in.A = uniform({s.h}, -2.0, -0.3);
  in.B = randn({s.b, s.l, s.g, s.n});
  in.C = randn({s.b, s.l, s.g, s.n});
  if (o.D) in.D = randn({s.h});
  if (o.dt_bias) in.dt_bias = uniform({s.h}, -0.5, 0.5);
  if (o.initial_state) in.initial_state = randn({s.b, s.h, s.p, s.n});
  return in;
}

// seq_idx [b, l] from document lengths per row (each row's lengths sum to l).
inline Tensor seq_idx_from_lengths(const std::vector<std::vector<int>>& rows, int64_t l) {
  Tensor t = Tensor::empty({int64_t(rows.size()), l}, DType::i32);
  int32_t* p = t.data<int32_t>();
  for (size_t r = 0; r < rows.size(); ++r) {
    int64_t pos = 0;
    for (size_t d = 0; d < rows[r].size(); ++d)
      for (int k = 0; k < rows[r][d]; ++k) p[r * l + pos++] = int32_t(d + 3 * r);  // ids need not start at 0
    EXPECT_EQ(pos, l);
  }
  return t;
}

struct Outputs {
  Tensor y, final_state;
};

inline Outputs forward(const Inputs& in, const SsdOptions& opt) {
  DType dt = in.x.dtype();
  Outputs o{poisoned(in.x.shape(), dt), poisoned(in.state_shape(), dt)};
  ssd_forward(in.x, in.dt, in.A, in.B, in.C, in.D, in.dt_bias, in.initial_state, in.seq_idx, o.y, o.final_state,
              opt);
  return o;
}

struct Gradients {
  Tensor dx, ddt, dA, dB, dC, dD, ddt_bias, d_initial_state;
  std::vector<std::pair<const char*, Tensor>> named() const {
    return {{"dx", dx}, {"ddt", ddt}, {"dA", dA}, {"dB", dB}, {"dC", dC}, {"dD", dD}, {"ddt_bias", ddt_bias},
            {"d_initial_state", d_initial_state}};
  }
};

inline Gradients backward(const Inputs& in, const Tensor& dy, const Tensor& d_final_state, const SsdOptions& opt) {
  DType dt = in.x.dtype();
  Gradients g{poisoned(in.x.shape(), dt), poisoned(in.dt.shape(), dt), poisoned(in.A.shape(), dt),
              poisoned(in.B.shape(), dt), poisoned(in.C.shape(), dt), poisoned({in.s.h}, dt),
              poisoned({in.s.h}, dt), poisoned(in.state_shape(), dt)};
  ssd_backward(dy, d_final_state, in.x, in.dt, in.A, in.B, in.C, in.D, in.dt_bias, in.initial_state, in.seq_idx,
               g.dx, g.ddt, g.dA, g.dB, g.dC, g.dD, g.ddt_bias, g.d_initial_state, opt);
  return g;
}

// The recurrence of MODELS.md §2 in plain loops over f64 copies of the inputs.
inline Outputs naive(const Inputs& in, const SsdOptions& opt) {
  const Sizes& s = in.s;
  auto x = values(in.x), dt = values(in.dt), A = values(in.A), B = values(in.B), C = values(in.C);
  std::vector<double> D(s.h, 0.0), bias(s.h, 0.0), H0(s.b * s.h * s.p * s.n, 0.0);
  if (in.D.defined()) D = values(in.D);
  if (in.dt_bias.defined()) bias = values(in.dt_bias);
  if (in.initial_state.defined()) H0 = values(in.initial_state);
  std::vector<int32_t> seq(s.b * s.l, 0);
  if (in.seq_idx.defined()) seq.assign(in.seq_idx.data<int32_t>(), in.seq_idx.data<int32_t>() + s.b * s.l);
  Outputs o{Tensor::empty(in.x.shape(), DType::f64), Tensor::empty(in.state_shape(), DType::f64)};
  double *y = o.y.data<double>(), *fs = o.final_state.data<double>();
  for (int64_t bi = 0; bi < s.b; ++bi)
    for (int64_t j = 0; j < s.h; ++j) {
      int64_t gi = j / (s.h / s.g);
      std::vector<double> H(H0.begin() + (bi * s.h + j) * s.p * s.n, H0.begin() + (bi * s.h + j + 1) * s.p * s.n);
      for (int64_t t = 0; t < s.l; ++t) {
        double v = dt[(bi * s.l + t) * s.h + j] + bias[j];
        double delta = opt.dt_softplus ? (v > 20 ? v : std::log(1 + std::exp(v))) : v;
        if (opt.dt_min) delta = std::max(delta, *opt.dt_min);
        if (opt.dt_max) delta = std::min(delta, *opt.dt_max);
        double decay = std::exp(delta * A[j]);
        if (t > 0 && seq[bi * s.l + t] != seq[bi * s.l + t - 1]) decay = 0;
        const double* xt = &x[((bi * s.l + t) * s.h + j) * s.p];
        const double* Bt = &B[((bi * s.l + t) * s.g + gi) * s.n];
        const double* Ct = &C[((bi * s.l + t) * s.g + gi) * s.n];
        for (int64_t i = 0; i < s.p; ++i) {
          double acc = 0;
          for (int64_t k = 0; k < s.n; ++k) {
            double& hik = H[i * s.n + k];
            hik = decay * hik + delta * xt[i] * Bt[k];
            acc += hik * Ct[k];
          }
          y[((bi * s.l + t) * s.h + j) * s.p + i] = acc + D[j] * xt[i];
        }
      }
      std::copy(H.begin(), H.end(), fs + (bi * s.h + j) * s.p * s.n);
    }
  return o;
}

inline SsdOptions options(int64_t chunk_size, bool softplus = true) {
  SsdOptions o;
  o.chunk_size = chunk_size;
  o.dt_softplus = softplus;
  return o;
}

}  // namespace mambatron::testing::ssd
