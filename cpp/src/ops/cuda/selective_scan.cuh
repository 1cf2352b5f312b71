// Kernels of the CUDA Mamba-1 selective scan (launched by selective_scan.cu).
//
// A thread walks tokens in order with one channel's state h[n] in registers (NS >= n
// slots; the slots past n stay zero), reading each token's inputs one token ahead (for
// NS <= 32) so that the loads overlap the previous token's work. The forward runs
// over chunks of tokens, a thread per (row, chunk, channel) (see "chunks of tokens").
//
// With enough (row, channel) pairs to fill the GPU, the forward and the backward's
// checkpoints instead walk whole rows with their inputs staged in shared memory (see
// "walks of whole rows").
//
// The backward's kernels are in selective_scan_backward.cuh (its staged blocks split a
// channel's slots over a team of lanes).
#pragma once
#include <cstdint>

#include "async_copy.cuh"
#include "dense.cuh"

namespace mambatron::cuda::scan {

template <class T>
struct ScanArgs {
  const T *u, *delta, *B, *C, *z;  // z may be null
  const float *A, *D, *bias;       // D, bias may be null
  const float* init;               // [b, d, n], may be null
  const int32_t* seq;              // [b, l], may be null
  int64_t b, l, d, g, n;
  bool softplus;
  bool bc_vec;  // B and C rows of n = NS elements, 16-byte aligned (read in packs)
  // forward
  T* y;
  float* final_state;  // may be null (may be init itself: a decode step)
  // backward
  const T* dy;
  const float* dfinal;  // may be null
  T *du, *ddelta, *dz;  // dz exactly when z
  T *dB, *dC;           // written directly when a group fits in one block
  float* dinit;         // may be null
  float* ckpt;          // [b, nseg, n, d]
  float* part;          // [2, b, g, per_group, l, n] when per_group > 1
  // per (row, span): [b, nspan, d, n], [b, nspan, d], [b, nspan, d]
  double *dA_rows, *dD_rows, *dbias_rows;
  // channel blocks of a row (backward): groups of cpg channels; a group spans
  // per_group blocks (cpg > threads), or a block holds gpb whole groups
  int64_t cpg, per_group, gpb, blocks_per_row;
  // spans of `span` segments, nspan per row (at least one); G entering chunk q of
  // gchunk tokens from the right, [b, ngchunk, n, d] (q < ngchunk − 1; when nspan > 1)
  int64_t span, nspan, gchunk, ngchunk;
  const float* gin;
};

__device__ __forceinline__ float sigmoid(float x) {
  if (x >= 0.f) return 1.f / (1.f + expf(-x));
  const float e = expf(x);
  return e / (1.f + e);
}

// One token's inputs for one channel.
template <int NS>
struct Token {
  float u, v, z;  // input, delta + bias, gate input
  bool reset;     // a new document starts here
  float B[NS], C[NS];
};

template <class T, int NS>
__device__ __forceinline__ void load_token(const ScanArgs<T>& a, int64_t i, int64_t t, int64_t c, int64_t gr,
                                           float bias, bool with_c, Token<NS>& o) {
  const int64_t tok = i * a.l + t, idx = tok * a.d + c;
  o.u = to_f32(a.u[idx]);
  o.v = to_f32(a.delta[idx]) + bias;
  o.z = a.z ? to_f32(a.z[idx]) : 0.f;
  o.reset = a.seq && t > 0 && a.seq[tok] != a.seq[tok - 1];
  const T* Bt = a.B + (tok * a.g + gr) * a.n;
  const T* Ct = a.C + (tok * a.g + gr) * a.n;
#pragma unroll
  for (int j = 0; j < NS; ++j) {
    o.B[j] = j < a.n ? to_f32(Bt[j]) : 0.f;
    o.C[j] = with_c && j < a.n ? to_f32(Ct[j]) : 0.f;
  }
}

// Δ from v = delta + bias: softplus(v) = log1p(exp(v)), v itself past 20.
__device__ __forceinline__ float step_size(float v, bool softplus) {
  return softplus && v <= 20.f ? log1pf(expf(v)) : v;
}

// 2^x by the hardware's approximation (within 2 ulp), without the fix-up of results
// below 2^-126: a decay that small is as good as 0.
__device__ __forceinline__ float exp2_ftz(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

// h ← exp(Δ·A) ⊙ h + Δ·u·B (from zero at a document start: a decay of 2^-inf), A2 =
// A·log2(e).
template <int NS>
__device__ __forceinline__ void advance(float (&h)[NS], const float (&A2)[NS], const Token<NS>& k, float dt) {
  const float du = dt * k.u, cut = k.reset ? -INFINITY : 0.f;
#pragma unroll
  for (int j = 0; j < NS; ++j) h[j] = exp2_ftz(fmaf(dt, A2[j], cut)) * h[j] + du * k.B[j];
}

// ---------------------------------------------------------------- chunks of tokens
// The forward and the backward's checkpoints split each row into chunks of kc tokens
// so that there is a thread per (row, chunk, channel), not just per (row, channel):
//  1. scan_chunk_local_kernel walks every chunk but a row's last from a zero state: the
//     chunk's own part of the state leaving it, and ΣΔ over the chunk. A being constant
//     per (channel, state), the state entering a chunk decays over it by exp(A·ΣΔ), or
//     vanishes when a document starts inside it.
//  2. scan_chunk_carry_kernel, a thread per (row, state, channel), walks a row's chunks
//     in order and writes the state entering each (the backward's checkpoints).
//  3. scan_fwd_kernel walks each chunk again from its entering state and writes y.
// A row of one chunk (a decode step) needs only the third, from the initial state.
// Chunk states are [b, nchunk, n, d] floats, ΣΔ [b, nchunk, d].

// One token's inputs as stored, converted where used: B and C in 16-byte packs.
template <class T, int NS>
struct RawToken {
  static constexpr int P = Pack<T>::N;
  static_assert(NS % P == 0, "whole packs of state slots");
  T u, delta, z;
  bool reset;
  Pack<T> B[NS / P], C[NS / P];
  __device__ __forceinline__ float b(int j) const { return to_f32(B[j / P].v[j % P]); }
  __device__ __forceinline__ float c(int j) const { return to_f32(C[j / P].v[j % P]); }
};

// Whether a token's inputs are read a token ahead: not with 64 state slots, where the
// registers of two tokens' B and C would spill.
template <int NS>
constexpr bool kAhead = NS <= 32;

template <class T, int NS, bool WithC>
__device__ __forceinline__ void load_raw(const ScanArgs<T>& a, int64_t i, int64_t t, int64_t c, int64_t gr,
                                         RawToken<T, NS>& o) {
  constexpr int P = Pack<T>::N;
  const int64_t tok = i * a.l + t, idx = tok * a.d + c, row = (tok * a.g + gr) * a.n;
  o.u = a.u[idx];
  o.delta = a.delta[idx];
  if (WithC) o.z = a.z ? a.z[idx] : T{};
  o.reset = a.seq && t > 0 && a.seq[tok] != a.seq[tok - 1];
  if (a.bc_vec) {
#pragma unroll
    for (int p = 0; p < NS / P; ++p) {
      o.B[p] = reinterpret_cast<const Pack<T>*>(a.B + row)[p];
      if (WithC) o.C[p] = reinterpret_cast<const Pack<T>*>(a.C + row)[p];
    }
  } else {
#pragma unroll
    for (int j = 0; j < NS; ++j) {
      o.B[j / P].v[j % P] = j < a.n ? a.B[row + j] : T{};
      if (WithC) o.C[j / P].v[j % P] = j < a.n ? a.C[row + j] : T{};
    }
  }
}

// A·log2(e) of channel c: exp(Δ·A) = exp2(Δ·A₂).
template <class T, int NS>
__device__ __forceinline__ void load_channel_log2(const ScanArgs<T>& a, int64_t c, float (&A2)[NS]) {
#pragma unroll
  for (int j = 0; j < NS; ++j) A2[j] = j < a.n ? a.A[c * a.n + j] * 1.4426950408889634f : 0.f;
}

// h ← exp(Δ·A) ⊙ h + Δ·u·B (from zero at a document start).
template <class T, int NS>
__device__ __forceinline__ void advance_raw(float (&h)[NS], const float (&A2)[NS], const RawToken<T, NS>& k, float dt) {
  const float du = dt * to_f32(k.u);
#pragma unroll
  for (int j = 0; j < NS; ++j) h[j] = exp2_ftz(dt * A2[j]) * (k.reset ? 0.f : h[j]) + du * k.b(j);
}

// Chunk k of the row of thread e, over b·nk·d threads: (i, k, c) and [t0, t1).
struct ChunkPos {
  int64_t i, k, c, t0, t1;
};
__device__ __forceinline__ ChunkPos chunk_pos(int64_t e, int64_t nk, int64_t d, int64_t l, int64_t kc) {
  ChunkPos p;
  p.c = e % d;
  p.k = (e / d) % nk;
  p.i = e / d / nk;
  p.t0 = p.k * kc;
  p.t1 = p.t0 + kc < l ? p.t0 + kc : l;
  return p;
}

// Pass 1 over chunks 0 … nchunk − 2 of every row (the last one's carry is never needed).
// dsum is NaN where a document starts inside the chunk: nothing entering it survives.
template <class T, int NS>
__global__ void scan_chunk_local_kernel(ScanArgs<T> a, int64_t kc, int64_t nchunk, float* states, float* dsum) {
  const int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (e >= a.b * (nchunk - 1) * a.d) return;
  const ChunkPos p = chunk_pos(e, nchunk - 1, a.d, a.l, kc);
  const int64_t gr = p.c / (a.d / a.g), ik = p.i * nchunk + p.k;
  float A2[NS], h[NS];
  load_channel_log2<T, NS>(a, p.c, A2);
#pragma unroll
  for (int j = 0; j < NS; ++j) h[j] = 0.f;
  const float bc = a.bias ? a.bias[p.c] : 0.f;
  float S = 0.f;
  bool reset = false;
  RawToken<T, NS> next;
  if (kAhead<NS> && p.t0 < p.t1) load_raw<T, NS, false>(a, p.i, p.t0, p.c, gr, next);
  for (int64_t t = p.t0; t < p.t1; ++t) {
    if (!kAhead<NS>) load_raw<T, NS, false>(a, p.i, t, p.c, gr, next);
    const RawToken<T, NS> k = next;
    if (kAhead<NS> && t + 1 < p.t1) load_raw<T, NS, false>(a, p.i, t + 1, p.c, gr, next);
    const float dt = step_size(to_f32(k.delta) + bc, a.softplus);
    advance_raw<T, NS>(h, A2, k, dt);
    S += dt;
    reset |= k.reset;
  }
#pragma unroll
  for (int j = 0; j < NS; ++j)
    if (j < a.n) states[(ik * a.n + j) * a.d + p.c] = h[j];
  dsum[ik * a.d + p.c] = reset ? __int_as_float(0x7fffffff) : S;
}

// The carry passes' read of slot s (row-major [.., nchunk] slots): the chunk's own part of
// element (j, c) and its decay exp(A·ΣΔ), 0 where a document starts in it; zeros when !valid.
__device__ __forceinline__ void chunk_part(const float* parts, const float* dsum, int64_t s, bool valid, int64_t n,
                                           int64_t d, int64_t j, int64_t c, float A2, float& own, float& decay) {
  own = valid ? parts[(s * n + j) * d + c] : 0.f;
  const float S = valid ? dsum[s * d + c] : 0.f;
  decay = isnan(S) ? 0.f : exp2_ftz(A2 * S);
}

// Pass 2: states[i, k, j, c] ← the state entering chunk k (in place of chunk k's own
// part, read first), from the initial state at the row's first token.
__global__ void scan_chunk_carry_kernel(const float* __restrict__ A, const float* __restrict__ init, int64_t b,
                                        int64_t d, int64_t n, int64_t nchunk, const float* __restrict__ dsum,
                                        float* __restrict__ states) {
  constexpr int U = 8;  // chunks read ahead of the dependent updates
  const int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (e >= b * n * d) return;
  const int64_t c = e % d, j = (e / d) % n, i = e / d / n;
  const float A2 = A[c * n + j] * 1.4426950408889634f;
  float h = init ? init[(i * d + c) * n + j] : 0.f;
  for (int64_t k0 = 0; k0 < nchunk; k0 += U) {
    float own[U], decay[U];
#pragma unroll
    for (int q = 0; q < U; ++q) {
      chunk_part(states, dsum, i * nchunk + k0 + q, k0 + q + 1 < nchunk, n, d, j, c, A2, own[q], decay[q]);
    }
#pragma unroll
    for (int q = 0; q < U; ++q)
      if (k0 + q < nchunk) {
        states[((i * nchunk + k0 + q) * n + j) * d + c] = h;
        h = decay[q] * h + own[q];
      }
  }
}

// ---------------------------------------------------------------- token slots
// A shared-memory slot of K tokens for the CH channels from c0, all of one group: the
// first NA of the activations u, Δ, z, dy ([NA][K][CH] T), the B and C rows ([2][K][NS]
// T) and the document ids of tokens t0 − 1 … t0 + K − 1 ([K + 1] int32).
template <class T, int NS, int K_, int CH_, int NA>
struct TokenSlot {
  static constexpr int K = K_, CH = CH_, P = Pack<T>::N;
  static_assert(CH % P == 0 && NS % P == 0, "whole 16-byte packs");
  static constexpr size_t kChannels = size_t(NA) * K * CH * sizeof(T);
  static constexpr size_t kRows = size_t(2) * K * NS * sizeof(T);
  static constexpr size_t kBytes = kChannels + kRows + (size_t(K + 1) * 4 + 15) / 16 * 16;
};

// Tokens [t0, t0 + K) of row i, channels from c0, into a slot of layout L by cp.async
// (zeros past the row and for an absent z), the block's `threads` threads sharing the
// copies. Needs B and C rows of NS elements and the activations' rows 16-byte aligned.
template <class T, int NS, class L, int NA>
__device__ __forceinline__ void stage_tokens(const ScanArgs<T>& a, char* slot, int64_t i, int64_t t0, int64_t c0,
                                             int64_t gr, int tid, int threads) {
  constexpr int K = L::K, P = L::P, cu = L::CH / P, ru = NS / P;  // 16-byte units of a token's channels, of a row
  T* ch = reinterpret_cast<T*>(slot);
  for (int e = tid; e < NA * K * cu; e += threads) {
    const int q = e / (K * cu), k = e / cu % K, w = e % cu;
    const T* src = q == 0 ? a.u : q == 1 ? a.delta : q == 2 ? a.z : a.dy;
    const bool ok = t0 + k < a.l && src != nullptr;
    cp_async<16>(ch + (q * K + k) * L::CH + w * P, ok ? src + (i * a.l + t0 + k) * a.d + c0 + w * P : a.u, ok);
  }
  T* rows = reinterpret_cast<T*>(slot + L::kChannels);
  for (int e = tid; e < 2 * K * ru; e += threads) {
    const int q = e / (K * ru), k = e / ru % K, w = e % ru;
    const bool ok = t0 + k < a.l;
    const T* src = (q == 0 ? a.B : a.C) + (ok ? ((i * a.l + t0 + k) * a.g + gr) * NS + w * P : 0);
    cp_async<16>(rows + (q * K + k) * NS + w * P, src, ok);
  }
  if (a.seq) {
    int32_t* ids = reinterpret_cast<int32_t*>(slot + L::kChannels + L::kRows);
    for (int e = tid; e <= K; e += threads) {
      const int64_t t = t0 - 1 + e;
      const bool ok = t >= 0 && t < a.l;
      cp_async<4>(ids + e, a.seq + (ok ? i * a.l + t : 0), ok);
    }
  }
}

// ---------------------------------------------------------------- walks of whole rows
// A block of CH channels of one group walks its row from the first token to the last, a
// thread a channel, reading each chunk of K tokens from a ring of kSlots shared-memory
// slots that cp.async fills kSlots − 1 chunks ahead: no token waits on global memory
// and nothing is walked twice, where the chunk passes walk every token twice. It needs
// b·d/CH blocks to fill the GPU (kWalkChannels), the conditions of stage_tokens and a
// group's width a multiple of CH. The forward writes y and the final state; the
// backward's checkpoint walk writes the state entering every seg-th token.
constexpr int64_t kWalkChannels = int64_t(1) << 13;
template <class T, int NS, bool kCkpt>
struct Walk {
  static constexpr int K = 32, CH = 64, kSlots = 3, kG = 8;  // kG: tokens unrolled together
  static_assert(K % kG == 0, "whole groups in a slot");
  using Slot = TokenSlot<T, NS, K, CH, kCkpt ? 2 : 3>;  // u, Δ (and z)
  // The current chunk's B (and C) rows in f32, converted once for the block: [R][K][NS].
  static constexpr int R = kCkpt ? 1 : 2;
  static constexpr size_t kSmemBytes = kSlots * Slot::kBytes + size_t(R) * K * NS * sizeof(float);
};

template <class T, int NS, bool kCkpt>
__global__ void __launch_bounds__(Walk<T, NS, kCkpt>::CH)
    scan_walk_kernel(ScanArgs<T> a, float* ckpt, int64_t seg, int64_t nseg) {
  using Wk = Walk<T, NS, kCkpt>;
  using L = typename Wk::Slot;
  constexpr int K = Wk::K, CH = Wk::CH, NSL = Wk::kSlots, NA = kCkpt ? 2 : 3;
  extern __shared__ float4 walk_smem[];
  char* slots = reinterpret_cast<char*>(walk_smem);
  float* rowf = reinterpret_cast<float*>(slots + NSL * L::kBytes);
  const int tid = threadIdx.x;
  const int64_t per_row = a.d / CH, i = blockIdx.x / per_row, c0 = blockIdx.x % per_row * CH, c = c0 + tid;
  const int64_t gr = c0 / (a.d / a.g), ic = i * a.d + c;
  float A2[NS], h[NS];
  load_channel_log2<T, NS>(a, c, A2);
#pragma unroll
  for (int j = 0; j < NS; ++j) h[j] = j < a.n && a.init ? a.init[ic * a.n + j] : 0.f;
  const float Dc = a.D ? a.D[c] : 0.f, bc = a.bias ? a.bias[c] : 0.f;
  const int64_t nk = (a.l + K - 1) / K;
  for (int s = 0; s < NSL - 1; ++s) {
    if (s < nk) stage_tokens<T, NS, L, NA>(a, slots + s * L::kBytes, i, s * K, c0, gr, tid, CH);
    cp_commit();
  }
  for (int64_t k = 0; k < nk; ++k) {
    cp_wait<NSL - 2>();
    __syncthreads();  // chunk k has landed; every thread is done with chunk k − 1's slot
    if (k + NSL - 1 < nk)
      stage_tokens<T, NS, L, NA>(a, slots + (k + NSL - 1) % NSL * L::kBytes, i, (k + NSL - 1) * K, c0, gr, tid, CH);
    cp_commit();
    const char* cur = slots + k % NSL * L::kBytes;
    const T* chs = reinterpret_cast<const T*>(cur);
    const int32_t* ids = reinterpret_cast<const int32_t*>(cur + L::kChannels + L::kRows);
    {  // B (and C) in f32, once for the block rather than once a thread
      const T* rows = reinterpret_cast<const T*>(cur + L::kChannels);
      for (int e = tid; e < Wk::R * K * NS; e += CH) rowf[e] = to_f32(rows[e]);
      __syncthreads();
    }
    const int64_t t0 = k * K;
    const int kn = a.l - t0 < K ? int(a.l - t0) : K;
    if (kCkpt && t0 % seg == 0)  // seg is a multiple of K
#pragma unroll
      for (int j = 0; j < NS; ++j)
        if (j < a.n) ckpt[((i * nseg + t0 / seg) * a.n + j) * a.d + c] = h[j];
    T* yk = kCkpt ? nullptr : a.y + (i * a.l + t0) * a.d + c;  // token t0's output of channel c
    // Groups of kG tokens, unrolled: each group's step sizes and resets first (they do
    // not depend on the state), then its tokens, so that the loads, softplus and decays
    // of later tokens issue while the state's chain runs. A token past the row takes
    // Δ = 0 and no reset, which leaves h as it is, and writes nothing.
    for (int r0 = 0; r0 < kn; r0 += Wk::kG) {
      float dt[Wk::kG];
      bool reset[Wk::kG];
#pragma unroll
      for (int q = 0; q < Wk::kG; ++q) {
        const int r = r0 + q;
        const bool ok = r < kn;
        dt[q] = ok ? step_size(to_f32(chs[(K + r) * CH + tid]) + bc, a.softplus) : 0.f;
        reset[q] = ok && a.seq && t0 + r > 0 && ids[r + 1] != ids[r];
      }
#pragma unroll
      for (int q = 0; q < Wk::kG; ++q) {
        const int r = r0 + q;
        const float u = to_f32(chs[r * CH + tid]), du = dt[q] * u;
        float4 Bv[NS / 4], Cv[NS / 4];
#pragma unroll
        for (int p = 0; p < NS / 4; ++p) {
          Bv[p] = reinterpret_cast<const float4*>(rowf + r * NS)[p];
          if (!kCkpt) Cv[p] = reinterpret_cast<const float4*>(rowf + (K + r) * NS)[p];
        }
        const float* Bt = reinterpret_cast<const float*>(Bv);
        const float* Ct = reinterpret_cast<const float*>(Cv);
        // A document start decays h by 2^-inf = 0, in the exponent's add.
        const float cut = reset[q] ? -INFINITY : 0.f;
        float y = 0.f;
#pragma unroll
        for (int j = 0; j < NS; ++j) {
          h[j] = exp2_ftz(fmaf(dt[q], A2[j], cut)) * h[j] + du * Bt[j];
          if (!kCkpt) y += h[j] * Ct[j];
        }
        if (!kCkpt && r < kn) {
          y += Dc * u;
          if (a.z) {
            const float z = to_f32(chs[(2 * K + r) * CH + tid]);
            y *= z * sigmoid(z);
          }
          yk[r * a.d] = from_f32<T>(y);
        }
      }
    }
  }
  if (!kCkpt && a.final_state)
#pragma unroll
    for (int j = 0; j < NS; ++j)
      if (j < a.n) a.final_state[ic * a.n + j] = h[j];
}

// ---------------------------------------------------------------- forward (and decode step)
// Pass 3: chunk k of row i from its entering state (entry; the initial state when null,
// a row of one chunk). The row's last chunk writes the final state.
template <class T, int NS>
__global__ void scan_fwd_kernel(ScanArgs<T> a, int64_t kc, int64_t nchunk, const float* entry) {
  const int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (e >= a.b * nchunk * a.d) return;
  const ChunkPos p = chunk_pos(e, nchunk, a.d, a.l, kc);
  const int64_t gr = p.c / (a.d / a.g), ik = p.i * nchunk + p.k, ic = p.i * a.d + p.c;
  float A2[NS], h[NS];
  load_channel_log2<T, NS>(a, p.c, A2);
#pragma unroll
  for (int j = 0; j < NS; ++j)
    h[j] = j >= a.n ? 0.f : entry ? entry[(ik * a.n + j) * a.d + p.c] : a.init ? a.init[ic * a.n + j] : 0.f;
  const float Dc = a.D ? a.D[p.c] : 0.f, bc = a.bias ? a.bias[p.c] : 0.f;
  RawToken<T, NS> next;
  if (kAhead<NS> && p.t0 < p.t1) load_raw<T, NS, true>(a, p.i, p.t0, p.c, gr, next);
  for (int64_t t = p.t0; t < p.t1; ++t) {
    if (!kAhead<NS>) load_raw<T, NS, true>(a, p.i, t, p.c, gr, next);
    const RawToken<T, NS> k = next;
    if (kAhead<NS> && t + 1 < p.t1) load_raw<T, NS, true>(a, p.i, t + 1, p.c, gr, next);
    const float dt = step_size(to_f32(k.delta) + bc, a.softplus);
    const float u = to_f32(k.u), du = dt * u;
    float y = 0.f;
#pragma unroll
    for (int j = 0; j < NS; ++j) {
      h[j] = exp2_ftz(dt * A2[j]) * (k.reset ? 0.f : h[j]) + du * k.b(j);
      y += h[j] * k.c(j);
    }
    y += Dc * u;
    if (a.z) {
      const float z = to_f32(k.z);
      y *= z * sigmoid(z);
    }
    a.y[(p.i * a.l + t) * a.d + p.c] = from_f32<T>(y);
  }
  if (a.final_state && p.k == nchunk - 1)
#pragma unroll
    for (int j = 0; j < NS; ++j)
      if (j < a.n) a.final_state[ic * a.n + j] = h[j];
}

}  // namespace mambatron::cuda::scan
