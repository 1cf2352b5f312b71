// AdamW and the gradient norm on CUDA. AdamW is one elementwise grid-stride pass
// with the step's scalars formed in f64 on the host and rounded once to f32, as
// on the CPU. The norm: each tensor is cut into a number of blocks that depends on
// its size alone; every block sums its squares in f64 (grid-stride per thread,
// then block_sum's fixed tree) into its own slot; one final block adds the slots
// in a fixed order. No atomics, so the bits repeat run after run.
#include <cmath>

#include "../backend.h"
#include "adamw.h"
#include "dense.cuh"

namespace mambatron::cuda {

namespace {
constexpr int kThreads = 256;
constexpr int64_t kMaxNormBlocks = 1024;

struct AdamScalars {
  float b1, b2, c1, c2, bc1, bc2, lr, decay, eps;
};

template <class C>
__global__ void adamw_kernel(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                             float* __restrict__ v, const uint8_t* __restrict__ mask, C* __restrict__ copy, int64_t n,
                             AdamScalars s) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float gi = g[i];
    const float mi = s.b1 * m[i] + s.c1 * gi;
    const float vi = s.b2 * v[i] + s.c2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    float pi = p[i];
    if (!mask || mask[i]) pi -= s.decay * pi;  // decoupled: uses p before the Adam step
    pi = pi - s.lr * (mi / s.bc1) / (sqrtf(vi / s.bc2) + s.eps);
    p[i] = pi;
    if (copy) copy[i] = from_f32<C>(pi);
  }
}

int64_t norm_blocks(int64_t n) {
  const int64_t b = (n + 4 * kThreads - 1) / (4 * kThreads);
  return b < 1 ? 1 : (b > kMaxNormBlocks ? kMaxNormBlocks : b);
}

template <class T>
__global__ void sumsq_kernel(const T* __restrict__ x, int64_t n, double* __restrict__ partial) {
  __shared__ double sh[32];
  double acc = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const double y = double(to_f32(x[i]));
    acc += y * y;
  }
  acc = block_sum(acc, sh);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// One block: thread t adds slots t, t + blockDim.x, ... in order, then the fixed tree.
__global__ void sum_partials_kernel(const double* __restrict__ partial, int64_t count, double* __restrict__ out) {
  __shared__ double sh[32];
  double acc = 0;
  for (int64_t i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
  acc = block_sum(acc, sh);
  if (threadIdx.x == 0) *out = acc;
}

template <class T>
__global__ void scale_kernel(T* __restrict__ x, int64_t n, float s) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    x[i] = from_f32<T>(to_f32(x[i]) * s);
}
}  // namespace

void adamw_update(const Tensor& params, const Tensor& grads, const Tensor& exp_avg, const Tensor& exp_avg_sq,
                  const Tensor& decay_mask, const AdamWOptions& o, const Tensor& params_copy) {
  const int dev = params.device().index;
  DeviceGuard guard(dev);
  const int64_t n = params.numel();
  if (n == 0) return;
  const AdamScalars s{float(o.beta1), float(o.beta2), float(1.0 - o.beta1), float(1.0 - o.beta2),
                      float(1.0 - std::pow(o.beta1, double(o.step))), float(1.0 - std::pow(o.beta2, double(o.step))),
                      float(o.lr), float(o.lr * o.weight_decay), float(o.eps)};
  auto* p = static_cast<float*>(params.data_ptr());
  auto* g = static_cast<const float*>(grads.data_ptr());
  auto* m = static_cast<float*>(exp_avg.data_ptr());
  auto* v = static_cast<float*>(exp_avg_sq.data_ptr());
  auto* mask = decay_mask.defined() ? static_cast<const uint8_t*>(decay_mask.data_ptr()) : nullptr;
  cudaStream_t st = stream(dev);
  if (!params_copy.defined()) {
    adamw_kernel<float><<<grid_for(n, kThreads), kThreads, 0, st>>>(p, g, m, v, mask, nullptr, n, s);
    MT_CUDA_LAUNCH_CHECK();
    return;
  }
  visit_bf16_f32(params_copy.dtype(), "adamw_update", "params_copy", [&](auto tag) {
    using C = typename decltype(tag)::type;
    adamw_kernel<C><<<grid_for(n, kThreads), kThreads, 0, st>>>(p, g, m, v, mask,
                                                                static_cast<C*>(params_copy.data_ptr()), n, s);
    MT_CUDA_LAUNCH_CHECK();
  });
}

double grad_norm(const std::vector<Tensor>& grads) {
  if (grads.empty()) return 0.0;
  const int dev = grads[0].device().index;
  DeviceGuard guard(dev);
  cudaStream_t st = stream(dev);
  int64_t slots = 0;
  for (const Tensor& t : grads) slots += t.numel() ? norm_blocks(t.numel()) : 0;
  if (slots == 0) return 0.0;
  Tensor partial = Tensor::empty({slots + 1}, DType::f64, grads[0].device());  // the last slot: the total
  double* pp = static_cast<double*>(partial.data_ptr());
  int64_t at = 0;
  for (const Tensor& t : grads) {
    const int64_t n = t.numel();
    if (n == 0) continue;
    const int64_t blocks = norm_blocks(n);
    visit_bf16_f32(t.dtype(), "grad_norm", "grads", [&](auto tag) {
      using T = typename decltype(tag)::type;
      sumsq_kernel<T><<<unsigned(blocks), kThreads, 0, st>>>(static_cast<const T*>(t.data_ptr()), n, pp + at);
      MT_CUDA_LAUNCH_CHECK();
    });
    at += blocks;
  }
  sum_partials_kernel<<<1, 1024, 0, st>>>(pp, slots, pp + slots);
  MT_CUDA_LAUNCH_CHECK();
  double total = 0;
  memcpy(&total, Device::cpu(), pp + slots, grads[0].device(), sizeof(double));  // waits for the kernels
  // f32 and bf16 squares neither overflow nor underflow in f64, so no rescaling is
  // needed; a NaN element makes the sum NaN and an infinite one makes it inf.
  return std::sqrt(total);
}

void scale_inplace(const std::vector<Tensor>& grads, double scale) {
  for (const Tensor& t : grads) {
    const int64_t n = t.numel();
    if (n == 0) continue;
    const int dev = t.device().index;
    DeviceGuard guard(dev);
    visit_bf16_f32(t.dtype(), "clip_grad_norm", "grads", [&](auto tag) {
      using T = typename decltype(tag)::type;
      scale_kernel<T><<<grid_for(n, kThreads), kThreads, 0, stream(dev)>>>(static_cast<T*>(t.data_ptr()), n,
                                                                           float(scale));
      MT_CUDA_LAUNCH_CHECK();
    });
  }
}

}  // namespace mambatron::cuda
