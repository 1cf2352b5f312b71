// Kernels of the CUDA Mamba-1 selective scan's backward (launched by selective_scan.cu).
//
// Backward never stores per-token states: the checkpoint walk (or, with few rows, the
// chunk passes; selective_scan.cuh) keeps the state entering every kSegment-th token (a
// coarse checkpoint, [b, l/K2, n, d] floats). The state
// gradient G runs backwards through tokens by a recurrence that needs no states, so
// two more chunk passes give the G entering each span of segments from the right
// (see "state gradient over chunks"). The backward kernel then runs a block per (row,
// span, channel block): it walks the span's segments in reverse, recomputes the
// segment forward to keep the state entering each chunk of K tokens in shared memory,
// then for each chunk in reverse recomputes the chunk's states into shared memory and
// runs the reverse recurrence over it. Sums over the channels of a group (dB, dC) are
// made per token, per block, in a fixed order (in shared memory, four running sums over
// the channels taken in turn, then added; or, in staged blocks, by warp shuffles, see
// "Staged blocks"); a group wider than a block gets per-block
// partials that a last kernel adds in block order. dA, dD, ddelta_bias are summed per
// (row, span) in f64 (dA in f32 within a segment) and then over spans and rows in
// order. No atomics: the same bits on every run.
#pragma once
#include <cstdint>

#include "selective_scan.cuh"

namespace mambatron::cuda::scan {

// Shared-memory plan of the backward kernel for NS state slots: threads per block,
// tokens per chunk (K), chunks per segment (M).
template <int NS>
struct Plan {
  static constexpr int kThreads = NS <= 16 ? 64 : 32;
  static constexpr int kChunk = NS <= 32 ? 8 : 4;
  static constexpr int kChunks = 8;
  static constexpr int kSegment = kChunk * kChunks;
  // One thread's dB and dC terms of a token: a row of 2·NS + 1 floats (the odd
  // stride keeps both the row writes and the column sums free of bank conflicts).
  static constexpr int kTermRow = 2 * NS + 1;
  // floats: chunk-entry states [M][NS][threads], token-entry states [K][NS][threads],
  // the dB and dC terms [threads][kTermRow]
  static constexpr size_t kSmemBytes = (size_t(kChunks + kChunk) * NS + kTermRow) * kThreads * sizeof(float);
};

// ---------------------------------------------------------------- state gradient over chunks
// Going backwards, token t turns the gradient of the state after it, G, into
//   G ← reset_t ? 0 : (G + dyc_t·C_t) ⊙ exp(Δ_t·A),   dyc = dy (times z·σ(z) with a gate),
// which needs no states and is linear in G. Over a chunk [t0, t1) the G leaving it to
// the left (after token t0) is therefore decay ⊙ G_right + G_local: G_local is the walk
// from G = 0, decay = exp(A·ΣΔ), or 0 when a document starts at any token of the chunk,
// t0 included (a reset at t0 cuts the flow from t0 into t0 − 1, out of the chunk).
//  1. scan_grad_local_kernel walks every chunk but a row's first in reverse from G = 0.
//  2. scan_grad_carry_kernel, a thread per (row, state, channel), walks a row's chunks
//     from the last, where G is d_final_state, and writes the G entering each chunk
//     from the right.
// Chunk q's slot [b, nchunk, n, d] holds chunk q + 1's G_local after pass 1 and the G
// entering chunk q after pass 2 (slot nchunk − 1 is unused); ΣΔ [b, nchunk, d] likewise.

// One token's inputs of that recurrence, as stored.
template <class T, int NS>
struct GradToken {
  static constexpr int P = Pack<T>::N;
  T delta, z, dy;
  bool reset;
  Pack<T> C[NS / P];
  __device__ __forceinline__ float c(int j) const { return to_f32(C[j / P].v[j % P]); }
};

template <class T, int NS>
__device__ __forceinline__ void load_grad(const ScanArgs<T>& a, int64_t i, int64_t t, int64_t c, int64_t gr,
                                          GradToken<T, NS>& o) {
  constexpr int P = Pack<T>::N;
  const int64_t tok = i * a.l + t, idx = tok * a.d + c, row = (tok * a.g + gr) * a.n;
  o.delta = a.delta[idx];
  o.dy = a.dy[idx];
  o.z = a.z ? a.z[idx] : T{};
  o.reset = a.seq && t > 0 && a.seq[tok] != a.seq[tok - 1];
  if (a.bc_vec) {
#pragma unroll
    for (int p = 0; p < NS / P; ++p) o.C[p] = reinterpret_cast<const Pack<T>*>(a.C + row)[p];
  } else {
#pragma unroll
    for (int j = 0; j < NS; ++j) o.C[j / P].v[j % P] = j < a.n ? a.C[row + j] : T{};
  }
}

// Pass 1 over chunks 1 … nchunk − 1 of every row (nothing leaves chunk 0 but
// d_initial_state, which the backward kernel writes). dsum is NaN where a document
// starts in the chunk.
template <class T, int NS>
__global__ void scan_grad_local_kernel(ScanArgs<T> a, int64_t kc, int64_t nchunk, float* grads, float* dsum) {
  const int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (e >= a.b * (nchunk - 1) * a.d) return;
  ChunkPos p = chunk_pos(e, nchunk - 1, a.d, a.l, kc);  // p.k: the slot, chunk p.k + 1
  p.t0 += kc;
  p.t1 = p.t0 + kc < a.l ? p.t0 + kc : a.l;
  const int64_t gr = p.c / (a.d / a.g), iq = p.i * nchunk + p.k;
  float A2[NS], G[NS];
  load_channel_log2<T, NS>(a, p.c, A2);
#pragma unroll
  for (int j = 0; j < NS; ++j) G[j] = 0.f;
  const float bc = a.bias ? a.bias[p.c] : 0.f;
  float S = 0.f;
  bool reset = false;
  GradToken<T, NS> next;
  if (kAhead<NS> && p.t0 < p.t1) load_grad<T, NS>(a, p.i, p.t1 - 1, p.c, gr, next);
  for (int64_t t = p.t1 - 1; t >= p.t0; --t) {
    if (!kAhead<NS>) load_grad<T, NS>(a, p.i, t, p.c, gr, next);
    const GradToken<T, NS> k = next;
    if (kAhead<NS> && t > p.t0) load_grad<T, NS>(a, p.i, t - 1, p.c, gr, next);
    const float dt = step_size(to_f32(k.delta) + bc, a.softplus);
    float dyc = to_f32(k.dy);
    if (a.z) {
      const float z = to_f32(k.z);
      dyc *= z * sigmoid(z);
    }
#pragma unroll
    for (int j = 0; j < NS; ++j) G[j] = k.reset ? 0.f : (G[j] + dyc * k.c(j)) * exp2_ftz(dt * A2[j]);
    S += dt;
    reset |= k.reset;
  }
#pragma unroll
  for (int j = 0; j < NS; ++j)
    if (j < a.n) grads[(iq * a.n + j) * a.d + p.c] = G[j];
  dsum[iq * a.d + p.c] = reset ? __int_as_float(0x7fffffff) : S;
}

// Pass 2: grads[i, q, j, c] ← the G entering chunk q from the right (in place of chunk
// q + 1's own part, read first), from d_final_state at the row's last token.
__global__ void scan_grad_carry_kernel(const float* __restrict__ A, const float* __restrict__ dfinal, int64_t b,
                                       int64_t d, int64_t n, int64_t nchunk, const float* __restrict__ dsum,
                                       float* __restrict__ grads) {
  constexpr int U = 8;  // chunks read ahead of the dependent updates
  const int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (e >= b * n * d) return;
  const int64_t c = e % d, j = (e / d) % n, i = e / d / n;
  const float A2 = A[c * n + j] * 1.4426950408889634f;
  float G = dfinal ? dfinal[(i * d + c) * n + j] : 0.f;
  for (int64_t q0 = nchunk - 2; q0 >= 0; q0 -= U) {
    float own[U], decay[U];
#pragma unroll
    for (int r = 0; r < U; ++r) {
      chunk_part(grads, dsum, i * nchunk + q0 - r, q0 - r >= 0, n, d, j, c, A2, own[r], decay[r]);
    }
#pragma unroll
    for (int r = 0; r < U; ++r)
      if (q0 - r >= 0) {
        G = decay[r] * G + own[r];
        grads[((i * nchunk + q0 - r) * n + j) * d + c] = G;
      }
  }
}

// ---------------------------------------------------------------- backward
// Channel block k of a row: channels [c0, c1) holding ngr groups from g0 (several
// whole groups, or a slice p of one group when a group is wider than a block).
struct Span {
  int64_t c0, c1, g0, ngr, p, width;  // width: channels per group within the block
};

template <class T>
__device__ __forceinline__ Span block_span(const ScanArgs<T>& a, int64_t k, int threads) {
  Span s;
  if (a.cpg >= threads) {
    s.g0 = k / a.per_group;
    s.p = k % a.per_group;
    s.c0 = s.g0 * a.cpg + s.p * threads;
    s.c1 = s.c0 + threads < (s.g0 + 1) * a.cpg ? s.c0 + threads : (s.g0 + 1) * a.cpg;
    s.ngr = 1;
    s.width = s.c1 - s.c0;
  } else {
    s.g0 = k * a.gpb;
    s.ngr = s.g0 + a.gpb < a.g ? a.gpb : a.g - s.g0;
    s.p = 0;
    s.c0 = s.g0 * a.cpg;
    s.c1 = s.c0 + s.ngr * a.cpg;
    s.width = a.cpg;
  }
  return s;
}

// Staged blocks: when a block's channels are all of one group (the group's width a
// multiple of the block), B and C are rows of NS elements in 16-byte packs and the
// activations' rows are 16-byte aligned, every visit of a chunk of K tokens (the
// segment's walk forward, then each chunk again in reverse) reads the chunk's inputs
// from a shared-memory slot that cp.async filled during the previous visit: no token
// waits on global memory. A channel's state slots are then shared by a team of kTeam
// adjacent lanes, NS / kTeam each: a block has kTeam threads a channel, and a thread a
// quarter of the registers. The sums over a channel's slots (y, the gradients of u and
// Δ) run by a fixed butterfly inside the team. dB and dC are summed over the block's
// channels by warp shuffles (a fixed butterfly) per token; the warps' sums of a chunk's
// tokens are added in warp order once the chunk is done, every thread taking a few.
constexpr int kTeam = 4;
template <class T, int NS>
struct Stage {
  using PL = Plan<NS>;
  static constexpr int CH = PL::kThreads, SL = NS / kTeam;  // channels of a block, slots of a thread
  static constexpr int BC = CH * kTeam, K = PL::kChunk, W = BC / 32;
  using Slot = TokenSlot<T, NS, K, CH, 4>;  // u, Δ, z, dy
  // The warps' dB and dC sums of a chunk's tokens: [K][W][2·NS] floats.
  static constexpr size_t kSums = size_t(K) * W * 2 * NS * sizeof(float);
  // A slot's token factors (token_factors): [4][K][CH] floats, Δ, dΔ/dv, gate, its slope.
  static constexpr size_t kFactors = size_t(4) * K * CH * sizeof(float);
  // The chunk's du, dΔ and dz as written: [3][K][CH] T, stored 16 bytes a thread at its end.
  static constexpr size_t kOuts = size_t(3) * K * CH * sizeof(T);
  static constexpr size_t kSmemBytes =
      size_t(PL::kChunks + K) * SL * BC * sizeof(float) + kSums + 2 * (Slot::kBytes + kFactors) + kOuts;
};

// What the backward takes from a token's v = delta + bias and gate input z: Δ, dΔ/dv,
// the gate z·σ(z) and its slope σ(z)·(1 + z·(1 − σ(z))) (1 and 0 without a gate).
struct Factors {
  float dt, dsp, gate, dgate;
};
__device__ __forceinline__ Factors token_factors(float v, float z, bool softplus, bool gated) {
  Factors f;
  if (softplus && v <= 20.f) {  // as step_size, with σ(v) = e^v / (1 + e^v) from the same e^v
    const float e = expf(v);
    f.dt = log1pf(e);
    f.dsp = e / (1.f + e);
  } else {
    f.dt = v;
    f.dsp = 1.f;
  }
  const float sg = gated ? sigmoid(z) : 0.f;
  f.gate = gated ? z * sg : 1.f;
  f.dgate = gated ? sg * (1.f + z * (1.f - sg)) : 0.f;
  return f;
}

// Token t0 + k of a slot for channel `ch` of the block and its team lane q (the slots
// q·SL … of B and C), as load_token reads a whole channel's from global memory but for
// v and z (their factors are in the slot's table); dy beside it.
template <class T, int NS>
__device__ __forceinline__ void read_token(const ScanArgs<T>& a, const char* slot, int k, int64_t t, int ch, int q,
                                           bool with_c, Token<Stage<T, NS>::SL>& o, float* dy = nullptr) {
  using S = Stage<T, NS>;
  using L = typename S::Slot;
  constexpr int K = S::K, SL = S::SL;
  const T* chs = reinterpret_cast<const T*>(slot);
  o.u = to_f32(chs[k * S::CH + ch]);
  if (dy) *dy = to_f32(chs[(3 * K + k) * S::CH + ch]);
  const T* rows = reinterpret_cast<const T*>(slot + L::kChannels);
#pragma unroll
  for (int s = 0; s < SL; ++s) {
    o.B[s] = to_f32(rows[k * NS + q * SL + s]);
    o.C[s] = with_c ? to_f32(rows[(K + k) * NS + q * SL + s]) : 0.f;
  }
  const int32_t* ids = reinterpret_cast<const int32_t*>(slot + L::kChannels + L::kRows);
  o.reset = a.seq && t > 0 && ids[k + 1] != ids[k];
}

// Σ over the W lanes of a team (adjacent lanes, W a power of two), the same bits on each.
template <int W>
__device__ __forceinline__ float team_sum(float v) {
#pragma unroll
  for (int o = W / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Σ of v[x], x < V, over the lanes of the warp that share lane mod W (32 / W of them; V
// a multiple of that), reduce-scattered: lane L ends with the sums of
// x = ⌊L / W⌋·RV + r in v[r], r < RV = V·W / 32. A butterfly of fixed order.
template <int V, int W>
__device__ __forceinline__ void warp_reduce_scatter(float (&v)[V], int lane) {
  static_assert(V * W % 32 == 0, "whole lanes");
#pragma unroll
  for (int o = 16; o >= W; o >>= 1) {
    const int h = V * o / 32;
    const bool up = lane & o;
#pragma unroll
    for (int r = 0; r < h; ++r) {
      const float send = up ? v[r] : v[r + h], keep = up ? v[r + h] : v[r];
      v[r] = keep + __shfl_xor_sync(0xffffffffu, send, o);
    }
  }
}

// Threads of a block: a staged block has kTeam a channel.
template <class T, int NS, bool kStaged>
constexpr int kBwdThreads = kStaged ? Stage<T, NS>::BC : Plan<NS>::kThreads;
// Blocks an SM the staged kernel's registers must allow: 2 (at NS 16: 256 threads of at
// most 128 registers, 100 KB of shared memory a block in bf16, 112 KB in f32); the 512
// blocks of a b 4 × d 8192 backward then fill two waves of 132 SMs.
constexpr int kBwdTeamBlocks = 2;
// Blocks (row, span, channel block), the channel block fastest so that blocks running
// together share tokens' B and C in L2. Staged blocks run teams of kTeam lanes per
// channel (SL slots a thread); the others a thread per channel.
template <class T, int NS, bool kStaged>
__global__ void __launch_bounds__(kBwdThreads<T, NS, kStaged>, kStaged ? kBwdTeamBlocks : 1)
    scan_bwd_kernel(ScanArgs<T> a, int64_t nseg) {
  using PL = Plan<NS>;
  using S = Stage<T, NS>;
  constexpr int BC = kBwdThreads<T, NS, kStaged>, K = PL::kChunk, M = PL::kChunks, K2 = PL::kSegment;
  constexpr int R = PL::kTermRow, W = kStaged ? kTeam : 1, SL = NS / W, CH = BC / W;
  extern __shared__ float4 scan_smem[];
  float* fk = reinterpret_cast<float*>(scan_smem);  // [M][SL][BC]
  float* hs = fk + M * SL * BC;                      // [K][SL][BC]
  // Not staged: [BC][R], dB terms, then dC terms. Staged: the warps' sums, then two slots.
  float* red = hs + K * SL * BC;
  char* slots = reinterpret_cast<char*>(red) + S::kSums;
  float* facs = reinterpret_cast<float*>(slots + 2 * S::Slot::kBytes);  // [2][4][K][CH]
  T* outs = reinterpret_cast<T*>(facs + 2 * 4 * K * CH);                 // [3][K][CH]
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, q = tid % W, chn = tid / W;
  // Segment indices fit in 32 bits (rows of fewer than 2^36 tokens); few values stay
  // live across the walk, where registers are short.
  // The grid and its factors are below 2^31.
  const unsigned rs = blockIdx.x / unsigned(a.blocks_per_row), nspan = unsigned(a.nspan);
  const int64_t i = rs / nspan;
  const int sn = int(rs % nspan);
  const Span sp = block_span(a, blockIdx.x % unsigned(a.blocks_per_row), CH);
  const int64_t c = sp.c0 + chn;
  const int seg0 = sn * int(a.span), seg1 = seg0 + a.span < nseg ? seg0 + int(a.span) : int(nseg);
  const bool active = kStaged || c < sp.c1;  // staged blocks are full
  const int64_t gr = active ? c / a.cpg : sp.g0;
  // This thread's slots j = q·SL + s of channel c.
  auto slot_of = [&](int s) { return q * SL + s; };
  float A2[SL], G[SL];
#pragma unroll
  for (int s = 0; s < SL; ++s) {
    A2[s] = active && slot_of(s) < a.n ? a.A[c * a.n + slot_of(s)] * 1.4426950408889634f : 0.f;
    G[s] = 0.f;
  }
  if (active && sn + 1 < int(nspan)) {  // from the chunk that ends where the next span starts
    const float* g = a.gin + (i * a.ngchunk + (sn + 1) * a.span * K2 / a.gchunk - 1) * a.n * a.d + c;
#pragma unroll
    for (int s = 0; s < SL; ++s)
      if (slot_of(s) < a.n) G[s] = g[slot_of(s) * a.d];
  } else if (active && a.dfinal) {
#pragma unroll
    for (int s = 0; s < SL; ++s)
      if (slot_of(s) < a.n) G[s] = a.dfinal[(i * a.d + c) * a.n + slot_of(s)];
  }
  const float Dc = active && a.D ? a.D[c] : 0.f, bc = active && a.bias ? a.bias[c] : 0.f;
  double dD_acc = 0, dbias_acc = 0;  // lane 0 of a team only
  const int outputs = int(sp.ngr * 2 * a.n);  // per token: (dB | dC, group, state)
  const int spread = outputs > 0 && outputs < BC ? BC / outputs : 1;
  const bool direct = a.per_group == 1;
  const int64_t half = a.b * a.g * a.per_group * a.l * a.n;  // dB's partials, then dC's

  // Staged: the slot of the current visit.
  int slot = 0;
  // The next visit's chunk (from token next_t0; none when negative) into the other slot,
  // then this visit's chunk waited for and its token factors made, a (token, channel) a
  // thread rather than once a team lane: all four for the reverse pass, Δ alone for the
  // walk forward. Every thread passes here together.
  constexpr int KC = K * CH;
  auto begin_visit = [&](int64_t next_t0, bool all) {
    __syncthreads();  // the other slot's last visit is over
    if (next_t0 >= 0)
      stage_tokens<T, NS, typename S::Slot, 4>(a, slots + (slot ^ 1) * S::Slot::kBytes, i, next_t0, sp.c0, gr, tid, BC);
    cp_commit();
    cp_wait<1>();
    __syncthreads();
    const T* chs = reinterpret_cast<const T*>(slots + slot * S::Slot::kBytes);
    float* f = facs + slot * 4 * KC;
    for (int e = tid; e < KC; e += BC) {
      const float v = to_f32(chs[KC + e]) + (a.bias ? a.bias[sp.c0 + e % CH] : 0.f);
      if (!all) {
        f[e] = step_size(v, a.softplus);
        continue;
      }
      const Factors x = token_factors(v, to_f32(chs[2 * KC + e]), a.softplus, a.z != nullptr);
      f[e] = x.dt;
      f[KC + e] = x.dsp;
      f[2 * KC + e] = x.gate;
      f[3 * KC + e] = x.dgate;
    }
    __syncthreads();
  };
  // Token k's factors of the current visit.
  auto factors_at = [&](int k) {
    const float* f = facs + slot * 4 * KC + k * CH + chn;
    return Factors{f[0], f[KC], f[2 * KC], f[3 * KC]};
  };
  if constexpr (kStaged) {
    if (seg1 > seg0) stage_tokens<T, NS, typename S::Slot, 4>(a, slots, i, int64_t(seg1 - 1) * K2, sp.c0, gr, tid, BC);
    cp_commit();
  }

  for (int seg = seg1 - 1; seg >= seg0; --seg) {
    const int64_t ts0 = int64_t(seg) * K2, ts1 = ts0 + K2 < a.l ? ts0 + K2 : a.l;
    const int nck = int((ts1 - ts0 + K - 1) / K);
    float dA_seg[SL], h[SL];
#pragma unroll
    for (int s = 0; s < SL; ++s) {
      dA_seg[s] = 0.f;
      h[s] = active && slot_of(s) < a.n ? a.ckpt[((i * nseg + seg) * a.n + slot_of(s)) * a.d + c] : 0.f;
    }
    // The state entering each chunk of the segment.
    Token<SL> next;
    if constexpr (kStaged) {
      for (int m = 0; m < nck; ++m) {
        const int64_t t0 = ts0 + int64_t(m) * K;
#pragma unroll
        for (int s = 0; s < SL; ++s) fk[(m * SL + s) * BC + tid] = h[s];
        if (m == nck - 1) break;  // the last chunk is walked by the reverse pass, which it starts
        begin_visit(t0 + K, false);
        const char* cur = slots + slot * S::Slot::kBytes;
        // A whole chunk (only a row's last chunk is short, and it is walked by the reverse
        // pass alone), unrolled.
#pragma unroll
        for (int r = 0; r < K; ++r) {
          read_token<T, NS>(a, cur, r, t0 + r, chn, q, false, next);
          advance<SL>(h, A2, next, factors_at(r).dt);
        }
        slot ^= 1;
      }
    } else {  // inputs read one token ahead
      if (active) load_token<T, NS>(a, i, ts0, c, gr, bc, false, next);
      for (int64_t t = ts0; t < ts1; ++t) {
        if ((t - ts0) % K == 0)
#pragma unroll
          for (int s = 0; s < SL; ++s) fk[((t - ts0) / K * SL + s) * BC + tid] = h[s];
        if (!active) continue;
        const Token<SL> k = next;
        if (t + 1 < ts1) load_token<T, NS>(a, i, t + 1, c, gr, bc, false, next);
        advance<SL>(h, A2, k, step_size(k.v, a.softplus));
      }
    }
    for (int m = nck - 1; m >= 0; --m) {
      const int64_t t0 = ts0 + int64_t(m) * K, t1 = t0 + K < ts1 ? t0 + K : ts1;
      // The state entering each token of the chunk (before a document reset).
#pragma unroll
      for (int s = 0; s < SL; ++s) h[s] = fk[(m * SL + s) * BC + tid];
      const char* cur = slots + slot * S::Slot::kBytes;
      if constexpr (kStaged) {
        begin_visit(m > 0 ? t0 - K : seg > seg0 ? int64_t(seg - 1) * K2 : -1, true);
#pragma unroll
        for (int r = 0; r < K; ++r) {
          if (r == int(t1 - t0)) break;
#pragma unroll
          for (int s = 0; s < SL; ++s) hs[(r * SL + s) * BC + tid] = h[s];
          read_token<T, NS>(a, cur, r, t0 + r, chn, q, false, next);
          advance<SL>(h, A2, next, factors_at(r).dt);
        }
      } else if (active) {
        load_token<T, NS>(a, i, t0, c, gr, bc, false, next);
        for (int64_t t = t0; t < t1; ++t) {
#pragma unroll
          for (int s = 0; s < SL; ++s) hs[((t - t0) * SL + s) * BC + tid] = h[s];
          const Token<SL> k = next;
          if (t + 1 < t1) load_token<T, NS>(a, i, t + 1, c, gr, bc, false, next);
          advance<SL>(h, A2, k, step_size(k.v, a.softplus));
        }
        load_token<T, NS>(a, i, t1 - 1, c, gr, bc, true, next);
      }
      // The reverse recurrence over the chunk, token t = t0 + r (not staged: token t − 1's
      // inputs read during token t).
      const int64_t idx0 = (i * a.l + t0) * a.d + c;  // token t0's element of channel c
      for (int r = int(t1 - t0) - 1; r >= 0; --r) {
        const int64_t t = t0 + r;
        float terms[2 * SL];  // this thread's dB terms, then its dC terms
        if (active) {
          Token<SL> k;
          Factors x;
          float dyc;  // gradient of the output before the gate
          if constexpr (kStaged) {
            read_token<T, NS>(a, cur, r, t, chn, q, true, k, &dyc);
            x = factors_at(r);
          } else {
            k = next;
            if (t > t0) load_token<T, NS>(a, i, t - 1, c, gr, bc, true, next);
            dyc = to_f32(a.dy[idx0 + r * a.d]);
            x = token_factors(k.v, k.z, a.softplus, a.z != nullptr);
          }
          const float dt = x.dt;
          float hp[SL], E[SL], hc[SL];
          float ypre = 0.f;
#pragma unroll
          for (int s = 0; s < SL; ++s) {
            hp[s] = k.reset ? 0.f : hs[(r * SL + s) * BC + tid];
            E[s] = exp2_ftz(dt * A2[s]);
            hc[s] = E[s] * hp[s] + dt * k.u * k.B[s];
            ypre += hc[s] * k.C[s];
          }
          if (a.z) {
            ypre = team_sum<W>(ypre) + Dc * k.u;
            if (q == 0) {
              const T dz = from_f32<T>(dyc * ypre * x.dgate);
              if constexpr (kStaged) outs[(2 * K + r) * CH + chn] = dz;
              else a.dz[idx0 + r * a.d] = dz;
            }
            dyc *= x.gate;
          }
          if (q == 0) dD_acc += double(dyc) * double(k.u);
          float gB = 0.f, gEHA = 0.f;
          const float dtu = dt * k.u;
#pragma unroll
          for (int s = 0; s < SL; ++s) {
            const float gj = G[s] + dyc * k.C[s];  // total gradient of h_t
            terms[s] = dtu * gj;                   // dB
            terms[SL + s] = dyc * hc[s];           // dC
            gB += gj * k.B[s];
            const float geh = gj * E[s] * hp[s];
            dA_seg[s] += dt * geh;
            gEHA += geh * A2[s];  // times ln 2 below
            G[s] = k.reset ? 0.f : gj * E[s];  // nothing flows into a previous document
          }
          gB = team_sum<W>(gB);
          gEHA = team_sum<W>(gEHA);
          if (q == 0) {
            const float dd = (gEHA * 0.6931471805599453f + k.u * gB) * x.dsp;
            const T du = from_f32<T>(dt * gB + Dc * dyc), ddt = from_f32<T>(dd);
            if constexpr (kStaged) {
              outs[r * CH + chn] = du;
              outs[(K + r) * CH + chn] = ddt;
            } else {
              a.du[idx0 + r * a.d] = du;
              a.ddelta[idx0 + r * a.d] = ddt;
            }
            dbias_acc += double(dd);
          }
        } else {
#pragma unroll
          for (int s = 0; s < 2 * SL; ++s) terms[s] = 0.f;
        }
        if constexpr (kStaged) {
          // This warp's sums over its channels, by shuffles, into the chunk's table. Lane L
          // holds the sums of values x = ⌊L / W⌋·RV + r of its slots (q = L mod W), value x
          // being (dB | dC)·NS + state.
          constexpr int RV = 2 * SL * W / 32;
          warp_reduce_scatter<2 * SL, W>(terms, lane);
          float* xs = red + (r * S::W + warp) * 2 * NS;
#pragma unroll
          for (int v = 0; v < RV; ++v) {
            const int x = lane / W * RV + v;
            xs[x / SL * NS + q * SL + x % SL] = terms[v];
          }
        } else {
#pragma unroll
          for (int j = 0; j < 2 * NS; ++j) red[tid * R + j] = terms[j];
          __syncthreads();
          // Sums over each group's channels of the block, in channel order.
          if (tid % spread == 0) {
            for (int o = tid / spread; o < outputs; o += BC / spread) {
              const int which = o / int(sp.ngr * a.n), gl = (o / int(a.n)) % int(sp.ngr), j = o % int(a.n);
              const float* col = red + gl * sp.width * R + which * NS + j;
              // Four running sums (channels q mod 4), added in a fixed order at the end.
              float s4[4] = {0.f, 0.f, 0.f, 0.f};
              int64_t u = 0;
              for (; u + 4 <= sp.width; u += 4)
#pragma unroll
                for (int r = 0; r < 4; ++r) s4[r] += col[(u + r) * R];
              for (; u < sp.width; ++u) s4[u % 4] += col[u * R];
              const float s = (s4[0] + s4[1]) + (s4[2] + s4[3]);
              if (direct) {
                T* out = which == 0 ? a.dB : a.dC;
                out[((i * a.l + t) * a.g + sp.g0 + gl) * a.n + j] = from_f32<T>(s);
              } else {
                a.part[which * half + (((i * a.g + sp.g0) * a.per_group + sp.p) * a.l + t) * a.n + j] = s;
              }
            }
          }
          __syncthreads();
        }
      }
      if constexpr (kStaged) {
        // The chunk's dB and dC: the warps' sums added in warp order; then its du, dΔ (and
        // dz) rows, 16 bytes a thread. The tables are written again only after the next
        // visit's first barrier.
        __syncthreads();
        const int kn = int(t1 - t0);
        for (int e = tid; e < kn * 2 * NS; e += BC) {
          const int k = e / (2 * NS), y = e % (2 * NS), which = y / NS, j = y % NS;
          const int64_t t = t0 + k;
          float v = 0.f;
          for (int w = 0; w < S::W; ++w) v += red[(k * S::W + w) * 2 * NS + y];
          if (direct)
            (which == 0 ? a.dB : a.dC)[((i * a.l + t) * a.g + sp.g0) * NS + j] = from_f32<T>(v);
          else
            a.part[which * half + (((i * a.g + sp.g0) * a.per_group + sp.p) * a.l + t) * NS + j] = v;
        }
        constexpr int P = Pack<T>::N, cu = CH / P;  // 16-byte units of a token's channels
        for (int e = tid; e < 3 * K * cu; e += BC) {
          const int which = e / (K * cu), k = e / cu % K, w = e % cu;
          if (k >= kn || (which == 2 && !a.z)) continue;
          T* dst = (which == 0 ? a.du : which == 1 ? a.ddelta : a.dz) + (i * a.l + t0 + k) * a.d + sp.c0 + w * P;
          *reinterpret_cast<Pack<T>*>(dst) = reinterpret_cast<const Pack<T>*>(outs + (which * K + k) * CH)[w];
        }
        slot ^= 1;
      }
    }
    if (active)
      for (int s = 0; s < SL; ++s)
        if (slot_of(s) < a.n) {
          double* r = a.dA_rows + (rs * a.d + c) * a.n + slot_of(s);
          *r = (seg == seg1 - 1 ? 0.0 : *r) + double(dA_seg[s]);
        }
  }
  if (!active) return;
  if (seg1 <= seg0)  // no tokens (l = 0)
    for (int s = 0; s < SL; ++s)
      if (slot_of(s) < a.n) a.dA_rows[(rs * a.d + c) * a.n + slot_of(s)] = 0.0;
  if (q == 0) {
    a.dD_rows[rs * a.d + c] = dD_acc;
    a.dbias_rows[rs * a.d + c] = dbias_acc;
  }
  if (a.dinit && seg0 == 0)  // the gradient after token 0 (never a reset)
    for (int s = 0; s < SL; ++s)
      if (slot_of(s) < a.n) a.dinit[(i * a.d + c) * a.n + slot_of(s)] = G[s];
}

// dB, dC [b, l, g, n] = Σ_p part[·, i, γ, p, t, j], p in order.
template <class T>
__global__ void scan_group_sum_kernel(const float* __restrict__ part, int64_t b, int64_t l, int64_t g, int64_t n,
                                      int64_t per_group, T* __restrict__ dB, T* __restrict__ dC) {
  const int64_t half = b * l * g * n;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < 2 * half; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t which = e / half, r = e % half;
    const int64_t j = r % n, gr = (r / n) % g, t = (r / (n * g)) % l, i = r / (n * g * l);
    const float* p = part + which * half * per_group + ((i * g + gr) * per_group * l + t) * n + j;
    float s = 0.f;
    for (int64_t q = 0; q < per_group; ++q) s += p[q * l * n];
    (which == 0 ? dB : dC)[r] = from_f32<T>(s);
  }
}

// dA [d, n] = Σ_r dA_rows[r] over the partials r = (row, span), in order, in f64; dD
// and ddelta_bias [d] likewise.
__global__ void scan_param_sum_kernel(const double* __restrict__ dA_rows, const double* __restrict__ dD_rows,
                                      const double* __restrict__ dbias_rows, int64_t rows, int64_t d, int64_t n,
                                      float* __restrict__ dA, float* __restrict__ dD, float* __restrict__ dbias) {
  const int64_t dn = d * n;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < dn + d; e += int64_t(gridDim.x) * blockDim.x) {
    if (e < dn) {
      double s = 0;
      for (int64_t r = 0; r < rows; ++r) s += dA_rows[r * dn + e];
      dA[e] = float(s);
    } else {
      const int64_t c = e - dn;
      double sD = 0, sb = 0;
      for (int64_t r = 0; r < rows; ++r) {
        sD += dD_rows[r * d + c];
        sb += dbias_rows[r * d + c];
      }
      if (dD) dD[c] = float(sD);
      if (dbias) dbias[c] = float(sb);
    }
  }
}

}  // namespace mambatron::cuda::scan
