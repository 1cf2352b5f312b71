// The gated grouped RMSNorm on CUDA (shared pieces in norm_common.cuh): a block per (row,
// group), or a team of threads holding the unit in registers when the group width is a
// multiple of the 16-byte vector.
#include "norm_common.cuh"

namespace mambatron::cuda {

namespace {
using namespace norms;

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

}  // namespace

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
