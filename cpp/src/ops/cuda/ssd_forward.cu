// SSD forward on CUDA: per-token scalars, K = C·Bᵀ once per group and chunk, then, where
// ssd_forward_mma.cu applies, the state pass and the outputs in one launch on mma.sync
// fragments; else the state pass (ssd_states.cu) and the outputs, one block per (row,
// head, chunk, 64 columns of p)
//   Y = (K ⊙ W)·diag(Δ)·X + diag(e)·C·H_inᵀ + D·X,
// with C·H_inᵀ accumulated over chunks of n (H_in in hi/lo bf16 parts), and the masked
// matrix split in place of K (copied in with cp.async) into hi/lo bf16 rows for the
// last product.
#include "ssd_mma.cuh"

namespace mambatron::cuda::ssd {

namespace {

template <class T, int kQ>
struct OutLayout {
  static constexpr int kT = kQ / 16, kWarps = kT, kThreads = 32 * kWarps;
  // Blocks per SM the registers must allow (≤ 128 registers a thread at Q 128): one
  // block's staging overlaps another's products.
  static constexpr int kMinBlocks = 65536 / (128 * kThreads);
  static constexpr int kP = 64, kPC = kP / 16, kNK = 64;
  static constexpr int kZ = kT * kPC / kWarps;  // output tiles per warp
  static constexpr int ldK = kQ + 4, ldC = pitch<T>(kNK), ldX = pitch<T>(kP);
  // Region 0: the operands of the n loop, then the masked matrix.
  static constexpr size_t cs = 0, hs = cs + align128(size_t(kQ) * ldC * sizeof(T));
  static constexpr size_t ops_end = hs + operand_bytes<T, 2>(kP, ldC);
  static constexpr size_t kf_end = align128(size_t(kQ) * ldK * sizeof(float));
  static constexpr size_t xs = ops_end > kf_end ? ops_end : kf_end;
  static constexpr size_t stage = xs + align128(size_t(kQ) * ldX * sizeof(T));
  static constexpr size_t S = stage + align128(size_t(kWarps) * 256 * sizeof(float));
  static constexpr size_t delta = S + align128(kQ * sizeof(double));
  static constexpr size_t e = delta + align128(kQ * sizeof(float));
  static constexpr size_t doc = e + align128(kQ * sizeof(float));
  static constexpr size_t bytes = doc + align128(kQ * sizeof(int));
  static_assert(bytes <= kMaxSmem, "ssd output kernel: too much shared memory");
};

template <class T, int kQ>
__global__ void __launch_bounds__(OutLayout<T, kQ>::kThreads, OutLayout<T, kQ>::kMinBlocks)
    output_kernel(Dims d, const T* __restrict__ x, const T* __restrict__ Cm,
                  const float* __restrict__ Dp, const double* __restrict__ S, const float* __restrict__ delta,
                  const int32_t* __restrict__ seq, const float* __restrict__ states, const float* __restrict__ K,
                  T* __restrict__ y) {
  using Lay = OutLayout<T, kQ>;
  constexpr int kWarps = Lay::kWarps, kP = Lay::kP, kPC = Lay::kPC, kNK = Lay::kNK;
  extern __shared__ __align__(128) unsigned char smem[];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const Smem<T> cs{reinterpret_cast<T*>(smem + Lay::cs), Lay::ldC, 0};
  const Smem<T> hs{reinterpret_cast<T*>(smem + Lay::hs), Lay::ldC, part_stride<T>(kP, Lay::ldC)};
  const Smem<T> xs{reinterpret_cast<T*>(smem + Lay::xs), Lay::ldX, 0};
  float* kf = reinterpret_cast<float*>(smem);
  float* stage = reinterpret_cast<float*>(smem + Lay::stage) + warp * 256;
  double* Ss = reinterpret_cast<double*>(smem + Lay::S);
  float* dls = reinterpret_cast<float*>(smem + Lay::delta);
  float* es = reinterpret_cast<float*>(smem + Lay::e);
  int* docs = reinterpret_cast<int*>(smem + Lay::doc);

  const int64_t ptiles = (d.p + kP - 1) / kP;
  int64_t id = blockIdx.x;
  const int64_t pt = id % ptiles;
  id /= ptiles;
  const int64_t c = id % d.nc;
  id /= d.nc;
  const int64_t j = id % d.h, bi = id / d.h, gi = d.group(j), i0 = pt * kP;
  const Chunk ch = make_chunk(d, S, seq, bi, j, c);
  const int L = ch.L, Lt = ch.Lt, Lp = 16 * Lt;

  fill_output_values(d, S, delta, seq, ch, kQ, Ss, dls, es, docs);
  const int valid_p = int(d.p - i0 < kP ? d.p - i0 : kP);
  stage_exact(xs, x + d.xo(bi, ch.t0, j) + i0, d.h * d.p, Lp, kP, L, valid_p);

  // Z = C·H_inᵀ, over chunks of n.
  Acc<T> accZ[Lay::kZ];
#pragma unroll
  for (int q = 0; q < Lay::kZ; ++q) accZ[q].zero();
  const float* H = states + d.co(bi, j, c);
  for (int64_t n0 = 0; n0 < d.n; n0 += kNK) {
    const int nk = int(d.n - n0 < kNK ? d.n - n0 : kNK), nks = (nk + 15) / 16, nkp = 16 * nks;
    __syncthreads();  // the previous chunk's products are done with cs, hs
    stage_exact(cs, Cm + d.bco(bi, ch.t0, gi) + n0, d.g * d.n, Lp, nkp, L, nk);
    stage_split<2>(hs, H + i0 * d.n + n0, d.n, kP, nkp, valid_p, nk);
    __syncthreads();
#pragma unroll
    for (int q = 0; q < Lay::kZ; ++q) {
      const int zt = warp + q * kWarps, tt = zt / kPC, pc = zt % kPC;
      if (tt >= Lt) continue;
      for (int ks = 0; ks < nks; ++ks)
        mma_tile<Row, Col, 1, 2>(accZ[q], cs, 16 * tt, 16 * ks, hs, 16 * ks, 16 * pc);
    }
  }
  __syncthreads();  // K overwrites the operands
  copy_causal_async<kQ>(kf, Lay::ldK, K + d.ko(bi, c, gi), Lp);
  cp_commit();
  cp_wait_all();
  __syncthreads();

  // M = K ⊙ W·diag(Δ), row by row: a warp reads its row, then writes it back (split).
  for (int t = warp; t < Lp; t += kWarps) {
    float m[kQ / 32];
#pragma unroll
    for (int u = 0; u < kQ / 32; ++u) {
      const int s = lane + 32 * u;
      m[u] = 0.f;
      if (s <= t && t < L && docs[s] == docs[t]) m[u] = kf[t * Lay::ldK + s] * decay<T>(Ss[t] - Ss[s]) * dls[s];
    }
    __syncwarp();
#pragma unroll
    for (int u = 0; u < kQ / 32; ++u) write_split_row<T>(kf, Lay::ldK, kQ, t, lane + 32 * u, m[u]);
  }
  __syncthreads();

  // Y tiles: (e ⊙ Z + D·X) as the start, then += M·X over the causal tiles.
  const Smem<T> M = split_rows<T>(kf, Lay::ldK, kQ);
  const float Dj = Dp ? Dp[j] : 0.f;
#pragma unroll
  for (int q = 0; q < Lay::kZ; ++q) {
    const int zt = warp + q * kWarps, tt = zt / kPC, pc = zt % kPC;
    if (tt >= Lt) continue;
    accZ[q].store(stage, 16);
    __syncwarp();
    for (int e = lane; e < 256; e += 32) {
      const int t = 16 * tt + (e >> 4), cc = 16 * pc + (e & 15);
      stage[e] = es[t] * stage[e] + Dj * to_f32(xs.p[t * Lay::ldX + cc]);
    }
    __syncwarp();
    Acc<T> acc;
    acc.load(stage, 16);
    for (int ss = 0; ss <= tt; ++ss) mma_tile<Row, Row, 2, 1>(acc, M, 16 * tt, 16 * ss, xs, 16 * ss, 16 * pc);
    acc.store(stage, 16);
    __syncwarp();
    for (int e = lane; e < 256; e += 32) {
      const int t = 16 * tt + (e >> 4);
      const int64_t i = i0 + 16 * pc + (e & 15);
      if (t < L && i < d.p) y[d.xo(bi, ch.t0 + t, j) + i] = from_f32<T>(stage[e]);
    }
    __syncwarp();
  }
}

template <class T>
void launch_output(const Dims& d, const T* x, const T* C, const float* D, const double* S,
                   const float* delta, const int32_t* seq, const float* states, const float* K, T* y,
                   cudaStream_t s) {
  with_chunk_tiles(d.Q, [&](auto kq) {
    constexpr int kQ = decltype(kq)::value;
    using Lay = OutLayout<T, kQ>;
    const int64_t blocks = d.b * d.h * d.nc * ((d.p + Lay::kP - 1) / Lay::kP);
    if (blocks == 0) return;
    launch_big(output_kernel<T, kQ>, unsigned(blocks), Lay::kThreads, Lay::bytes, s, d, x, C, D, S, delta, seq, states,
               K, y);
  });
}

}  // namespace
}  // namespace mambatron::cuda::ssd

namespace mambatron::cuda {

void ssd_forward(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B, const Tensor& C,
                 const Tensor& D, const Tensor& dt_bias, const Tensor& initial_state, const Tensor& seq_idx,
                 Tensor& y, Tensor& final_state, const SsdOptions& opt) {
  using namespace ssd;
  const int dev = x.device().index;
  DeviceGuard guard(dev);
  cudaStream_t s = stream(dev);
  const Dims d = make_dims(x, B, opt);
  const int64_t tokens = d.b * d.h * d.l, state_elems = d.b * d.h * d.nc * d.p * d.n;
  auto scratch = [&](int64_t n, DType t) { return Tensor::empty({n > 0 ? n : 1}, t, x.device()); };
  Tensor delta = scratch(tokens, DType::f32), S = scratch(tokens, DType::f64);
  Tensor K = scratch(d.b * d.nc * d.g * d.kq() * d.kq(), DType::f32);
  Tensor sync = scratch(state_pass_sync_ints(d), DType::i32);
  float* pdelta = static_cast<float*>(delta.data_ptr());
  double* pS = static_cast<double*>(S.data_ptr());
  float* pK = static_cast<float*>(K.data_ptr());
  int32_t* psync = static_cast<int32_t*>(sync.data_ptr());
  const int32_t* seq = cptr<int32_t>(seq_idx);
  const float* init = cptr<float>(initial_state);
  float* last = mptr<float>(final_state);
  visit_bf16_f32(x.dtype(), "ssd_forward", "x", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T *px = static_cast<const T*>(x.data_ptr()), *pB = static_cast<const T*>(B.data_ptr()),
            *pC = static_cast<const T*>(C.data_ptr());
    T* py = static_cast<T*>(y.data_ptr());
    launch_chunk_scalars<T>(d, static_cast<const T*>(dt.data_ptr()), cptr<float>(dt_bias),
                            static_cast<const float*>(A.data_ptr()), delta_opt(opt), pdelta, pS, s);
    launch_chunk_cb<T>(d, pC, pB, pK, s);
    if constexpr (kTensorCores<T>) {
      if (forward_mma_supported(d, px, pB, pC, py, init, last)) {
        Tensor ring = scratch(forward_mma_ring_floats(d), DType::f32);
        launch_forward_mma(d, px, pB, pC, cptr<float>(D), pS, pdelta, seq, pK, init,
                           static_cast<float*>(ring.data_ptr()), last, psync, py, s);
        return;
      }
    }
    Tensor states = scratch(state_elems, DType::f32);
    float* pstates = static_cast<float*>(states.data_ptr());
    launch_state_pass<T>(d, false, px, pB, pdelta, pS, seq, init, pstates, last, psync, s);
    launch_output<T>(d, px, pC, cptr<float>(D), pS, pdelta, seq, pstates, pK, py, s);
  });
}

}  // namespace mambatron::cuda
