// The SSD (Mamba-2 scan) CPU reference: the entry points that ops/ssd.cpp calls
// after its checks, and what the sequential (ssd_sequential.cpp) and chunked
// (ssd_chunked.cpp) implementations share.
#pragma once
#include <cmath>
#include <cstdint>

#include "mambatron/ops.h"

namespace mambatron::cpu {

void ssd_forward(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B, const Tensor& C,
                 const Tensor& D, const Tensor& dt_bias, const Tensor& initial_state, const Tensor& seq_idx,
                 Tensor& y, Tensor& final_state, const SsdOptions& opt);
void ssd_backward(const Tensor& dy, const Tensor& d_final_state, const Tensor& x, const Tensor& dt, const Tensor& A,
                  const Tensor& B, const Tensor& C, const Tensor& D, const Tensor& dt_bias,
                  const Tensor& initial_state, const Tensor& seq_idx, Tensor& dx, Tensor& ddt, Tensor& dA, Tensor& dB,
                  Tensor& dC, Tensor& dD, Tensor& ddt_bias, Tensor& d_initial_state, const SsdOptions& opt);
void ssd_step(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B, const Tensor& C, const Tensor& D,
              const Tensor& dt_bias, Tensor& state, Tensor& y, const SsdOptions& opt);

namespace ssd {

// The inputs of one SSD problem as raw contiguous arrays; absent ones are null.
template <class T>
struct Problem {
  int64_t b, l, h, p, g, n;
  const T *x, *dt, *A, *B, *C;
  const T *D, *dt_bias, *initial_state;
  const int32_t* seq_idx;
  SsdOptions opt;

  int64_t group(int64_t j) const { return j / (h / g); }
  // Row t of x [b, l, h, p] for head j, and so on for the other layouts.
  const T* x_at(int64_t bi, int64_t t, int64_t j) const { return x + ((bi * l + t) * h + j) * p; }
  int64_t dt_index(int64_t bi, int64_t t, int64_t j) const { return (bi * l + t) * h + j; }
  int64_t bc_offset(int64_t bi, int64_t t, int64_t gi) const { return ((bi * l + t) * g + gi) * n; }
  int64_t state_offset(int64_t bi, int64_t j) const { return (bi * h + j) * p * n; }
  int32_t doc(int64_t bi, int64_t t) const { return seq_idx ? seq_idx[bi * l + t] : 0; }
  double D_of(int64_t j) const { return D ? double(D[j]) : 0.0; }
};

// Gradient outputs. dB and dC go per head ([b, h, l, n]) and the scalar
// parameters per (batch row, head) ([b, h], f64), so that every (row, head) task
// writes its own memory; ssd.cpp sums them in a fixed order afterwards.
template <class T>
struct Grads {
  const T* dy;             // [b, l, h, p]
  const T* d_final_state;  // [b, h, p, n] or null
  T *dx, *ddt;             // full outputs
  T *dB_head, *dC_head;    // [b, h, l, n]
  double *dA_part, *dD_part, *ddt_bias_part;  // [b, h]
  T* d_initial_state;      // [b, h, p, n] or null
};

// Δ for one token and head, and dΔ/d(dt) (the softplus slope, 0 where clamped).
struct Delta {
  double value, slope;
};
inline Delta delta(double dt, double bias, const SsdOptions& opt) {
  double v = dt + bias, d = v, s = 1.0;
  if (opt.dt_softplus && v <= 20.0) {
    d = std::log1p(std::exp(v));
    s = 1.0 / (1.0 + std::exp(-v));
  }
  if (opt.dt_min && d < *opt.dt_min) d = *opt.dt_min, s = 0.0;
  if (opt.dt_max && d > *opt.dt_max) d = *opt.dt_max, s = 0.0;
  return {d, s};
}

template <class T>
Delta delta_at(const Problem<T>& P, int64_t bi, int64_t t, int64_t j) {
  return delta(double(P.dt[P.dt_index(bi, t, j)]), P.dt_bias ? double(P.dt_bias[j]) : 0.0, P.opt);
}

template <class T>
void sequential_forward(const Problem<T>& P, T* y, T* final_state);
template <class T>
void sequential_backward(const Problem<T>& P, const Grads<T>& G);
template <class T>
void chunked_forward(const Problem<T>& P, T* y, T* final_state);
template <class T>
void chunked_backward(const Problem<T>& P, const Grads<T>& G);

}  // namespace ssd
}  // namespace mambatron::cpu
