// The SSD forward in one launch on mma.sync fragments: bf16, p 64, n 64 or 128, 16-byte
// aligned rows (forward_mma_supported). One block per (row, chunk, head), 8 warps:
//   1. the chunk's own state G = Xᵀ·diag(f⊙Δ)·B (chunk_state_product, X·diag(f⊙Δ) in
//      three bf16 parts), as the state pass's kernel makes it (ssd_chunk_state_mma.cu);
//   2. the carry: the state entering the chunk, H_in, from the block of the chunk before
//      (or `initial`), and E·H_in + G handed on to the next chunk's block (or `last`), in a
//      ring of two slots per (row, head): a slot is written again only after the block that
//      reads it has handed its own state on, so the states never leave L2;
//   3. the outputs of the chunk's tokens, warp w the 16 tokens of row tile w:
//      Y = diag(e)·C·H_inᵀ + D·X + (K ⊙ W)·diag(Δ)·X, H_in in hi/lo bf16 planes, the masked
//      matrix formed in registers at the fragments' places (K read from global memory)
//      and entering its product as hi/lo A fragments.
// Blocks take their (step, row, head) from a ticket in the order they start, so the block
// a chunk waits on is already running and the chains of all rows and heads move on
// together. X is read from DRAM once and the states never: ssd_forward.cu's state pass
// and output kernels serve every other case.
#include "ssd_mma.cuh"

namespace mambatron::cuda::ssd {

namespace {

using namespace mma_bf16;

constexpr int kP = 64, kWarps = 8, kThreads = 32 * kWarps;

template <int kQ, int kN>
struct ForwardMmaLayout {
  static constexpr int kT = kQ / 16;
  static constexpr size_t part = size_t(kQ) * kP;                            // elements of a part of X·diag(f⊙Δ)
  static constexpr size_t parts_bytes = 3 * part * 2, planes_bytes = 2 * size_t(kP) * kN * 2;
  static constexpr size_t x = 0, xs = x + size_t(kQ) * kP * 2;                // X; its scaled parts, then H_in's planes
  static constexpr size_t b = xs + (parts_bytes > planes_bytes ? parts_bytes : planes_bytes);  // B, then C
  static constexpr size_t S = b + size_t(kQ) * kN * 2, scale = S + kQ * sizeof(double);
  static constexpr size_t dl = scale + kQ * sizeof(float), e = dl + kQ * sizeof(float), doc = e + kQ * sizeof(float);
  static constexpr size_t bytes = doc + kQ * sizeof(int);
  static_assert(fits_two_blocks(bytes + sizeof(int64_t)), "ssd forward tensor-core kernel: two blocks an SM");
};

template <int kQ, int kN>
__global__ void __launch_bounds__(kThreads, 2)
    forward_mma_kernel(Dims d, const bf16* __restrict__ x, const bf16* __restrict__ Bm, const bf16* __restrict__ Cm,
                       const float* __restrict__ Dp, const double* __restrict__ S, const float* __restrict__ delta,
                       const int32_t* __restrict__ seq, const float* __restrict__ K, const float* __restrict__ init,
                       float* ring, float* __restrict__ last, int32_t* sync, bf16* __restrict__ y) {
  using Lay = ForwardMmaLayout<kQ, kN>;
  constexpr int kT = Lay::kT;
  extern __shared__ __align__(128) unsigned char smem[];
  bf16* xr = reinterpret_cast<bf16*>(smem + Lay::x);
  bf16* xs = reinterpret_cast<bf16*>(smem + Lay::xs);
  bf16* bc = reinterpret_cast<bf16*>(smem + Lay::b);
  double* Ss = reinterpret_cast<double*>(smem + Lay::S);
  float* scale = reinterpret_cast<float*>(smem + Lay::scale);
  float* dls = reinterpret_cast<float*>(smem + Lay::dl);
  float* es = reinterpret_cast<float*>(smem + Lay::e);
  int* docs = reinterpret_cast<int*>(smem + Lay::doc);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, tq = lane & 3;
  int32_t* flags = sync + 1;  // [b, h, nc]: the step's slot is written

  const PassPlace at = take_pass_place(d, sync);
  const int64_t c = at.step, bi = at.bi, j = at.j, gi = d.group(j);
  const Chunk ch = make_chunk(d, S, seq, bi, j, c);
  const int L = ch.L;
  const int64_t t0 = ch.t0, len = t0 + L;

  load_tile<kQ, kP, kThreads>(xr, x + d.xo(bi, 0, j), d.h * d.p, t0, len);
  load_tile<kQ, kN, kThreads>(bc, Bm + d.bco(bi, 0, gi), d.g * d.n, t0, len);
  cp_commit();
  static_assert(kQ <= kThreads, "ssd forward: one token a thread");
  if (tid < kQ) scale[tid] = state_scale<false>(d, S, delta, seq, ch, tid);
  fill_output_values(d, S, delta, seq, ch, kQ, Ss, dls, es, docs);
  cp_wait<0>();
  __syncthreads();
  // X·diag(f⊙Δ) in three bf16 parts, 8 columns of a token an item.
  static_assert(kQ * (kP / 8) % kThreads == 0, "ssd forward: whole items a thread");
#pragma unroll
  for (int u = 0; u < kQ * (kP / 8) / kThreads; ++u) {
    const int e = tid + u * kThreads, t = e / (kP / 8), ck = e % (kP / 8);
    put_scaled_parts(xs, int(Lay::part), t, ck, *reinterpret_cast<const uint4*>(xr + swz<kP>(t, ck)), scale[t]);
  }
  __syncthreads();

  float G[kN / 16][4];
  chunk_state_product<kN>(G, xs, int(Lay::part), bc, ch.Lt);
  __syncthreads();  // the parts and B are used up: C comes in B's place, H_in's planes in the parts'
  load_tile<kQ, kN, kThreads>(bc, Cm + d.bco(bi, 0, gi), d.g * d.n, t0, len);
  cp_commit();

  // The carry, through the ring: step c reads slot c mod 2 and writes slot (c + 1) mod 2.
  const CarryPlaces<kN> places;
  const int64_t head = bi * d.h + j;
  float* slots = ring + head * 2 * kP * kN;
  float2 in[kN / 16][2];
  places.take(in, c == 0, init ? init + d.sto(bi, j) : nullptr, slots + (c & 1) * kP * kN, flags + head * d.nc + c);
  const float E = ch.doc_last == ch.doc_in ? float(exp(ch.S_last)) : 0.f;
  const bool more = c + 1 < d.nc;
  float* out = more ? slots + ((c + 1) & 1) * kP * kN : (last ? last + d.sto(bi, j) : nullptr);
  places.hand(in, G, E, out, more ? flags + head * d.nc + c + 1 : nullptr);

  // H_in as hi and lo planes, swizzled [64][kN] tiles (row p, column n).
  bf16* planes = xs;
#pragma unroll
  for (int nt = 0; nt < kN / 16; ++nt)
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int at = places.at(nt, hr), p = at / kN, n = at % kN, o = swz<kN>(p, n >> 3) + (n & 7);
      uint32_t hi, lo;
      split_bf16(in[nt][hr].x, in[nt][hr].y, hi, lo);
      *reinterpret_cast<uint32_t*>(planes + o) = hi;
      *reinterpret_cast<uint32_t*>(planes + kP * kN + o) = lo;
    }
  cp_wait<0>();
  __syncthreads();  // the planes and C
  if (warp >= kT || 16 * warp >= L) return;  // no row tile, or rows past the chunk's end (no barrier follows)

  // e ⊙ C·H_inᵀ + D·X of this warp's rows.
  const bf16* cs = bc;
  float acc[kP / 8][4];
  zero_frags(acc);
  gemm_abt<kN, 8>(acc, cs, 16 * warp, planes);
  gemm_abt<kN, 8>(acc, cs, 16 * warp, planes + kP * kN);
  const float Dj = Dp ? Dp[j] : 0.f;
#pragma unroll
  for (int nt = 0; nt < kP / 8; ++nt)
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      const int t = 16 * warp + g + 8 * hr;
      const float2 xv = tile_pair(xr, t, 8 * nt + 2 * tq);
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
    gemm_split_a<kP>(acc, hi, lo, xr, 16 * ss);
  }
  // This warp's rows of C are used up: they stage its rows of y.
  __syncwarp();
  const float one[2] = {1.f, 1.f};
  store_rows<kP>(acc, one, bc + 16 * warp * kN, 0, y + d.xo(bi, 0, j), d.h * d.p, t0 + 16 * warp, len);
}

}  // namespace

bool forward_mma_supported(const Dims& d, const void* x, const void* B, const void* C, const void* y,
                           const float* init, const float* last) {
  return d.p == kP && (d.n == 64 || d.n == 128) && d.nc > 0 && aligned16(x) && aligned16(B) && aligned16(C) &&
         aligned16(y) && (!init || aligned16(init)) && (!last || aligned16(last));
}

void launch_forward_mma(const Dims& d, const bf16* x, const bf16* B, const bf16* C, const float* D, const double* S,
                        const float* delta, const int32_t* seq, const float* K, const float* init, float* ring,
                        float* last, int32_t* sync, bf16* y, cudaStream_t s) {
  const int64_t blocks = d.b * d.nc * d.h;
  if (blocks == 0) return;
  MT_CUDA_CHECK(cudaMemsetAsync(sync, 0, state_pass_sync_ints(d) * sizeof(int32_t), s));
  with_mma_sizes(d, [&](auto kq, auto kn) {
    constexpr int kQ = decltype(kq)::value, kN = decltype(kn)::value;
    launch_big(forward_mma_kernel<kQ, kN>, unsigned(blocks), kThreads, ForwardMmaLayout<kQ, kN>::bytes, s, d, x, B, C,
               D, S, delta, seq, K, init, ring, last, sync, y);
  });
}

}  // namespace mambatron::cuda::ssd
