// The state one chunk contributes on its own, G_c = Xᵀ·diag(scale)·B, on mma.sync
// fragments: bf16, p 64, n 64 or 128, 16-byte aligned rows (chunk_state_mma_supported).
// One block per (row, chunk, head) makes the whole [p][n] state; the heads of a group
// are adjacent in the grid, so B is read from DRAM about once. X·diag(scale) is staged
// in three bf16 parts (the states feed f32 outputs), as ssd_states.cu's chunk-state
// kernel does, which serves every other case.
#include "ssd_mma.cuh"

namespace mambatron::cuda::ssd {

namespace {

using namespace mma_bf16;

constexpr int kP = 64, kWarps = 8, kThreads = 32 * kWarps;  // warp w: p rows 16·(w mod 4), n half ⌊w / 4⌋

template <int kQ, int kN>
struct ChunkStateMmaLayout {
  static constexpr size_t part = size_t(kQ) * kP;  // elements of one part of X·diag(scale)
  static constexpr size_t x = 0, b = x + 3 * part * 2, scale = b + size_t(kQ) * kN * 2;
  static constexpr size_t bytes = scale + kQ * sizeof(float);
  static_assert(fits_two_blocks(bytes), "chunk states, tensor cores: two blocks an SM");
};

template <int kQ, int kN, bool kReverse>
__global__ void __launch_bounds__(kThreads, 2)
    chunk_state_mma_kernel(Dims d, const bf16* __restrict__ X, const bf16* __restrict__ Bm,
                           const double* __restrict__ S, const float* __restrict__ delta,
                           const int32_t* __restrict__ seq, float* __restrict__ states) {
  using Lay = ChunkStateMmaLayout<kQ, kN>;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* xs = reinterpret_cast<bf16*>(smem + Lay::x);
  bf16* bs = reinterpret_cast<bf16*>(smem + Lay::b);
  float* scale = reinterpret_cast<float*>(smem + Lay::scale);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tq = lane & 3;

  int64_t id = blockIdx.x;
  const int64_t j = id % d.h;
  id /= d.h;
  const int64_t c = id % d.nc, bi = id / d.nc, gi = d.group(j);
  const Chunk ch = make_chunk(d, S, seq, bi, j, c);
  const int64_t t0 = ch.t0;

  load_tile<kQ, kN, kThreads>(bs, Bm + d.bco(bi, 0, gi), d.g * d.n, t0, t0 + ch.L);
  cp_commit();
  // This thread's pieces of X (8 columns each) load while the scales are formed.
  constexpr int kChunks = kP / 8, kPer = kQ * kChunks / kThreads;
  uint4 xv[kPer];
#pragma unroll
  for (int u = 0; u < kPer; ++u) {
    const int e = tid + u * kThreads, t = e / kChunks, ck = e % kChunks;
    xv[u] = t < ch.L ? *reinterpret_cast<const uint4*>(X + d.xo(bi, t0 + t, j) + 8 * ck) : make_uint4(0, 0, 0, 0);
  }
  static_assert(kQ <= kThreads, "chunk states: one token a thread");
  if (tid < kQ) scale[tid] = state_scale<kReverse>(d, S, delta, seq, ch, tid);
  __syncthreads();
#pragma unroll
  for (int u = 0; u < kPer; ++u) {
    const int e = tid + u * kThreads, t = e / kChunks, ck = e % kChunks;
    const uint32_t words[4] = {xv[u].x, xv[u].y, xv[u].z, xv[u].w};
    uint32_t parts[3][4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&words[k]));
      uint32_t r[3];
      split_parts<3>(f.x * scale[t], f.y * scale[t], r);
#pragma unroll
      for (int q = 0; q < 3; ++q) parts[q][k] = r[q];
    }
#pragma unroll
    for (int q = 0; q < 3; ++q)
      *reinterpret_cast<uint4*>(xs + q * Lay::part + swz<kP>(t, ck)) =
          make_uint4(parts[q][0], parts[q][1], parts[q][2], parts[q][3]);
  }
  cp_wait<0>();
  __syncthreads();

  // acc (16 p rows × kN/2 columns) += (X·diag(scale))ᵀ·B over the chunk's token tiles.
  constexpr int kNT = kN / 16;  // n8 tiles of a warp's half
  const int pr = warp % 4, nh = warp / 4;
  float acc[kNT][4];
  zero_frags(acc);
  for (int ks = 0; ks < ch.Lt; ++ks) {
    uint32_t a[3][4];
#pragma unroll
    for (int q = 0; q < 3; ++q) ldsm_x4_t(a[q], b_addr<kP>(xs + q * Lay::part, 16 * ks, 2 * pr));
#pragma unroll
    for (int np = 0; np < kNT / 2; ++np) {
      uint32_t b[4];
      ldsm_x4_t(b, a_addr<kN>(bs, 16 * ks, 2 * (nh * kNT / 2 + np)));
#pragma unroll
      for (int q = 0; q < 3; ++q) {
        mma(acc[2 * np], a[q], b[0], b[1]);
        mma(acc[2 * np + 1], a[q], b[2], b[3]);
      }
    }
  }
  float* out = states + d.co(bi, j, c);
#pragma unroll
  for (int nt = 0; nt < kNT; ++nt) {
    const int col = nh * (kN / 2) + 8 * nt + 2 * tq, r = 16 * pr + g;
    *reinterpret_cast<float2*>(out + r * d.n + col) = make_float2(acc[nt][0], acc[nt][1]);
    *reinterpret_cast<float2*>(out + (r + 8) * d.n + col) = make_float2(acc[nt][2], acc[nt][3]);
  }
}

}  // namespace

bool chunk_state_mma_supported(const Dims& d, const void* X, const void* Bm, const float* states) {
  return d.p == kP && (d.n == 64 || d.n == 128) && aligned16(X) && aligned16(Bm) && aligned16(states);
}

void launch_chunk_state_mma(const Dims& d, bool reverse, const bf16* X, const bf16* Bm, const float* delta,
                            const double* S, const int32_t* seq, float* states, cudaStream_t s) {
  const int64_t blocks = d.b * d.nc * d.h;
  if (blocks == 0) return;
  with_chunk_tiles(d.Q, [&](auto kq) {
    constexpr int kQ = decltype(kq)::value;
    auto go = [&](auto n) {
      constexpr int kN = decltype(n)::value;
      auto kernel = reverse ? chunk_state_mma_kernel<kQ, kN, true> : chunk_state_mma_kernel<kQ, kN, false>;
      launch_big(kernel, unsigned(blocks), kThreads, ChunkStateMmaLayout<kQ, kN>::bytes, s, d, X, Bm, S, delta, seq,
                 states);
    };
    if (d.n == 64) go(std::integral_constant<int, 64>{});
    else go(std::integral_constant<int, 128>{});
  });
}

}  // namespace mambatron::cuda::ssd
