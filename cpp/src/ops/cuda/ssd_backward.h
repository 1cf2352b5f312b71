// The SSD backward's per-chunk kernels and what they read: ssd_backward_dx.cu (dx,
// ddt, the chunk shares of dA, dD, ddt_bias), ssd_backward_bc.cu (dB, dC) and, for
// bf16 with p and n multiples of 64, ssd_backward_bc_mma.cu (dB, dC on mma.sync).
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

// The tensor-core dB/dC path: bf16, p and n multiples of 64 (and > 0), 16-byte aligned
// rows. It needs bc_mma_scratch(d) bf16 elements of scratch (Σ_j PW_j as hi/lo parts
// for every row, chunk and group).
bool bc_mma_supported(const Dims& d, const BackwardArgs<bf16>& a);
inline int64_t bc_mma_scratch(const Dims& d) { return d.b * d.nc * d.g * 2 * d.kq() * d.kq(); }
void launch_bc_mma(const Dims& d, const BackwardArgs<bf16>& a, bf16* pw, cudaStream_t s);

}  // namespace mambatron::cuda::ssd
