// The SSD backward's per-chunk kernels and what they read: ssd_backward_dx.cu (dx,
// ddt, the chunk shares of dA, dD, ddt_bias) and ssd_backward_bc.cu (dB, dC).
#pragma once
#include "ssd_common.cuh"

namespace mambatron::cuda::ssd {

template <class T>
struct BackwardArgs {
  const T *dy, *x, *dt, *B, *C;
  const float *A, *D, *dt_bias;  // D, dt_bias may be null
  DeltaOpt o;
  const double* S;
  const float* delta;
  const int32_t* seq;
  const float *hin, *dhout;  // [b, h, nc, p, n]: the state entering / the gradient leaving each chunk
  const float* K;             // C·Bᵀ of each chunk and group (launch_chunk_cb)
  T *dx, *ddt, *dB, *dC;
  double *part_dA, *part_dD, *part_db;  // [b, h, nc]
};

template <class T>
void launch_dx(const Dims& d, const BackwardArgs<T>& a, cudaStream_t s);
template <class T>
void launch_bc(const Dims& d, const BackwardArgs<T>& a, cudaStream_t s);

}  // namespace mambatron::cuda::ssd
