// Shared pieces of the CUDA norms (norm.cu: RMSNorm and LayerNorm-1p; gated_rmsnorm.cu: the
// gated grouped RMSNorm). A row (or a (row, group) unit) belongs to a block or a team of
// threads that computes its statistics with block sums or shuffles and writes it; the
// parameter gradients run as a separate column-sum pass (colsum_kernel, then
// finish_kernel) so that no two blocks ever add into the same place.
#pragma once
#include <algorithm>
#include <type_traits>

#include "dense.cuh"
#include "norm.h"

namespace mambatron::cuda::norms {

constexpr int kThreads = 256;     // per row block; a multiple of 32 for block_sum
constexpr int kColThreads = 256;  // columns per block of the column sums
constexpr unsigned kMaxRowBlocks = 1u << 20;

inline unsigned row_grid(int64_t rows) { return unsigned(rows < kMaxRowBlocks ? rows : kMaxRowBlocks); }

__device__ __forceinline__ float sigmoidf(float x) {
  const float e = expf(-fabsf(x));  // one exp and one division on either side of 0
  return (x >= 0.f ? 1.f : e) / (1.f + e);
}

// 1 / sqrt(sum / n + eps), the scalar in f64 like the CPU op, rounded once to f32.
__device__ __forceinline__ float inv_rms(float sum, int64_t n, double eps) {
  return float(1.0 / sqrt(double(sum) / double(n) + eps));
}

// ---------------------------------------------------------------- parameter gradients
// Rows are cut into chunks by the row count alone; partial[c, j] = Σ_{r in chunk c}
// term(r, j) in f64, rows in order; then out[j] = Σ_c partial[c, j], c in order.
struct Chunks {
  int64_t size, count;
  explicit Chunks(int64_t rows) {
    size = rows / 512 + 1;
    if (size < 32) size = 32;
    count = (rows + size - 1) / size;
  }
};

template <class Term>
__global__ void colsum_kernel(Term term, int64_t rows, int64_t width, int64_t chunk, double* __restrict__ partial) {
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x, c = blockIdx.y;
  if (j >= width) return;
  const int64_t end = (c + 1) * chunk < rows ? (c + 1) * chunk : rows;
  double acc = 0;
  for (int64_t r = c * chunk; r < end; ++r) acc += double(term(r, j));
  partial[c * width + j] = acc;
}

// out0[j] for j < split, out1[j − split] for the rest.
template <class P>
__global__ void finish_kernel(const double* __restrict__ partial, int64_t count, int64_t width, int64_t split,
                              P* __restrict__ out0, P* __restrict__ out1) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < width; j += int64_t(gridDim.x) * blockDim.x) {
    double s = 0;
    for (int64_t c = 0; c < count; ++c) s += partial[c * width + j];
    if (j < split) out0[j] = cast_value<P>(s);
    else out1[j - split] = cast_value<P>(s);
  }
}

template <class P, class Term>
void param_grads(int dev, const Term& term, int64_t rows, int64_t width, int64_t split, P* out0, P* out1) {
  cudaStream_t s = stream(dev);
  const Chunks ch(rows);
  if (ch.count == 0) {  // no rows: the gradients are zero
    const int64_t n0 = split, n1 = width - split;
    MT_CUDA_CHECK(cudaMemsetAsync(out0, 0, size_t(n0) * sizeof(P), s));
    if (n1) MT_CUDA_CHECK(cudaMemsetAsync(out1, 0, size_t(n1) * sizeof(P), s));
    return;
  }
  MT_CHECK(ch.count <= 65535, ValueError, "norm parameter gradient: ", rows, " rows is too many");
  Tensor partial = Tensor::empty({ch.count * width}, DType::f64, Device::cuda(dev));
  double* pp = static_cast<double*>(partial.data_ptr());
  dim3 grid(unsigned((width + kColThreads - 1) / kColThreads), unsigned(ch.count));
  colsum_kernel<<<grid, kColThreads, 0, s>>>(term, rows, width, ch.size, pp);
  MT_CUDA_LAUNCH_CHECK();
  finish_kernel<P><<<grid_for(width, kColThreads), kColThreads, 0, s>>>(pp, ch.count, width, split, out0, out1);
  MT_CUDA_LAUNCH_CHECK();
}

// ---------------------------------------------------------------- register-resident rows
// When d is a multiple of the 16-byte vector width and a row fits in kMaxSweeps vectors
// per thread, a block holds each row in registers: every input is read once, with
// 16-byte accesses. The backward kernels also sum the parameter gradients of a fixed
// chunk of rows (Chunks: cut by the row count alone) in f64 registers, so dy and x are
// not read a second time; finish_kernel then adds the chunks in order.
constexpr int kMaxSweeps = 4;
constexpr int kFwdValues = 32, kBwdValues = 16;  // row values per thread (register budget)

struct VecRows {
  int threads = 0, sweeps = 0;  // sweeps == 0: not eligible
  template <class T>
  static VecRows plan(int64_t d, std::initializer_list<const void*> ptrs, int max_values) {
    VecRows v;
    constexpr int V = Pack<T>::N;
    if (d % V != 0 || !aligned16(ptrs)) return v;
    const int64_t nvec = d / V;
    const int64_t threads = std::min<int64_t>(kThreads, (nvec + 31) / 32 * 32);
    const int64_t sweeps = (nvec + threads - 1) / threads;
    if (sweeps > kMaxSweeps || sweeps * V > max_values) return v;
    v.threads = int(threads);
    v.sweeps = int(sweeps);
    return v;
  }
};

// f(std::integral_constant<int, S>) for S = sweeps, 1 <= S <= kMax (only those are built).
template <int kMax, class F>
void with_sweeps(int sweeps, F&& f) {
  if constexpr (kMax > 1) {
    if (sweeps >= kMax) return f(std::integral_constant<int, kMax>{});
    return with_sweeps<kMax - 1>(sweeps, f);
  } else {
    return f(std::integral_constant<int, 1>{});
  }
}
// Sweeps a kernel is built for: values per thread (sweeps · vector width) up to `values`.
template <class T, int values>
constexpr int kSweepsFor = std::min(kMaxSweeps, values / Pack<T>::N);

// One thread's share of a row: vector s covers elements (s·team + lane)·V ..+V, where the
// row belongs to `team` threads (the whole block unless a kernel splits it) and this one
// is `lane` among them.
template <class T, int S>
struct RowRegs {
  static constexpr int V = Pack<T>::N;
  float v[S][V];
  __device__ __forceinline__ void load(const T* row, int64_t nvec) { load(row, nvec, threadIdx.x, blockDim.x); }
  __device__ __forceinline__ void load(const T* row, int64_t nvec, unsigned lane, unsigned team) {
#pragma unroll
    for (int s = 0; s < S; ++s) {
      const int64_t i = int64_t(s) * team + lane;
      if (i < nvec) {
        const Pack<T> p = reinterpret_cast<const Pack<T>*>(row)[i];
#pragma unroll
        for (int k = 0; k < V; ++k) v[s][k] = to_f32(p.v[k]);
      } else {
#pragma unroll
        for (int k = 0; k < V; ++k) v[s][k] = 0.f;
      }
    }
  }
};

// f(s, i) for each vector of a row this thread holds (vector i = s·team + lane, as in
// RowRegs) that lies inside the row's nvec vectors.
template <int S, class F>
__device__ __forceinline__ void for_row_vecs(int64_t nvec, unsigned lane, unsigned team, F&& f) {
#pragma unroll
  for (int s = 0; s < S; ++s) {
    const int64_t i = int64_t(s) * team + lane;
    if (i < nvec) f(s, i);
  }
}
template <int S, class F>
__device__ __forceinline__ void for_row_vecs(int64_t nvec, F&& f) {
  for_row_vecs<S>(nvec, threadIdx.x, blockDim.x, f);
}

template <class T>
__device__ __forceinline__ void store_pack(T* row, int64_t i, const float (&f)[Pack<T>::N]) {
  Pack<T> p;
#pragma unroll
  for (int k = 0; k < Pack<T>::N; ++k) p.v[k] = from_f32<T>(f[k]);
  reinterpret_cast<Pack<T>*>(row)[i] = p;
}

// The parameter gradients from the chunk partials of a *_bwd_vec kernel: out0 = the first
// `split` columns, out1 the rest. `launch(partial, chunk, count)` runs the row kernel.
template <class P, class Launch>
void vec_param_grads(int dev, int64_t rows, int64_t width, int64_t split, P* out0, P* out1, Launch&& launch) {
  cudaStream_t s = stream(dev);
  const Chunks ch(rows);
  if (ch.count == 0) {
    MT_CUDA_CHECK(cudaMemsetAsync(out0, 0, size_t(split) * sizeof(P), s));
    if (width > split) MT_CUDA_CHECK(cudaMemsetAsync(out1, 0, size_t(width - split) * sizeof(P), s));
    return;
  }
  Tensor partial = Tensor::empty({ch.count * width}, DType::f64, Device::cuda(dev));
  double* pp = static_cast<double*>(partial.data_ptr());
  launch(pp, ch.size, ch.count);
  finish_kernel<P><<<grid_for(width, kColThreads), kColThreads, 0, s>>>(pp, ch.count, width, split, out0, out1);
  MT_CUDA_LAUNCH_CHECK();
}

// f(T, P) for the activation dtype of `x` and the parameter dtype of `param`.
template <class F>
void visit_norm(const char* op, const Tensor& x, const Tensor& param, F&& f) {
  visit_bf16_f32(x.dtype(), op, "x", [&](auto t) {
    visit_bf16_f32(param.dtype(), op, "weight", [&](auto p) { f(t, p); });
  });
}


struct RowShape {
  int64_t d, rows;
  explicit RowShape(const Tensor& x) : d(x.size(-1)), rows(x.size(-1) ? x.numel() / x.size(-1) : 0) {}
};

}  // namespace mambatron::cuda::norms
