// Norms on CUDA. One thread block per row (per row and group for the gated
// norm) computes the row's statistics with block_sum and writes the row; the
// parameter gradients run as a separate column-sum pass (colsum_kernel, then
// finish_kernel) so that no two blocks ever add into the same place.
#include <algorithm>
#include <type_traits>

#include "dense.cuh"
#include "norm.h"

namespace mambatron::cuda {

namespace {
constexpr int kThreads = 256;     // per row block; a multiple of 32 for block_sum
constexpr int kColThreads = 256;  // columns per block of the column sums
constexpr unsigned kMaxRowBlocks = 1u << 20;

unsigned row_grid(int64_t rows) { return unsigned(rows < kMaxRowBlocks ? rows : kMaxRowBlocks); }

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

// ---------------------------------------------------------------- RMSNorm
template <class T, class P>
__global__ void rmsnorm_fwd_kernel(const T* __restrict__ x, const P* __restrict__ w, double eps, T* __restrict__ out,
                                   float* __restrict__ rstd, int64_t rows, int64_t d) {
  __shared__ float sh[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * d;
    float ss = 0.f;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) { const float v = to_f32(xr[j]); ss += v * v; }
    const float rs = inv_rms(block_sum(ss, sh), d, eps);
    if (threadIdx.x == 0) rstd[r] = rs;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) out[r * d + j] = from_f32<T>(to_f32(xr[j]) * rs * to_f32(w[j]));
  }
}

// dx = r (g − x r² mean(g x)) [+ dres], g = dy · w. dres may be dx itself (no __restrict__).
template <class T, class P>
__global__ void rmsnorm_bwd_kernel(const T* __restrict__ dy, const T* __restrict__ x, const P* __restrict__ w,
                                   const float* __restrict__ rstd, const T* dres, T* dx, int64_t rows, int64_t d) {
  __shared__ float sh[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T *dr = dy + r * d, *xr = x + r * d;
    float dot = 0.f;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) dot += to_f32(dr[j]) * to_f32(w[j]) * to_f32(xr[j]);
    const float rs = rstd[r], c = block_sum(dot, sh) * rs * rs / float(d);
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      const float g = rs * (to_f32(dr[j]) * to_f32(w[j]) - to_f32(xr[j]) * c);
      dx[r * d + j] = from_f32<T>(dres ? to_f32(dres[r * d + j]) + g : g);
    }
  }
}

template <class T>
struct RmsWeightTerm {  // dy · x · r
  const T *dy, *x;
  const float* rstd;
  int64_t d;
  __device__ float operator()(int64_t r, int64_t j) const { return to_f32(dy[r * d + j]) * to_f32(x[r * d + j]) * rstd[r]; }
};

// ---------------------------------------------------------------- LayerNorm-1p
template <class T, class P>
__global__ void layernorm_fwd_kernel(const T* __restrict__ x, const P* __restrict__ gamma, const P* __restrict__ beta,
                                     double eps, T* __restrict__ out, float* __restrict__ mean,
                                     float* __restrict__ rstd, int64_t rows, int64_t d) {
  __shared__ float sh[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * d;
    float s = 0.f;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) s += to_f32(xr[j]);
    const float mu = block_sum(s, sh) / float(d);
    float v = 0.f;  // two passes: no cancellation when |μ| ≫ σ
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) { const float c = to_f32(xr[j]) - mu; v += c * c; }
    const float rs = inv_rms(block_sum(v, sh), d, eps);
    if (threadIdx.x == 0) { mean[r] = mu; rstd[r] = rs; }
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x)
      out[r * d + j] = from_f32<T>((to_f32(xr[j]) - mu) * rs * (1.f + to_f32(gamma[j])) + to_f32(beta[j]));
  }
}

// dx = r (g − mean(g) − x̂ mean(g x̂)) [+ dres], g = dy (1 + γ), x̂ = (x − μ) r.
template <class T, class P>
__global__ void layernorm_bwd_kernel(const T* __restrict__ dy, const T* __restrict__ x, const P* __restrict__ gamma,
                                     const float* __restrict__ mean, const float* __restrict__ rstd, const T* dres,
                                     T* dx, int64_t rows, int64_t d) {
  __shared__ float sh[32];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T *dr = dy + r * d, *xr = x + r * d;
    const float mu = mean[r], rs = rstd[r];
    float sg = 0.f, sgx = 0.f;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      const float g = to_f32(dr[j]) * (1.f + to_f32(gamma[j]));
      sg += g;
      sgx += g * (to_f32(xr[j]) - mu) * rs;
    }
    const float mg = block_sum(sg, sh) / float(d), mgx = block_sum(sgx, sh) / float(d);
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      const float xhat = (to_f32(xr[j]) - mu) * rs;
      const float g = rs * (to_f32(dr[j]) * (1.f + to_f32(gamma[j])) - mg - xhat * mgx);
      dx[r * d + j] = from_f32<T>(dres ? to_f32(dres[r * d + j]) + g : g);
    }
  }
}

template <class T>
struct LayerNormParamTerm {  // columns [0, d): dy · x̂ (dγ); [d, 2d): dy (dβ)
  const T *dy, *x;
  const float *mean, *rstd;
  int64_t d;
  __device__ float operator()(int64_t r, int64_t j) const {
    if (j < d) return to_f32(dy[r * d + j]) * ((to_f32(x[r * d + j]) - mean[r]) * rstd[r]);
    return to_f32(dy[r * d + j - d]);
  }
};

// ---------------------------------------------------------------- gated grouped RMSNorm
// Block b handles row b / groups, group b % groups: gs = d / groups channels at b · gs.
template <class T, class P>
__global__ void gated_fwd_kernel(const T* __restrict__ y, const T* __restrict__ z, const P* __restrict__ w,
                                 double eps, T* __restrict__ out, float* __restrict__ rstd, int64_t units,
                                 int64_t groups, int64_t gs) {
  __shared__ float sh[32];
  for (int64_t b = blockIdx.x; b < units; b += gridDim.x) {
    const int64_t off = b * gs, wo = (b % groups) * gs;
    float ss = 0.f;
    for (int64_t j = threadIdx.x; j < gs; j += blockDim.x) {
      const float zv = to_f32(z[off + j]), u = to_f32(y[off + j]) * zv * sigmoidf(zv);
      ss += u * u;
    }
    const float rs = inv_rms(block_sum(ss, sh), gs, eps);
    if (threadIdx.x == 0) rstd[b] = rs;
    for (int64_t j = threadIdx.x; j < gs; j += blockDim.x) {
      const float zv = to_f32(z[off + j]), u = to_f32(y[off + j]) * zv * sigmoidf(zv);
      out[off + j] = from_f32<T>(u * rs * to_f32(w[wo + j]));
    }
  }
}

// du = r (g − u r² mean(g u)), g = dout · w; dy = du · silu(z); dz = du · y · silu'(z).
template <class T, class P>
__global__ void gated_bwd_kernel(const T* __restrict__ dout, const T* __restrict__ y, const T* __restrict__ z,
                                 const P* __restrict__ w, const float* __restrict__ rstd, T* __restrict__ dy,
                                 T* __restrict__ dz, int64_t units, int64_t groups, int64_t gs) {
  __shared__ float sh[32];
  for (int64_t b = blockIdx.x; b < units; b += gridDim.x) {
    const int64_t off = b * gs, wo = (b % groups) * gs;
    float dot = 0.f;
    for (int64_t j = threadIdx.x; j < gs; j += blockDim.x) {
      const float zv = to_f32(z[off + j]), u = to_f32(y[off + j]) * zv * sigmoidf(zv);
      dot += to_f32(dout[off + j]) * to_f32(w[wo + j]) * u;
    }
    const float rs = rstd[b], c = block_sum(dot, sh) * rs * rs / float(gs);
    for (int64_t j = threadIdx.x; j < gs; j += blockDim.x) {
      const float yv = to_f32(y[off + j]), zv = to_f32(z[off + j]), s = sigmoidf(zv), u = yv * zv * s;
      const float du = rs * (to_f32(dout[off + j]) * to_f32(w[wo + j]) - u * c);
      dy[off + j] = from_f32<T>(du * zv * s);
      dz[off + j] = from_f32<T>(du * yv * s * (1.f + zv * (1.f - s)));
    }
  }
}

template <class T>
struct GatedWeightTerm {  // dout · u · r_k
  const T *dout, *y, *z;
  const float* rstd;
  int64_t d, groups, gs;
  __device__ float operator()(int64_t r, int64_t j) const {
    const int64_t i = r * d + j;
    const float zv = to_f32(z[i]), u = to_f32(y[i]) * zv * sigmoidf(zv);
    return to_f32(dout[i]) * u * rstd[r * groups + j / gs];
  }
};

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

template <class T, class P, int S>
__global__ void rmsnorm_fwd_vec(const T* __restrict__ x, const P* __restrict__ w, double eps, T* __restrict__ out,
                                float* __restrict__ rstd, int64_t rows, int64_t d) {
  constexpr int V = Pack<T>::N;
  __shared__ float sh[32];
  const int64_t nvec = d / V;
  RowRegs<T, S> xr;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    xr.load(x + r * d, nvec);
    float ss = 0.f;
#pragma unroll
    for (int s = 0; s < S; ++s)
#pragma unroll
      for (int k = 0; k < V; ++k) ss += xr.v[s][k] * xr.v[s][k];
    const float rs = inv_rms(block_sum(ss, sh), d, eps);
    if (threadIdx.x == 0) rstd[r] = rs;
    for_row_vecs<S>(nvec, [&](int s, int64_t i) {
      float o[V];
#pragma unroll
      for (int k = 0; k < V; ++k) o[k] = xr.v[s][k] * rs * to_f32(w[i * V + k]);
      store_pack(out + r * d, i, o);
    });
  }
}

// Block c takes rows [c·chunk, (c+1)·chunk): dx as rmsnorm_bwd_kernel, and
// partial[c, j] = Σ_rows dy·x·r in f64, rows in order.
template <class T, class P, int S>
__global__ void rmsnorm_bwd_vec(const T* __restrict__ dy, const T* __restrict__ x, const P* __restrict__ w,
                                const float* __restrict__ rstd, const T* dres, T* dx, int64_t rows, int64_t d,
                                int64_t chunk, double* __restrict__ partial) {
  constexpr int V = Pack<T>::N;
  __shared__ float sh[32];
  const int64_t nvec = d / V, r0 = blockIdx.x * chunk, r1 = r0 + chunk < rows ? r0 + chunk : rows;
  float wv[S][V];
  double acc[S][V];
#pragma unroll
  for (int s = 0; s < S; ++s) {
    const int64_t i = int64_t(s) * blockDim.x + threadIdx.x;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      wv[s][k] = i < nvec ? to_f32(w[i * V + k]) : 0.f;
      acc[s][k] = 0.0;
    }
  }
  RowRegs<T, S> g, xr;
  for (int64_t r = r0; r < r1; ++r) {
    g.load(dy + r * d, nvec);
    xr.load(x + r * d, nvec);
    float dot = 0.f;
#pragma unroll
    for (int s = 0; s < S; ++s)
#pragma unroll
      for (int k = 0; k < V; ++k) dot += g.v[s][k] * wv[s][k] * xr.v[s][k];
    const float rs = rstd[r], c = block_sum(dot, sh) * rs * rs / float(d);
    RowRegs<T, S> res;
    if (dres) res.load(dres + r * d, nvec);
    for_row_vecs<S>(nvec, [&](int s, int64_t i) {
      float o[V];
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const float gx = rs * (g.v[s][k] * wv[s][k] - xr.v[s][k] * c);
        o[k] = dres ? res.v[s][k] + gx : gx;
        acc[s][k] += double(g.v[s][k] * xr.v[s][k] * rs);
      }
      store_pack(dx + r * d, i, o);
    });
  }
  for_row_vecs<S>(nvec, [&](int s, int64_t i) {
#pragma unroll
    for (int k = 0; k < V; ++k) partial[blockIdx.x * d + i * V + k] = acc[s][k];
  });
}

template <class T, class P, int S>
__global__ void layernorm_fwd_vec(const T* __restrict__ x, const P* __restrict__ gamma, const P* __restrict__ beta,
                                  double eps, T* __restrict__ out, float* __restrict__ mean, float* __restrict__ rstd,
                                  int64_t rows, int64_t d) {
  constexpr int V = Pack<T>::N;
  __shared__ float sh[32];
  const int64_t nvec = d / V;
  RowRegs<T, S> xr;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    xr.load(x + r * d, nvec);
    float sum = 0.f;
#pragma unroll
    for (int s = 0; s < S; ++s)
#pragma unroll
      for (int k = 0; k < V; ++k) sum += xr.v[s][k];
    const float mu = block_sum(sum, sh) / float(d);
    float var = 0.f;  // two passes (over registers): no cancellation when |μ| ≫ σ
    for_row_vecs<S>(nvec, [&](int s, int64_t i) {  // padding lanes hold 0, not μ
#pragma unroll
      for (int k = 0; k < V; ++k) var += (xr.v[s][k] - mu) * (xr.v[s][k] - mu);
    });
    const float rs = inv_rms(block_sum(var, sh), d, eps);
    if (threadIdx.x == 0) { mean[r] = mu; rstd[r] = rs; }
    for_row_vecs<S>(nvec, [&](int s, int64_t i) {
      float o[V];
#pragma unroll
      for (int k = 0; k < V; ++k)
        o[k] = (xr.v[s][k] - mu) * rs * (1.f + to_f32(gamma[i * V + k])) + to_f32(beta[i * V + k]);
      store_pack(out + r * d, i, o);
    });
  }
}

// partial[c, j] = Σ dy·x̂ for j < d (dγ), Σ dy for j ≥ d (dβ), over chunk c's rows in order.
template <class T, class P, int S>
__global__ void layernorm_bwd_vec(const T* __restrict__ dy, const T* __restrict__ x, const P* __restrict__ gamma,
                                  const float* __restrict__ mean, const float* __restrict__ rstd, const T* dres, T* dx,
                                  int64_t rows, int64_t d, int64_t chunk, double* __restrict__ partial) {
  constexpr int V = Pack<T>::N;
  __shared__ float sh[32];
  const int64_t nvec = d / V, r0 = blockIdx.x * chunk, r1 = r0 + chunk < rows ? r0 + chunk : rows;
  float gp[S][V];  // 1 + γ
  double acc_g[S][V], acc_b[S][V];
#pragma unroll
  for (int s = 0; s < S; ++s) {
    const int64_t i = int64_t(s) * blockDim.x + threadIdx.x;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      gp[s][k] = i < nvec ? 1.f + to_f32(gamma[i * V + k]) : 0.f;
      acc_g[s][k] = acc_b[s][k] = 0.0;
    }
  }
  RowRegs<T, S> g, xr;
  for (int64_t r = r0; r < r1; ++r) {
    g.load(dy + r * d, nvec);
    xr.load(x + r * d, nvec);
    const float mu = mean[r], rs = rstd[r];
    float sg = 0.f, sgx = 0.f;
#pragma unroll
    for (int s = 0; s < S; ++s)
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const float gg = g.v[s][k] * gp[s][k];
        sg += gg;
        sgx += gg * (xr.v[s][k] - mu) * rs;
      }
    const float mg = block_sum(sg, sh) / float(d), mgx = block_sum(sgx, sh) / float(d);
    RowRegs<T, S> res;
    if (dres) res.load(dres + r * d, nvec);
    for_row_vecs<S>(nvec, [&](int s, int64_t i) {
      float o[V];
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const float xhat = (xr.v[s][k] - mu) * rs;
        const float gx = rs * (g.v[s][k] * gp[s][k] - mg - xhat * mgx);
        o[k] = dres ? res.v[s][k] + gx : gx;
        acc_g[s][k] += double(g.v[s][k] * xhat);
        acc_b[s][k] += double(g.v[s][k]);
      }
      store_pack(dx + r * d, i, o);
    });
  }
  for_row_vecs<S>(nvec, [&](int s, int64_t i) {
#pragma unroll
    for (int k = 0; k < V; ++k) {
      partial[blockIdx.x * 2 * d + i * V + k] = acc_g[s][k];
      partial[blockIdx.x * 2 * d + d + i * V + k] = acc_b[s][k];
    }
  });
}

// ---------------------------------------------------------------- gated norm, register-resident
// A (row, group) unit of gs channels belongs to a team of threads that holds it in
// registers (RowRegs with lane and team): y, z and dout are read once, with 16-byte
// accesses. A team of at most 32 is a power of two inside one warp and sums by shuffles, so
// a block carries blockDim / team teams with no block barrier; a larger team is the block
// and sums with block_sum. Each element's products keep the generic kernels' order; the
// sums' order differs, except dweight's: both paths add its terms in row order within the
// same Chunks, then the chunks in order, so they give it the same bits.
constexpr int kGatedMaxTeam = 512;   // threads a unit may take: the kernels' launch bound
constexpr int kGatedBwdBlock = 128;  // threads of a backward block of warp or sub-warp teams

struct GatedTeams {
  int team = 0, sweeps = 0;  // sweeps == 0: not eligible
  // As few threads as the sweep budget allows: more units side by side, more loads in flight.
  template <class T>
  static GatedTeams plan(int64_t gs, std::initializer_list<const void*> ptrs, int max_sweeps) {
    GatedTeams g;
    constexpr int V = Pack<T>::N;
    if (gs % V != 0 || !aligned16(ptrs)) return g;
    const int64_t nvec = gs / V;
    int64_t team = 1;
    if (nvec <= 32) {
      while (team < nvec) team *= 2;
    } else {
      team = ((nvec + max_sweeps - 1) / max_sweeps + 31) / 32 * 32;
    }
    if (team > kGatedMaxTeam) return g;
    g.team = int(team);
    g.sweeps = int((nvec + team - 1) / team);
    return g;
  }
};

// Sum over this thread's team; the branch is uniform in the block.
__device__ __forceinline__ float team_sum(float v, int team, float* sh) {
  if (team > 32) return block_sum(v, sh);
  for (int o = team >> 1; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// V consecutive parameters as f32 with the widest accesses their V·sizeof(P) bytes allow
// (8, 16 or 32); p is aligned to that size or to 16 bytes.
template <class P, int V>
__device__ __forceinline__ void load_params(const P* p, float (&f)[V]) {
  constexpr int bytes = V * int(sizeof(P));
  if constexpr (bytes % 16 == 0) {
    constexpr int N = Pack<P>::N;
#pragma unroll
    for (int q = 0; q < V / N; ++q) {
      const Pack<P> pk = reinterpret_cast<const Pack<P>*>(p)[q];
#pragma unroll
      for (int k = 0; k < N; ++k) f[q * N + k] = to_f32(pk.v[k]);
    }
  } else {
    static_assert(bytes == 8, "a parameter vector is 8 bytes or a multiple of 16");
    struct alignas(8) Half { P v[V]; };
    const Half h = *reinterpret_cast<const Half*>(p);
#pragma unroll
    for (int k = 0; k < V; ++k) f[k] = to_f32(h.v[k]);
  }
}

// Units b = r·groups + k, blockDim / team of them a block at a time (grid-stride). A team
// past the last unit loads nothing but still takes part in the sum's shuffles and barriers.
template <class T, class P, int S>
__global__ void __launch_bounds__(kGatedMaxTeam)
    gated_fwd_vec(const T* __restrict__ y, const T* __restrict__ z, const P* __restrict__ w, double eps,
                  T* __restrict__ out, float* __restrict__ rstd, int64_t units, int64_t groups, int64_t gs, int team) {
  constexpr int V = Pack<T>::N;
  __shared__ float sh[32];
  const int lane = threadIdx.x % team, per = blockDim.x / team;
  for (int64_t b0 = int64_t(blockIdx.x) * per; b0 < units; b0 += int64_t(gridDim.x) * per) {
    const int64_t b = b0 + threadIdx.x / team, bb = b < units ? b : 0, nvec = b < units ? gs / V : 0, off = bb * gs;
    RowRegs<T, S> u, zr;
    u.load(y + off, nvec, lane, team);
    zr.load(z + off, nvec, lane, team);
    float ss = 0.f;
#pragma unroll
    for (int s = 0; s < S; ++s)
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const float zv = zr.v[s][k];
        u.v[s][k] = u.v[s][k] * zv * sigmoidf(zv);  // padding: 0 · 0 · ½
        ss += u.v[s][k] * u.v[s][k];
      }
    const float rs = inv_rms(team_sum(ss, team, sh), gs, eps);
    if (nvec && lane == 0) rstd[b] = rs;
    const P* wk = w + bb % groups * gs;
    for_row_vecs<S>(nvec, lane, team, [&](int s, int64_t i) {
      float wv[V], o[V];
      load_params(wk + i * V, wv);
#pragma unroll
      for (int k = 0; k < V; ++k) o[k] = u.v[s][k] * rs * wv[k];
      store_pack(out + off, i, o);
    });
  }
}

// Block (c, q) takes rows [c·chunk, (c+1)·chunk) of groups q·per .. q·per + per − 1, one
// group a team, rows in order: dy, dz as gated_bwd_kernel, and partial[c, k·gs + j] =
// Σ_rows dout·u·r_k in f64, the GatedWeightTerm terms. Registers: dout (then dout·w), y,
// z, σ(z) and the f64 sums; w is re-read each row from L1 rather than held.
template <class T, class P, int S>
__global__ void __launch_bounds__(kGatedMaxTeam)
    gated_bwd_vec(const T* __restrict__ dout, const T* __restrict__ y, const T* __restrict__ z,
                  const P* __restrict__ w, const float* __restrict__ rstd, T* __restrict__ dy, T* __restrict__ dz,
                  int64_t rows, int64_t groups, int64_t gs, int team, int64_t chunk, double* __restrict__ partial) {
  constexpr int V = Pack<T>::N;
  __shared__ float sh[32];
  const int lane = threadIdx.x % team;
  const int64_t k = int64_t(blockIdx.y) * (blockDim.x / team) + threadIdx.x / team;
  const int64_t kk = k < groups ? k : 0, nvec = k < groups ? gs / V : 0, d = groups * gs;
  const int64_t r0 = blockIdx.x * chunk, r1 = r0 + chunk < rows ? r0 + chunk : rows;
  const P* wk = w + kk * gs;
  double acc[S][V];
#pragma unroll
  for (int s = 0; s < S; ++s)
#pragma unroll
    for (int e = 0; e < V; ++e) acc[s][e] = 0.0;
  RowRegs<T, S> g, yr, zr;
  float sg[S][V];
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t off = r * d + kk * gs;
    g.load(dout + off, nvec, lane, team);
    yr.load(y + off, nvec, lane, team);
    zr.load(z + off, nvec, lane, team);
    const float rs = rstd[r * groups + kk];
    float dot = 0.f;
#pragma unroll
    for (int s = 0; s < S; ++s) {
      const int64_t i = int64_t(s) * team + lane;
      float wv[V];
      if (i < nvec) {
        load_params(wk + i * V, wv);
      } else {
#pragma unroll
        for (int e = 0; e < V; ++e) wv[e] = 0.f;
      }
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const float zv = zr.v[s][e], sv = sigmoidf(zv), u = yr.v[s][e] * zv * sv;
        sg[s][e] = sv;
        acc[s][e] += double(g.v[s][e] * u * rs);
        g.v[s][e] *= wv[e];
        dot += g.v[s][e] * u;
      }
    }
    const float c = team_sum(dot, team, sh) * rs * rs / float(gs);
    for_row_vecs<S>(nvec, lane, team, [&](int s, int64_t i) {
      float oy[V], oz[V];
#pragma unroll
      for (int e = 0; e < V; ++e) {
        const float yv = yr.v[s][e], zv = zr.v[s][e], sv = sg[s][e], u = yv * zv * sv;
        const float du = rs * (g.v[s][e] - u * c);
        oy[e] = du * zv * sv;
        oz[e] = du * yv * sv * (1.f + zv * (1.f - sv));
      }
      store_pack(dy + off, i, oy);
      store_pack(dz + off, i, oz);
    });
  }
  for_row_vecs<S>(nvec, lane, team, [&](int s, int64_t i) {
#pragma unroll
    for (int e = 0; e < V; ++e) partial[blockIdx.x * d + kk * gs + i * V + e] = acc[s][e];
  });
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
}  // namespace

void rmsnorm_forward(const Tensor& x, const Tensor& weight, double eps, Tensor& out, Tensor& rstd) {
  const int dev = x.device().index;
  DeviceGuard guard(dev);
  const RowShape s(x);
  if (s.rows == 0) return;
  visit_norm("rmsnorm_forward", x, weight, [&](auto t, auto p) {
    using T = typename decltype(t)::type;
    using P = typename decltype(p)::type;
    const VecRows vr = VecRows::plan<T>(s.d, {x.data_ptr(), out.data_ptr()}, kFwdValues);
    if (vr.sweeps) {
      with_sweeps<kSweepsFor<T, kFwdValues>>(vr.sweeps, [&](auto sw) {
        rmsnorm_fwd_vec<T, P, sw()><<<row_grid(s.rows), vr.threads, 0, stream(dev)>>>(
            cptr<T>(x), cptr<P>(weight), eps, mptr<T>(out), mptr<float>(rstd), s.rows, s.d);
      });
    } else {
      rmsnorm_fwd_kernel<T, P><<<row_grid(s.rows), kThreads, 0, stream(dev)>>>(
          cptr<T>(x), cptr<P>(weight), eps, mptr<T>(out), mptr<float>(rstd), s.rows, s.d);
    }
    MT_CUDA_LAUNCH_CHECK();
  });
}

void rmsnorm_backward(const Tensor& dout, const Tensor& x, const Tensor& weight, const Tensor& rstd, Tensor& dx,
                      Tensor& dweight, const Tensor& dresidual) {
  const int dev = x.device().index;
  DeviceGuard guard(dev);
  const RowShape s(x);
  visit_norm("rmsnorm_backward", x, weight, [&](auto t, auto p) {
    using T = typename decltype(t)::type;
    using P = typename decltype(p)::type;
    const VecRows vr = VecRows::plan<T>(s.d, {dout.data_ptr(), x.data_ptr(), dx.data_ptr(),
                                             dresidual.defined() ? dresidual.data_ptr() : dx.data_ptr()}, kBwdValues);
    if (vr.sweeps) {
      vec_param_grads<P>(dev, s.rows, s.d, s.d, mptr<P>(dweight), nullptr, [&](double* partial, int64_t chunk,
                                                                               int64_t count) {
        with_sweeps<kSweepsFor<T, kBwdValues>>(vr.sweeps, [&](auto sw) {
          rmsnorm_bwd_vec<T, P, sw()><<<unsigned(count), vr.threads, 0, stream(dev)>>>(
              cptr<T>(dout), cptr<T>(x), cptr<P>(weight), cptr<float>(rstd), cptr<T>(dresidual), mptr<T>(dx),
              s.rows, s.d, chunk, partial);
        });
        MT_CUDA_LAUNCH_CHECK();
      });
      return;
    }
    if (s.rows > 0) {
      rmsnorm_bwd_kernel<T, P><<<row_grid(s.rows), kThreads, 0, stream(dev)>>>(
          cptr<T>(dout), cptr<T>(x), cptr<P>(weight), cptr<float>(rstd), cptr<T>(dresidual), mptr<T>(dx), s.rows,
          s.d);
      MT_CUDA_LAUNCH_CHECK();
    }
    RmsWeightTerm<T> term{cptr<T>(dout), cptr<T>(x), cptr<float>(rstd), s.d};
    param_grads<P>(dev, term, s.rows, s.d, s.d, mptr<P>(dweight), nullptr);
  });
}

void layernorm1p_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps, Tensor& out,
                         Tensor& mean, Tensor& rstd) {
  const int dev = x.device().index;
  DeviceGuard guard(dev);
  const RowShape s(x);
  if (s.rows == 0) return;
  visit_norm("layernorm1p_forward", x, gamma, [&](auto t, auto p) {
    using T = typename decltype(t)::type;
    using P = typename decltype(p)::type;
    const VecRows vr = VecRows::plan<T>(s.d, {x.data_ptr(), out.data_ptr()}, kFwdValues);
    if (vr.sweeps) {
      with_sweeps<kSweepsFor<T, kFwdValues>>(vr.sweeps, [&](auto sw) {
        layernorm_fwd_vec<T, P, sw()><<<row_grid(s.rows), vr.threads, 0, stream(dev)>>>(
            cptr<T>(x), cptr<P>(gamma), cptr<P>(beta), eps, mptr<T>(out), mptr<float>(mean), mptr<float>(rstd),
            s.rows, s.d);
      });
    } else {
      layernorm_fwd_kernel<T, P><<<row_grid(s.rows), kThreads, 0, stream(dev)>>>(
          cptr<T>(x), cptr<P>(gamma), cptr<P>(beta), eps, mptr<T>(out), mptr<float>(mean), mptr<float>(rstd), s.rows,
          s.d);
    }
    MT_CUDA_LAUNCH_CHECK();
  });
}

void layernorm1p_backward(const Tensor& dout, const Tensor& x, const Tensor& gamma, const Tensor& mean,
                          const Tensor& rstd, Tensor& dx, Tensor& dgamma, Tensor& dbeta, const Tensor& dresidual) {
  const int dev = x.device().index;
  DeviceGuard guard(dev);
  const RowShape s(x);
  visit_norm("layernorm1p_backward", x, gamma, [&](auto t, auto p) {
    using T = typename decltype(t)::type;
    using P = typename decltype(p)::type;
    const VecRows vr = VecRows::plan<T>(s.d, {dout.data_ptr(), x.data_ptr(), dx.data_ptr(),
                                             dresidual.defined() ? dresidual.data_ptr() : dx.data_ptr()}, kBwdValues);
    if (vr.sweeps) {
      vec_param_grads<P>(dev, s.rows, 2 * s.d, s.d, mptr<P>(dgamma), mptr<P>(dbeta), [&](double* partial,
                                                                                        int64_t chunk, int64_t count) {
        with_sweeps<kSweepsFor<T, kBwdValues>>(vr.sweeps, [&](auto sw) {
          layernorm_bwd_vec<T, P, sw()><<<unsigned(count), vr.threads, 0, stream(dev)>>>(
              cptr<T>(dout), cptr<T>(x), cptr<P>(gamma), cptr<float>(mean), cptr<float>(rstd), cptr<T>(dresidual),
              mptr<T>(dx), s.rows, s.d, chunk, partial);
        });
        MT_CUDA_LAUNCH_CHECK();
      });
      return;
    }
    if (s.rows > 0) {
      layernorm_bwd_kernel<T, P><<<row_grid(s.rows), kThreads, 0, stream(dev)>>>(
          cptr<T>(dout), cptr<T>(x), cptr<P>(gamma), cptr<float>(mean), cptr<float>(rstd), cptr<T>(dresidual),
          mptr<T>(dx), s.rows, s.d);
      MT_CUDA_LAUNCH_CHECK();
    }
    LayerNormParamTerm<T> term{cptr<T>(dout), cptr<T>(x), cptr<float>(mean), cptr<float>(rstd), s.d};
    param_grads<P>(dev, term, s.rows, 2 * s.d, s.d, mptr<P>(dgamma), mptr<P>(dbeta));
  });
}

void gated_rmsnorm_forward(const Tensor& y, const Tensor& z, const Tensor& weight, int64_t groups, double eps,
                           Tensor& out, Tensor& rstd) {
  const int dev = y.device().index;
  DeviceGuard guard(dev);
  const RowShape s(y);
  const int64_t units = s.rows * groups, gs = s.d / groups;
  if (units == 0) return;
  visit_norm("gated_rmsnorm_forward", y, weight, [&](auto t, auto p) {
    using T = typename decltype(t)::type;
    using P = typename decltype(p)::type;
    constexpr int kSweeps = kSweepsFor<T, kFwdValues>;
    const GatedTeams gt =
        GatedTeams::plan<T>(gs, {y.data_ptr(), z.data_ptr(), out.data_ptr(), weight.data_ptr()}, kSweeps);
    if (gt.sweeps) {
      const int block = gt.team > 32 ? gt.team : kThreads, per = block / gt.team;
      with_sweeps<kSweeps>(gt.sweeps, [&](auto sw) {
        gated_fwd_vec<T, P, sw()><<<row_grid((units + per - 1) / per), block, 0, stream(dev)>>>(
            cptr<T>(y), cptr<T>(z), cptr<P>(weight), eps, mptr<T>(out), mptr<float>(rstd), units, groups, gs,
            gt.team);
      });
    } else {
      gated_fwd_kernel<T, P><<<row_grid(units), kThreads, 0, stream(dev)>>>(
          cptr<T>(y), cptr<T>(z), cptr<P>(weight), eps, mptr<T>(out), mptr<float>(rstd), units, groups, gs);
    }
    MT_CUDA_LAUNCH_CHECK();
  });
}

void gated_rmsnorm_backward(const Tensor& dout, const Tensor& y, const Tensor& z, const Tensor& weight,
                            const Tensor& rstd, int64_t groups, Tensor& dy, Tensor& dz, Tensor& dweight) {
  const int dev = y.device().index;
  DeviceGuard guard(dev);
  const RowShape s(y);
  const int64_t units = s.rows * groups, gs = s.d / groups;
  visit_norm("gated_rmsnorm_backward", y, weight, [&](auto t, auto p) {
    using T = typename decltype(t)::type;
    using P = typename decltype(p)::type;
    constexpr int kSweeps = std::min(3, kSweepsFor<T, kBwdValues>);  // four f32 sweeps spill
    const GatedTeams gt = GatedTeams::plan<T>(
        gs, {dout.data_ptr(), y.data_ptr(), z.data_ptr(), dy.data_ptr(), dz.data_ptr(), weight.data_ptr()}, kSweeps);
    // Teams of a warp or less share a block (whole warps), one group each.
    int64_t threads = gt.team, blocks_y = 0;
    if (gt.sweeps) {
      if (gt.team <= 32) threads = (gt.team * std::min<int64_t>(kGatedBwdBlock / gt.team, groups) + 31) / 32 * 32;
      blocks_y = (groups * gt.team + threads - 1) / threads;
    }
    if (gt.sweeps && blocks_y <= 65535) {
      vec_param_grads<P>(dev, s.rows, s.d, s.d, mptr<P>(dweight), nullptr, [&](double* partial, int64_t chunk,
                                                                               int64_t count) {
        with_sweeps<kSweeps>(gt.sweeps, [&](auto sw) {
          gated_bwd_vec<T, P, sw()><<<dim3(unsigned(count), unsigned(blocks_y)), unsigned(threads), 0, stream(dev)>>>(
              cptr<T>(dout), cptr<T>(y), cptr<T>(z), cptr<P>(weight), cptr<float>(rstd), mptr<T>(dy), mptr<T>(dz),
              s.rows, groups, gs, gt.team, chunk, partial);
        });
        MT_CUDA_LAUNCH_CHECK();
      });
      return;
    }
    if (units > 0) {
      gated_bwd_kernel<T, P><<<row_grid(units), kThreads, 0, stream(dev)>>>(
          cptr<T>(dout), cptr<T>(y), cptr<T>(z), cptr<P>(weight), cptr<float>(rstd), mptr<T>(dy), mptr<T>(dz), units,
          groups, gs);
      MT_CUDA_LAUNCH_CHECK();
    }
    GatedWeightTerm<T> term{cptr<T>(dout), cptr<T>(y), cptr<T>(z), cptr<float>(rstd), s.d, groups, gs};
    param_grads<P>(dev, term, s.rows, s.d, s.d, mptr<P>(dweight), nullptr);
  });
}

}  // namespace mambatron::cuda
