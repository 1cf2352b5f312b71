// SSD backward on CUDA: the per-token scalars, K = C·Bᵀ per group and chunk, the
// forward state pass (the state entering each chunk), the reverse state pass (the
// gradient leaving each chunk, and d_initial_state), then the per-chunk gradients
// (ssd_backward_dx_mma.cu and ssd_backward_bc_mma.cu where they apply, else
// ssd_backward_dx.cu and ssd_backward_bc.cu), and the per-head parameter gradients summed over rows and
// chunks in a fixed order.
#include "ssd_backward.h"

namespace mambatron::cuda::ssd {

namespace {

// out[j] = Σ_bi Σ_c part[bi, j, c] (bi, then c, in order) for each of the three parts.
__global__ void head_sums_kernel(Dims d, const double* __restrict__ pA, const double* __restrict__ pD,
                                 const double* __restrict__ pb, float* __restrict__ dA, float* __restrict__ dD,
                                 float* __restrict__ db) {
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (j >= d.h) return;
  double sA = 0, sD = 0, sb = 0;
  for (int64_t bi = 0; bi < d.b; ++bi)
    for (int64_t c = 0; c < d.nc; ++c) {
      const int64_t i = (bi * d.h + j) * d.nc + c;
      sA += pA[i], sD += pD[i], sb += pb[i];
    }
  dA[j] = float(sA);
  if (dD) dD[j] = float(sD);
  if (db) db[j] = float(sb);
}

}  // namespace
}  // namespace mambatron::cuda::ssd

namespace mambatron::cuda {

void ssd_backward(const Tensor& dy, const Tensor& d_final_state, const Tensor& x, const Tensor& dt, const Tensor& A,
                  const Tensor& B, const Tensor& C, const Tensor& D, const Tensor& dt_bias,
                  const Tensor& initial_state, const Tensor& seq_idx, Tensor& dx, Tensor& ddt, Tensor& dA, Tensor& dB,
                  Tensor& dC, Tensor& dD, Tensor& ddt_bias, Tensor& d_initial_state, const SsdOptions& opt) {
  using namespace ssd;
  const int dev = x.device().index;
  DeviceGuard guard(dev);
  cudaStream_t s = stream(dev);
  const Dims d = make_dims(x, B, opt);
  auto scratch = [&](int64_t n, DType t) { return Tensor::empty({n > 0 ? n : 1}, t, x.device()); };
  const int64_t tokens = d.b * d.h * d.l, state_elems = d.b * d.h * d.nc * d.p * d.n, parts = d.b * d.h * d.nc;
  Tensor delta = scratch(tokens, DType::f32), S = scratch(tokens, DType::f64);
  Tensor hin = scratch(state_elems, DType::f32), dhout = scratch(state_elems, DType::f32);
  Tensor part = scratch(3 * parts, DType::f64);
  Tensor K = scratch(d.b * d.nc * d.g * d.kq() * d.kq(), DType::f32);
  Tensor sync = scratch(state_pass_sync_ints(d), DType::i32);
  int32_t* psync = static_cast<int32_t*>(sync.data_ptr());
  visit_bf16_f32(x.dtype(), "ssd_backward", "x", [&](auto tag) {
    using T = typename decltype(tag)::type;
    BackwardArgs<T> a;
    a.dy = static_cast<const T*>(dy.data_ptr());
    a.x = static_cast<const T*>(x.data_ptr());
    a.dt = static_cast<const T*>(dt.data_ptr());
    a.B = static_cast<const T*>(B.data_ptr());
    a.C = static_cast<const T*>(C.data_ptr());
    a.A = static_cast<const float*>(A.data_ptr());
    a.D = cptr<float>(D);
    a.dt_bias = cptr<float>(dt_bias);
    a.o = delta_opt(opt);
    a.S = static_cast<const double*>(S.data_ptr());
    a.delta = static_cast<const float*>(delta.data_ptr());
    a.seq = cptr<int32_t>(seq_idx);
    a.hin = static_cast<const float*>(hin.data_ptr());
    a.dhout = static_cast<const float*>(dhout.data_ptr());
    a.K = static_cast<const float*>(K.data_ptr());
    a.dx = static_cast<T*>(dx.data_ptr());
    a.ddt = static_cast<T*>(ddt.data_ptr());
    a.dB = static_cast<T*>(dB.data_ptr());
    a.dC = static_cast<T*>(dC.data_ptr());
    a.part_dA = static_cast<double*>(part.data_ptr());
    a.part_dD = a.part_dA + parts;
    a.part_db = a.part_dD + parts;
    float* pdelta = static_cast<float*>(delta.data_ptr());
    double* pS = static_cast<double*>(S.data_ptr());
    launch_chunk_scalars<T>(d, a.dt, a.dt_bias, a.A, a.o, pdelta, pS, s);
    launch_chunk_cb<T>(d, a.C, a.B, static_cast<float*>(K.data_ptr()), s);
    launch_state_pass<T>(d, false, a.x, a.B, pdelta, pS, a.seq, cptr<float>(initial_state),
                         static_cast<float*>(hin.data_ptr()), nullptr, psync, s);
    launch_state_pass<T>(d, true, a.dy, a.C, pdelta, pS, a.seq, cptr<float>(d_final_state),
                         static_cast<float*>(dhout.data_ptr()), mptr<float>(d_initial_state), psync, s);
    if constexpr (kTensorCores<T>) {
      if (dx_mma_supported(d, a)) launch_dx_mma(d, a, s);
      else launch_dx<T>(d, a, s);
      if (bc_mma_supported(d, a)) launch_bc_mma(d, a, s);
      else launch_bc<T>(d, a, s);
    } else {
      launch_dx<T>(d, a, s);
      launch_bc<T>(d, a, s);
    }
  });
  if (d.h > 0) {
    head_sums_kernel<<<grid_for(d.h, 128), 128, 0, s>>>(
        d, static_cast<const double*>(part.data_ptr()), static_cast<const double*>(part.data_ptr()) + parts,
        static_cast<const double*>(part.data_ptr()) + 2 * parts, static_cast<float*>(dA.data_ptr()),
        mptr<float>(dD), mptr<float>(ddt_bias));
    MT_CUDA_LAUNCH_CHECK();
  }
}

}  // namespace mambatron::cuda
