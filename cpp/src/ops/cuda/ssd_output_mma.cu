// SSD forward on CUDA, the outputs on mma.sync fragments: bf16, p 64, n 64 or 128,
// 16-byte aligned rows (output_mma_supported). One block per (row, head, chunk);
// warp w owns the 16 tokens of row tile w:
//   Y = diag(e)·C·H_inᵀ + D·X + (K ⊙ W)·diag(Δ)·X,
// C·H_inᵀ with H_in split once into hi/lo bf16 planes as it is staged, the masked
// matrix formed in registers at
// the fragments' places (K read from global memory) and entering its product as
// hi/lo A fragments. The math is ssd_forward.cu's output kernel, which serves every
// other case.
#include "ssd_mma.cuh"

namespace mambatron::cuda::ssd {

namespace {

using namespace mma_bf16;

constexpr int kP = 64;

template <int kQ, int kN>
struct OutMmaLayout {
  static constexpr int kT = kQ / 16, kWarps = kT, kThreads = 32 * kWarps;
  static constexpr size_t x = 0, c = x + size_t(kQ) * kP * 2, hin = c + size_t(kQ) * kN * 2;
  static constexpr size_t S = hin + size_t(kP) * kN * 2 * 2, dl = S + kQ * sizeof(double);
  static constexpr size_t e = dl + kQ * sizeof(float), doc = e + kQ * sizeof(float);
  static constexpr size_t bytes = doc + kQ * sizeof(int);
  static_assert(fits_two_blocks(bytes), "ssd output tensor-core kernel: two blocks an SM");
};

template <int kQ, int kN>
__global__ void __launch_bounds__(OutMmaLayout<kQ, kN>::kThreads, 2)
    output_mma_kernel(Dims d, const bf16* __restrict__ x, const bf16* __restrict__ Cm, const float* __restrict__ Dp,
                      const double* __restrict__ S, const float* __restrict__ delta, const int32_t* __restrict__ seq,
                      const float* __restrict__ states, const float* __restrict__ K, bf16* __restrict__ y) {
  using Lay = OutMmaLayout<kQ, kN>;
  constexpr int kThreads = Lay::kThreads;
  extern __shared__ __align__(128) unsigned char smem[];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tq = lane & 3;
  bf16* xs = reinterpret_cast<bf16*>(smem + Lay::x);
  bf16* cs = reinterpret_cast<bf16*>(smem + Lay::c);
  bf16* hin = reinterpret_cast<bf16*>(smem + Lay::hin);  // hi, lo planes
  double* Ss = reinterpret_cast<double*>(smem + Lay::S);
  float* dls = reinterpret_cast<float*>(smem + Lay::dl);
  float* es = reinterpret_cast<float*>(smem + Lay::e);
  int* docs = reinterpret_cast<int*>(smem + Lay::doc);

  int64_t id = blockIdx.x;
  const int64_t c = id % d.nc;
  id /= d.nc;
  const int64_t j = id % d.h, bi = id / d.h, gi = d.group(j);
  const Chunk ch = make_chunk(d, S, seq, bi, j, c);
  const int L = ch.L;
  const int64_t t0 = ch.t0, len = t0 + L;

  load_tile<kQ, kP, kThreads>(xs, x + d.xo(bi, 0, j), d.h * d.p, t0, len);
  load_tile<kQ, kN, kThreads>(cs, Cm + d.bco(bi, 0, gi), d.g * d.n, t0, len);
  cp_commit();
  StatePlanes<kP, kN, kThreads, 2> h;
  h.load(states + d.co(bi, j, c), d.n, tid);
  fill_output_values(d, S, delta, seq, ch, kQ, Ss, dls, es, docs);
  h.put(hin, tid);
  cp_wait<0>();
  __syncthreads();
  if (16 * warp >= L) return;  // rows past the chunk's end (no barrier follows)

  // e ⊙ C·H_inᵀ + D·X of this warp's rows.
  float acc[kP / 8][4];
  zero_frags(acc);
  gemm_abt<kN, 8>(acc, cs, 16 * warp, hin);
  gemm_abt<kN, 8>(acc, cs, 16 * warp, hin + kP * kN);
  const float Dj = Dp ? Dp[j] : 0.f;
#pragma unroll
  for (int nt = 0; nt < kP / 8; ++nt)
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int t = 16 * warp + g + 8 * hr;
      const float2 xv = tile_pair(xs, t, 8 * nt + 2 * tq);
      acc[nt][2 * hr] = es[t] * acc[nt][2 * hr] + Dj * xv.x;
      acc[nt][2 * hr + 1] = es[t] * acc[nt][2 * hr + 1] + Dj * xv.y;
    }
  // += (K ⊙ W)·diag(Δ)·X over the tiles s ≤ w.
  const float* Kc = K + d.ko(bi, c, gi);
  for (int ss = 0; ss <= warp; ++ss) {
    float m[2][4];
#pragma unroll
    for (int nh = 0; nh < 2; ++nh)
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) {
        const int t = 16 * warp + g + 8 * hr, s = 16 * ss + 8 * nh + 2 * tq;
        float2 kv = make_float2(0.f, 0.f);
        if (t < L && s <= t) kv = *reinterpret_cast<const float2*>(Kc + t * kQ + s);
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int se = s + e;
          const float kk = e ? kv.y : kv.x;
          m[nh][2 * hr + e] = se <= t && t < L && docs[se] == docs[t] ? kk * decay<bf16>(Ss[t] - Ss[se]) * dls[se] : 0.f;
        }
      }
    uint32_t hi[4], lo[4];
    c_to_a_split(m, hi, lo);
    gemm_split_a<kP>(acc, hi, lo, xs, 16 * ss);
  }
  // This warp's rows of C are used up: they stage its rows of y.
  __syncwarp();
  const float one[2] = {1.f, 1.f};
  store_rows<kP>(acc, one, cs + 16 * warp * kN, 0, y + d.xo(bi, 0, j), d.h * d.p, t0 + 16 * warp, len);
}

}  // namespace

bool output_mma_supported(const Dims& d, const void* x, const void* C, const void* y, const float* states) {
  return d.p == kP && (d.n == 64 || d.n == 128) && aligned16(x) && aligned16(C) && aligned16(y) && aligned16(states);
}

void launch_output_mma(const Dims& d, const bf16* x, const bf16* C, const float* D, const double* S,
                       const float* delta, const int32_t* seq, const float* states, const float* K, bf16* y,
                       cudaStream_t s) {
  const int64_t blocks = d.b * d.h * d.nc;
  if (blocks == 0) return;
  with_chunk_tiles(d.Q, [&](auto kq) {
    constexpr int kQ = decltype(kq)::value;
    auto go = [&](auto kernel, int threads, size_t bytes) {
      launch_big(kernel, unsigned(blocks), threads, bytes, s, d, x, C, D, S, delta, seq, states, K, y);
    };
    if (d.n == 64) go(output_mma_kernel<kQ, 64>, OutMmaLayout<kQ, 64>::kThreads, OutMmaLayout<kQ, 64>::bytes);
    else go(output_mma_kernel<kQ, 128>, OutMmaLayout<kQ, 128>::kThreads, OutMmaLayout<kQ, 128>::bytes);
  });
}

}  // namespace mambatron::cuda::ssd
