// The state pass on mma.sync fragments: bf16, p 64, n 64 or 128, 16-byte aligned rows
// (chunk_state_mma_supported). One block per (row, chunk, head) makes the chunk's own
// state G_c = Xᵀ·diag(scale)·B whole, in registers; the heads of a group are adjacent in
// the order blocks start, so B is read from DRAM about once. X·diag(scale) is staged in three bf16
// parts (the states feed f32 outputs), as ssd_states.cu's chunk-state kernel does, which
// serves every other case.
// The carry is fused: the block takes the state passed into its chunk from the block of
// the chunk before (or from `init`), leaves it in the chunk's slot, and hands
// E_c·carry + G_c to the next chunk's slot (or `last`), with the same fmaf as
// state_carry_kernel, so G_c never goes through memory. Blocks take their (step, row,
// head) from a ticket in the order they start, so the block a chunk waits on is already
// running, and all the rows' and heads' chains move on together; only the hand-over is
// serial. A flag per (row, head, step) says that the step's slot is written.
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
                           const int32_t* __restrict__ seq, const float* __restrict__ init, float* states,
                           float* __restrict__ last, int32_t* sync) {
  using Lay = ChunkStateMmaLayout<kQ, kN>;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* xs = reinterpret_cast<bf16*>(smem + Lay::x);
  bf16* bs = reinterpret_cast<bf16*>(smem + Lay::b);
  float* scale = reinterpret_cast<float*>(smem + Lay::scale);
  const int tid = threadIdx.x;
  int32_t* flags = sync + 1;  // [b, h, nc]: step's slot written

  const PassPlace at = take_pass_place(d, sync);
  const int64_t step = at.step, bi = at.bi, j = at.j, gi = d.group(j);
  const int64_t c = kReverse ? d.nc - 1 - step : step;
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
    put_scaled_parts(xs, int(Lay::part), t, ck, xv[u], scale[t]);
  }
  cp_wait<0>();
  __syncthreads();

  float acc[kN / 16][4];
  chunk_state_product<kN>(acc, xs, int(Lay::part), bs, ch.Lt);

  // The carry: the state entering this chunk stays in its slot, E·in + G goes on.
  const CarryPlaces<kN> places;
  const int64_t head = bi * d.h + j;
  float* slot = states + d.co(bi, j, c);
  float2 in[kN / 16][2];
  places.take(in, step == 0, init ? init + d.sto(bi, j) : nullptr, slot, flags + head * d.nc + step);
  if (step == 0)
#pragma unroll
    for (int nt = 0; nt < kN / 16; ++nt)
#pragma unroll
      for (int hr = 0; hr < 2; ++hr) *reinterpret_cast<float2*>(slot + places.at(nt, hr)) = in[nt][hr];
  const float E = ch.doc_last == ch.doc_in ? float(exp(ch.S_last)) : 0.f;
  const bool more = step + 1 < d.nc;
  float* out = more ? states + d.co(bi, j, kReverse ? c - 1 : c + 1) : (last ? last + d.sto(bi, j) : nullptr);
  places.hand(in, acc, E, out, more ? flags + head * d.nc + step + 1 : nullptr);
}

}  // namespace

bool chunk_state_mma_supported(const Dims& d, const void* X, const void* Bm, const float* init, const float* states,
                               const float* last) {
  return d.p == kP && (d.n == 64 || d.n == 128) && d.nc > 0 && aligned16(X) && aligned16(Bm) && aligned16(states) &&
         (!init || aligned16(init)) && (!last || aligned16(last));
}

void launch_chunk_state_mma(const Dims& d, bool reverse, const bf16* X, const bf16* Bm, const float* delta,
                            const double* S, const int32_t* seq, const float* init, float* states, float* last,
                            int32_t* sync, cudaStream_t s) {
  const int64_t blocks = d.b * d.nc * d.h;
  if (blocks == 0) return;
  MT_CUDA_CHECK(cudaMemsetAsync(sync, 0, state_pass_sync_ints(d) * sizeof(int32_t), s));
  with_mma_sizes(d, [&](auto kq, auto kn) {
    constexpr int kQ = decltype(kq)::value, kN = decltype(kn)::value;
    auto kernel = reverse ? chunk_state_mma_kernel<kQ, kN, true> : chunk_state_mma_kernel<kQ, kN, false>;
    launch_big(kernel, unsigned(blocks), kThreads, ChunkStateMmaLayout<kQ, kN>::bytes, s, d, X, Bm, S, delta, seq, init,
               states, last, sync);
  });
}

}  // namespace mambatron::cuda::ssd
