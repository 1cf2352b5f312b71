// SSD stages that forward and backward share: the per-token scalars (Δ and the
// chunk-local cumulative sums S), and the state passed from chunk to chunk. The
// state pass fuses the chunk-state products with their sequential recurrence: one
// block owns a 64×64 tile of one head's state, keeps it in accumulator tiles, and
// walks the chunks, writing the state at each chunk boundary.
#include "ssd_common.cuh"

namespace mambatron::cuda::ssd {

DeltaOpt delta_opt(const SsdOptions& opt) {
  return {opt.dt_softplus, bool(opt.dt_min), bool(opt.dt_max), opt.dt_min.value_or(0.0), opt.dt_max.value_or(0.0)};
}

namespace {

// ---------------------------------------------------------------- per-token scalars
// One thread per (row, chunk, head), heads fastest so that dt reads coalesce; the
// sum runs token by token in f64, in the CPU's order.
template <class T>
__global__ void chunk_scalars_kernel(Dims d, const T* __restrict__ dt, const float* __restrict__ dt_bias,
                                     const float* __restrict__ A, DeltaOpt o, float* __restrict__ delta,
                                     double* __restrict__ S) {
  const int64_t id = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (id >= d.b * d.nc * d.h) return;
  const int64_t j = id % d.h, c = (id / d.h) % d.nc, bi = id / (d.h * d.nc);
  const int64_t t0 = c * d.Q, t1 = t0 + d.Q < d.l ? t0 + d.Q : d.l;
  const double a = A[j], bias = dt_bias ? double(dt_bias[j]) : 0.0;
  double sum = 0;
  for (int64_t t = t0; t < t1; ++t) {
    const double v = double(to_f32(dt[d.dto(bi, t, j)])) + bias;
    const double dl = delta_of(v, o).value;
    sum += dl * a;
    delta[d.so(bi, j, t)] = float(dl);
    S[d.so(bi, j, t)] = sum;
  }
}

// ---------------------------------------------------------------- state pass
constexpr int kStateWarps = 4;
constexpr int kStateP = 16 * kStateWarps;  // state rows per block: one 16-row strip per warp
constexpr int kStateN = 64;                // state columns per block
constexpr int kStateCols = kStateN / 16;

// X·diag(scale) is split in three parts: the states feed f32 outputs.
template <class T, int kQ>
struct StateLayout {
  static constexpr int ldX = pitch<T>(kStateP), ldB = pitch<T>(kStateN), ldS = kStateN + 4;
  static constexpr size_t x = 0, b = operand_bytes<T, 3>(kQ, ldX);
  static constexpr size_t stage = b + align128(size_t(kQ) * ldB * sizeof(T));
  static constexpr size_t scale = stage + align128(size_t(kStateP) * ldS * sizeof(float));
  static constexpr size_t bytes = scale + align128(kQ * sizeof(float));
  static_assert(bytes <= kMaxSmem, "state pass: too much shared memory");
};

template <class T, int kQ, bool kReverse>
__global__ void __launch_bounds__(kStateWarps * 32)
    state_pass_kernel(Dims d, const T* __restrict__ X, const T* __restrict__ Bm, const double* __restrict__ S,
                      const float* __restrict__ delta, const int32_t* __restrict__ seq, const float* __restrict__ init,
                      float* __restrict__ states, float* __restrict__ last) {
  using Lay = StateLayout<T, kQ>;
  extern __shared__ __align__(128) unsigned char smem[];
  const Smem<T> xs{reinterpret_cast<T*>(smem + Lay::x), Lay::ldX, part_stride<T>(kQ, Lay::ldX)};
  const Smem<T> bs{reinterpret_cast<T*>(smem + Lay::b), Lay::ldB, 0};
  float* stage = reinterpret_cast<float*>(smem + Lay::stage);
  float* scale = reinterpret_cast<float*>(smem + Lay::scale);
  const int tid = threadIdx.x, warp = tid >> 5;
  constexpr int kThreads = kStateWarps * 32;

  const int64_t ptiles = (d.p + kStateP - 1) / kStateP, ntiles = (d.n + kStateN - 1) / kStateN;
  int64_t id = blockIdx.x;
  const int64_t nt = id % ntiles;
  id /= ntiles;
  const int64_t pt = id % ptiles;
  id /= ptiles;
  const int64_t j = id % d.h, bi = id / d.h, gi = d.group(j);
  const int64_t i0 = pt * kStateP, k0 = nt * kStateN;
  const int valid_p = int(d.p - i0 < kStateP ? d.p - i0 : kStateP);
  const int valid_n = int(d.n - k0 < kStateN ? d.n - k0 : kStateN);

  // The state tile through `stage`, from or to [p, n] memory at `base` (rows of n).
  auto stage_in = [&](const float* base) {
    for (int e = tid; e < kStateP * kStateN; e += kThreads) {
      const int r = e / kStateN, cc = e % kStateN;
      const int64_t i = i0 + r, k = k0 + cc;
      stage[r * Lay::ldS + cc] = (base && i < d.p && k < d.n) ? base[i * d.n + k] : 0.f;
    }
  };
  auto stage_out = [&](float* base) {
    for (int e = tid; e < kStateP * kStateN; e += kThreads) {
      const int r = e / kStateN, cc = e % kStateN;
      const int64_t i = i0 + r, k = k0 + cc;
      if (i < d.p && k < d.n) base[i * d.n + k] = stage[r * Lay::ldS + cc];
    }
  };

  Acc<T> acc[kStateCols];
  stage_in(init ? init + d.sto(bi, j) : nullptr);
  __syncthreads();
#pragma unroll
  for (int ct = 0; ct < kStateCols; ++ct) acc[ct].load(stage + 16 * warp * Lay::ldS + 16 * ct, Lay::ldS);

  for (int64_t step = 0; step < d.nc; ++step) {
    const int64_t c = kReverse ? d.nc - 1 - step : step;
    const Chunk ch = make_chunk(d, S, seq, bi, j, c);
    __syncthreads();  // the previous step's products have read xs, bs and stage
#pragma unroll
    for (int ct = 0; ct < kStateCols; ++ct) acc[ct].store(stage + 16 * warp * Lay::ldS + 16 * ct, Lay::ldS);
    // Row scale of X: f⊙Δ forward, e backward.
    for (int t = tid; t < ch.L; t += kThreads) {
      const int64_t tok = ch.t0 + t;
      const int doc = doc_at(seq, d, bi, tok);
      const double St = S[d.so(bi, j, tok)];
      double v;
      if (kReverse) v = doc == ch.doc_in ? exp(St) : 0.0;
      else v = doc == ch.doc_last ? exp(ch.S_last - St) * double(delta[d.so(bi, j, tok)]) : 0.0;
      scale[t] = float(v);
    }
    __syncthreads();
    stage_out(states + d.co(bi, j, c));
    const int Lp = ch.Lt * 16;
    read_block(X + d.xo(bi, ch.t0, j) + i0, d.h * d.p, Lp, kStateP, ch.L, valid_p,
               [&](int t, int r, const Pack<T>& v) {
                 const float sc = t < ch.L ? scale[t] : 0.f;
#pragma unroll
                 for (int k = 0; k < Pack<T>::N; ++k) put_split<3>(xs, t * Lay::ldX + r + k, to_f32(v.v[k]) * sc);
               });
    stage_exact(bs, Bm + d.bco(bi, ch.t0, gi) + k0, d.g * d.n, Lp, kStateN, ch.L, valid_n);
    __syncthreads();
    const float E = ch.doc_last == ch.doc_in ? float(exp(ch.S_last)) : 0.f;
#pragma unroll
    for (int ct = 0; ct < kStateCols; ++ct) acc[ct].scale(E);
    for (int ks = 0; ks < ch.Lt; ++ks)
#pragma unroll
      for (int ct = 0; ct < kStateCols; ++ct)
        mma_tile<Col, Row, 3, 1>(acc[ct], xs, 16 * warp, 16 * ks, bs, 16 * ks, 16 * ct);
  }
  if (!last) return;
  __syncthreads();
#pragma unroll
  for (int ct = 0; ct < kStateCols; ++ct) acc[ct].store(stage + 16 * warp * Lay::ldS + 16 * ct, Lay::ldS);
  __syncthreads();
  stage_out(last + d.sto(bi, j));
}

}  // namespace

template <class T>
void launch_chunk_scalars(const Dims& d, const T* dt, const float* dt_bias, const float* A, const DeltaOpt& o,
                          float* delta, double* S, cudaStream_t s) {
  const int64_t n = d.b * d.nc * d.h;
  if (n == 0) return;
  chunk_scalars_kernel<T><<<grid_for(n, 128), 128, 0, s>>>(d, dt, dt_bias, A, o, delta, S);
  MT_CUDA_LAUNCH_CHECK();
}

template <class T>
void launch_state_pass(const Dims& d, bool reverse, const T* X, const T* Bm, const float* delta, const double* S,
                       const int32_t* seq, const float* init, float* states, float* last, cudaStream_t s) {
  const int64_t blocks = d.b * d.h * ((d.p + kStateP - 1) / kStateP) * ((d.n + kStateN - 1) / kStateN);
  if (blocks == 0) return;
  with_chunk_tiles(d.Q, [&](auto kq) {
    constexpr int kQ = decltype(kq)::value;
    const size_t bytes = StateLayout<T, kQ>::bytes;
    auto kernel = reverse ? state_pass_kernel<T, kQ, true> : state_pass_kernel<T, kQ, false>;
    launch_big(kernel, unsigned(blocks), kStateWarps * 32, bytes, s, d, X, Bm, S, delta, seq, init, states, last);
  });
}

template void launch_chunk_scalars<float>(const Dims&, const float*, const float*, const float*, const DeltaOpt&,
                                          float*, double*, cudaStream_t);
template void launch_chunk_scalars<bf16>(const Dims&, const bf16*, const float*, const float*, const DeltaOpt&,
                                         float*, double*, cudaStream_t);
template void launch_state_pass<float>(const Dims&, bool, const float*, const float*, const float*, const double*,
                                       const int32_t*, const float*, float*, float*, cudaStream_t);
template void launch_state_pass<bf16>(const Dims&, bool, const bf16*, const bf16*, const float*, const double*,
                                      const int32_t*, const float*, float*, float*, cudaStream_t);

}  // namespace mambatron::cuda::ssd
