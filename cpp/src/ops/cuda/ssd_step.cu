// SSD decode step on CUDA: one block per (row, head), one warp per state row i;
// lanes walk n, update H[i, :] in place and reduce y_i with a fixed shuffle tree.
#include "ssd_common.cuh"

namespace mambatron::cuda::ssd {

namespace {

constexpr int kStepThreads = 128;

template <class T>
__global__ void step_kernel(int64_t b, int64_t h, int64_t p, int64_t g, int64_t n, const T* __restrict__ x,
                            const T* __restrict__ dt, const float* __restrict__ A, const T* __restrict__ Bm,
                            const T* __restrict__ Cm, const float* __restrict__ D, const float* __restrict__ dt_bias,
                            DeltaOpt o, float* __restrict__ state, T* __restrict__ y) {
  const int64_t j = blockIdx.x % h, bi = blockIdx.x / h, gi = j / (h / g);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const double v = double(to_f32(dt[bi * h + j])) + (dt_bias ? double(dt_bias[j]) : 0.0);
  const double delta = delta_of(v, o).value;
  const float alpha = float(exp(delta * double(A[j]))), dv = float(delta), Dj = D ? D[j] : 0.f;
  const T* Bv = Bm + (bi * g + gi) * n;
  const T* Cv = Cm + (bi * g + gi) * n;
  for (int64_t i = warp; i < p; i += kStepThreads / 32) {
    const float xi = to_f32(x[(bi * h + j) * p + i]), dx = dv * xi;
    float* H = state + ((bi * h + j) * p + i) * n;
    float acc = 0.f;
    for (int64_t k = lane; k < n; k += 32) {
      const float hk = alpha * H[k] + dx * to_f32(Bv[k]);
      H[k] = hk;
      acc += hk * to_f32(Cv[k]);
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off);
    if (lane == 0) y[(bi * h + j) * p + i] = from_f32<T>(acc + Dj * xi);
  }
}

}  // namespace
}  // namespace mambatron::cuda::ssd

namespace mambatron::cuda {

void ssd_step(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B, const Tensor& C, const Tensor& D,
              const Tensor& dt_bias, Tensor& state, Tensor& y, const SsdOptions& opt) {
  using namespace ssd;
  const int dev = x.device().index;
  DeviceGuard guard(dev);
  const int64_t b = x.size(0), h = x.size(1), p = x.size(2), g = B.size(1), n = B.size(2);
  if (b * h == 0) return;
  visit_bf16_f32(x.dtype(), "ssd_step", "x", [&](auto tag) {
    using T = typename decltype(tag)::type;
    step_kernel<T><<<unsigned(b * h), kStepThreads, 0, stream(dev)>>>(
        b, h, p, g, n, static_cast<const T*>(x.data_ptr()), static_cast<const T*>(dt.data_ptr()),
        static_cast<const float*>(A.data_ptr()), static_cast<const T*>(B.data_ptr()),
        static_cast<const T*>(C.data_ptr()), cptr<float>(D), cptr<float>(dt_bias),
        delta_opt(opt), static_cast<float*>(state.data_ptr()), static_cast<T*>(y.data_ptr()));
    MT_CUDA_LAUNCH_CHECK();
  });
}

}  // namespace mambatron::cuda
