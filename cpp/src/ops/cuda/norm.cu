// RMSNorm and LayerNorm-1p on CUDA (shared pieces in norm_common.cuh): a block per row,
// or rows held in registers when d is a multiple of the 16-byte vector.
#include "norm_common.cuh"

namespace mambatron::cuda {

namespace {
using namespace norms;

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

}  // namespace mambatron::cuda
