// Attention backward on tensor cores (bf16, head dim 64 or 128), two kernels and
// no atomics (D = rowsum(dout ∘ out) comes precomputed):
//   dk, dv: one block of 8 warps per (batch, kv head, 128-key tile); warp w owns
//     keys 16w .. 16w + 15. It walks the group's query heads in order and, for each,
//     the 64-query tiles from its diagonal to the end (Q, dout, lse, D tiles
//     double-buffered with cp.async): Pᵀ = exp2(scale·log2e·K·Qᵀ − lse·log2e),
//     dv += Pᵀ·dout, dSᵀ = Pᵀ ∘ (V·doutᵀ − D), dk += dSᵀ·Q, all in registers;
//   dq: one block per (batch, query head, 128-query tile) walks the 64-key tiles up
//     to its diagonal: P, dS as above, dq += dS·K.
// P and dS enter the last products as bf16 hi + lo pairs (two mma each): one bf16
// rounding of them costs more than DESIGN.md's rule allows in dq, dk and dv. Every
// sum runs in a fixed order, so the bits repeat.
#include <climits>
#include <cmath>

#include "attention.h"
#include "attention_mma.cuh"

namespace mambatron::cuda {

namespace {
using namespace attn_mma;
using bf16 = __nv_bfloat16;

constexpr int kThreads = 256;
constexpr int kKN = 128;  // dk/dv kernel: keys per block (QM queries per tile)
constexpr int kBM = 128, kBN = 64;  // dq kernel: queries per block, keys per tile

struct BwdArgs {
  const bf16 *dout, *q, *k, *v;
  const float *lse, *D;
  bf16 *dq, *dk, *dv;
  const int32_t* seq;
  int64_t l;
  int hq, hkv;
  float scale;
};

template <int P, int QM>
constexpr int dkdv_smem_bytes() {
  return (2 * kKN * P + 4 * QM * P) * 2 + 2 * 3 * QM * 4;
}
template <int P>
constexpr int dq_smem_bytes() {
  return (2 * kBM * P + 4 * kBN * P) * 2 + 2 * kBN * 4;
}

// min and max over the warp of seq[row0 + r] for r < n with row0 + r < len.
__device__ __forceinline__ void global_id_range(const int32_t* seq, int64_t row0, int n, int64_t len, int& lo,
                                                int& hi) {
  lo = INT_MAX, hi = INT_MIN;
  for (int r = threadIdx.x & 31; r < n; r += 32)
    if (row0 + r < len) lo = min(lo, seq[row0 + r]), hi = max(hi, seq[row0 + r]);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    lo = min(lo, __shfl_xor_sync(0xffffffffu, lo, o));
    hi = max(hi, __shfl_xor_sync(0xffffffffu, hi, o));
  }
}

template <int P, int QM>
__global__ void __launch_bounds__(kThreads, 1) attention_dkdv_mma_kernel(BwdArgs a) {
  extern __shared__ uint4 smem_raw[];
  bf16* k_s = reinterpret_cast<bf16*>(smem_raw);  // [kKN][P]; dk's staging at the end
  bf16* v_s = k_s + kKN * P;                      // [kKN][P]; dv's staging at the end
  bf16* q_s = v_s + kKN * P;                      // [2][QM][P]
  bf16* do_s = q_s + 2 * QM * P;                 // [2][QM][P]
  float* lse_s = reinterpret_cast<float*>(do_s + 2 * QM * P);  // [2][QM]
  float* d_s = lse_s + 2 * QM;                                 // [2][QM]
  int* qid_s = reinterpret_cast<int*>(d_s + 2 * QM);           // [2][QM]

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int64_t bkv = blockIdx.x, bi = bkv / a.hkv;
  const int kvh = int(bkv % a.hkv), group = a.hq / a.hkv;
  const int j0 = int(blockIdx.y) * kKN, len = int(a.l);  // rows fit in int: the grid caps l
  const int64_t qs = int64_t(a.hq) * P, ks = int64_t(a.hkv) * P;
  const bf16* k = a.k + bi * a.l * ks + int64_t(kvh) * P;
  const bf16* v = a.v + bi * a.l * ks + int64_t(kvh) * P;
  const int32_t* seq = a.seq ? a.seq + bi * a.l : nullptr;
  const int nq = (len - j0 + QM - 1) / QM;  // query tiles from the diagonal on
  const int steps = group * nq;

  auto load_q = [&](int s) {
    const int st = s & 1, h = kvh * group + s / nq;
    const int i0 = j0 + (s % nq) * QM;
    const int64_t head = bi * a.l * qs + int64_t(h) * P, stat = (bi * a.hq + h) * a.l;
    load_tile<QM, P, kThreads>(q_s + st * QM * P, a.q + head, qs, i0, a.l);
    load_tile<QM, P, kThreads>(do_s + st * QM * P, a.dout + head, qs, i0, a.l);
    load_vec(lse_s + st * QM, a.lse + stat, i0, a.l, QM);
    load_vec(d_s + st * QM, a.D + stat, i0, a.l, QM);
    if (seq) load_vec(qid_s + st * QM, seq, i0, a.l, QM);
    cp_commit();
  };
  load_tile<kKN, P, kThreads>(k_s, k, ks, j0, a.l);
  load_tile<kKN, P, kThreads>(v_s, v, ks, j0, a.l);
  load_q(0);

  const int wr = warp * 16;
  const int key[2] = {j0 + wr + g, j0 + wr + g + 8};
  int kid[2] = {0, 0}, klo = 0, khi = 0;
  if (seq) {
    for (int r = 0; r < 2; ++r) kid[r] = key[r] < a.l ? seq[key[r]] : 0;
    global_id_range(seq, j0, kKN, a.l, klo, khi);
  }
  cp_wait_all();
  __syncthreads();

  float dk[P / 8][4], dv[P / 8][4];
#pragma unroll
  for (int nt = 0; nt < P / 8; ++nt)
#pragma unroll
    for (int c = 0; c < 4; ++c) dk[nt][c] = 0.f, dv[nt][c] = 0.f;
  const float c2 = a.scale * kLog2e;

  for (int s = 0; s < steps; ++s) {
    const int st = s & 1, i0 = j0 + (s % nq) * QM;
    if (s + 1 < steps) load_q(s + 1);
    const bf16* qt = q_s + st * QM * P;
    const bf16* dot = do_s + st * QM * P;
    const float* lse = lse_s + st * QM;
    const float* D = d_s + st * QM;
    bool live = j0 + wr <= i0 + QM - 1;  // some query of the tile is at or after the warp's first key
    if (seq) {
      int lo, hi;
      id_range(qid_s + st * QM, QM, a.l - i0, lo, hi);
      live = live && !(hi < klo || khi < lo);
    }
    if (live) {
      // Pᵀ: rows are the warp's keys, columns the tile's queries.
      float pt[QM / 8][4];
      zero_frags(pt);
      gemm_abt<P, QM / 8>(pt, k_s, wr, qt);
      const bool mask = seq || i0 < j0 + wr + 15 || i0 + QM > a.l;
#pragma unroll
      for (int nt = 0; nt < QM / 8; ++nt)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const int qc = nt * 8 + 2 * t + (c & 1);
          const bool ok = !mask || (key[c >> 1] <= i0 + qc && i0 + qc < a.l &&
                                    (!seq || qid_s[st * QM + qc] == kid[c >> 1]));
          pt[nt][c] = ok ? exp2f(fmaf(pt[nt][c], c2, -lse[qc] * kLog2e)) : 0.f;
        }
      gemm_xb<P, QM / 16, true>(dv, pt, dot);
      float dpt[QM / 8][4];
      zero_frags(dpt);
      gemm_abt<P, QM / 8>(dpt, v_s, wr, dot);
#pragma unroll
      for (int nt = 0; nt < QM / 8; ++nt)
#pragma unroll
        for (int c = 0; c < 4; ++c) dpt[nt][c] = pt[nt][c] * (dpt[nt][c] - D[nt * 8 + 2 * t + (c & 1)]);
      gemm_xb<P, QM / 16, true>(dk, dpt, qt);
    }
    cp_wait_all();
    __syncthreads();
  }

  const float one[2] = {1.f, 1.f}, sc[2] = {a.scale, a.scale};
  const int64_t out = bi * a.l * ks + int64_t(kvh) * P;
  store_rows<P>(dk, sc, k_s, wr, a.dk + out, ks, j0 + wr, a.l);
  store_rows<P>(dv, one, v_s, wr, a.dv + out, ks, j0 + wr, a.l);
}

template <int P>
__global__ void __launch_bounds__(kThreads, 1) attention_dq_mma_kernel(BwdArgs a) {
  extern __shared__ uint4 smem_raw[];
  bf16* q_s = reinterpret_cast<bf16*>(smem_raw);  // [kBM][P]; dq's staging at the end
  bf16* do_s = q_s + kBM * P;                     // [kBM][P]
  bf16* k_s = do_s + kBM * P;                     // [2][kBN][P]
  bf16* v_s = k_s + 2 * kBN * P;                  // [2][kBN][P]
  int* kid_s = reinterpret_cast<int*>(v_s + 2 * kBN * P);  // [2][kBN]

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int64_t bh = blockIdx.x, bi = bh / a.hq;
  const int h = int(bh % a.hq), kvh = h / (a.hq / a.hkv);
  const int i0 = int(gridDim.y - 1 - blockIdx.y) * kBM, len = int(a.l);
  const int64_t qs = int64_t(a.hq) * P, ks = int64_t(a.hkv) * P;
  const int64_t head = bi * a.l * qs + int64_t(h) * P;
  const bf16* k = a.k + bi * a.l * ks + int64_t(kvh) * P;
  const bf16* v = a.v + bi * a.l * ks + int64_t(kvh) * P;
  const int32_t* seq = a.seq ? a.seq + bi * a.l : nullptr;
  const int tiles = (min(i0 + kBM, len) - 1) / kBN + 1;

  auto load_kv = [&](int n) {
    const int st = n & 1;
    const int64_t j0 = int64_t(n) * kBN;
    load_tile<kBN, P, kThreads>(k_s + st * kBN * P, k, ks, j0, a.l);
    load_tile<kBN, P, kThreads>(v_s + st * kBN * P, v, ks, j0, a.l);
    if (seq) load_vec(kid_s + st * kBN, seq, j0, a.l, kBN);
    cp_commit();
  };
  load_tile<kBM, P, kThreads>(q_s, a.q + head, qs, i0, a.l);
  load_tile<kBM, P, kThreads>(do_s, a.dout + head, qs, i0, a.l);
  load_kv(0);

  const int wr = warp * 16;
  const int row[2] = {i0 + wr + g, i0 + wr + g + 8};
  float lse2[2], D[2];
  int qid[2] = {0, 0}, qlo = 0, qhi = 0;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const bool ok = row[r] < a.l;
    lse2[r] = ok ? a.lse[bh * a.l + row[r]] * kLog2e : 0.f;
    D[r] = ok ? a.D[bh * a.l + row[r]] : 0.f;
    if (seq) qid[r] = ok ? seq[row[r]] : 0;
  }
  if (seq) global_id_range(seq, i0, kBM, a.l, qlo, qhi);
  cp_wait_all();
  __syncthreads();

  float dq[P / 8][4];
  zero_frags(dq);
  const float c2 = a.scale * kLog2e;

  for (int n = 0; n < tiles; ++n) {
    const int st = n & 1, j0 = n * kBN;
    if (n + 1 < tiles) load_kv(n + 1);
    const bf16* kt = k_s + st * kBN * P;
    const bf16* vt = v_s + st * kBN * P;
    const int* kid = kid_s + st * kBN;
    bool live = j0 <= i0 + wr + 15;
    if (seq) {
      int lo, hi;
      id_range(kid, kBN, a.l - j0, lo, hi);
      live = live && !(hi < qlo || qhi < lo);
    }
    if (live) {
      float p[kBN / 8][4];
      zero_frags(p);
      gemm_abt<P, kBN / 8>(p, q_s, wr, kt);
      const bool mask = seq || j0 + kBN - 1 > i0 + wr;
#pragma unroll
      for (int nt = 0; nt < kBN / 8; ++nt)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const int kc = nt * 8 + 2 * t + (c & 1);
          const bool ok = !mask || (j0 + kc <= row[c >> 1] && (!seq || kid[kc] == qid[c >> 1]));
          p[nt][c] = ok ? exp2f(fmaf(p[nt][c], c2, -lse2[c >> 1])) : 0.f;
        }
      float ds[kBN / 8][4];
      zero_frags(ds);
      gemm_abt<P, kBN / 8>(ds, do_s, wr, vt);
#pragma unroll
      for (int nt = 0; nt < kBN / 8; ++nt)
#pragma unroll
        for (int c = 0; c < 4; ++c) ds[nt][c] = p[nt][c] * (ds[nt][c] - D[c >> 1]);
      gemm_xb<P, kBN / 16, true>(dq, ds, kt);
    }
    cp_wait_all();
    __syncthreads();
  }

  const float sc[2] = {a.scale, a.scale};
  store_rows<P>(dq, sc, q_s, wr, a.dq + head, qs, i0 + wr, a.l);
}

template <int P, int QM>
void launch_bwd(const BwdArgs& a, int64_t b, int dev) {
  cudaStream_t s = stream(dev);
  const int64_t key_tiles = (a.l + kKN - 1) / kKN, query_tiles = (a.l + kBM - 1) / kBM;
  MT_CHECK(b * a.hq <= INT32_MAX && key_tiles <= 65535 && query_tiles <= 65535, ValueError,
           "attention_backward: ", b * a.hq, " (batch, head) pairs and length ", a.l,
           " are more than this kernel's grid allows");
  constexpr int smem_kv = dkdv_smem_bytes<P, QM>(), smem_q = dq_smem_bytes<P>();
  MT_CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(&attention_dkdv_mma_kernel<P, QM>),
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, smem_kv));
  MT_CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(&attention_dq_mma_kernel<P>),
                                     cudaFuncAttributeMaxDynamicSharedMemorySize, smem_q));
  // Key tiles in order: the longest walks (near the start) go first.
  attention_dkdv_mma_kernel<P, QM><<<dim3(unsigned(b * a.hkv), unsigned(key_tiles)), kThreads, smem_kv, s>>>(a);
  MT_CUDA_LAUNCH_CHECK();
  attention_dq_mma_kernel<P><<<dim3(unsigned(b * a.hq), unsigned(query_tiles)), kThreads, smem_q, s>>>(a);
  MT_CUDA_LAUNCH_CHECK();
}

}  // namespace

void attention_backward_mma(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const float* lse,
                            const float* D, Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& seq_idx,
                            double scale) {
  const int dev = q.device().index;
  BwdArgs a{static_cast<const bf16*>(dout.data_ptr()), static_cast<const bf16*>(q.data_ptr()),
            static_cast<const bf16*>(k.data_ptr()),    static_cast<const bf16*>(v.data_ptr()),
            lse, D, static_cast<bf16*>(dq.data_ptr()), static_cast<bf16*>(dk.data_ptr()),
            static_cast<bf16*>(dv.data_ptr()),
            seq_idx.defined() ? static_cast<const int32_t*>(seq_idx.data_ptr()) : nullptr,
            q.size(1), int(q.size(2)), int(k.size(2)), float(scale)};
  // 64-query tiles: 32 were slower on an H100 (both spill a little at p 128).
  if (q.size(3) == 64) launch_bwd<64, 64>(a, q.size(0), dev);
  else launch_bwd<128, 64>(a, q.size(0), dev);
}

}  // namespace mambatron::cuda
