// Attention backward on CUDA, three passes with no atomics:
//   1. D_i = dout_i · out_i (one warp per query and head, a fixed shuffle tree);
//   2. dk, dv: one block per (batch, kv head, 64-key tile, PO-column slice) walks
//      its query heads in order and, for each, the query tiles from the diagonal to
//      the end: P = exp(scale·S − lse), dS = P ∘ (dout·Vᵀ − D), dv += Pᵀ·dout,
//      dk += scale·dSᵀ·Q, all in registers of the block;
//   3. dq: one block per (batch, query head, 64-query tile, slice) walks the key
//      tiles up to its diagonal: dq += scale·dS·K.
// P and dS are recomputed in both passes (from lse, as the CPU op does); tiles of
// disjoint documents are skipped. Every sum runs in a fixed order.
#include "attention.h"
#include "attention_cudnn.h"
#include "attention_mma.cuh"
#include "attention_tile.cuh"

namespace mambatron::cuda {

namespace {
using namespace attn;

struct BwdArgs {
  const void *dout, *q, *k, *v;
  const float *lse, *D;
  void *dq, *dk, *dv;
  const int32_t* seq;
  int64_t l;
  int hq, hkv, p;
  float scale;
};

constexpr int kIdFloats = 2 * kTile + 4;  // q_ids, k_ids, mm

template <int PO>
constexpr int dkdv_smem_bytes() {
  return (2 * kChunkFloats + 2 * kTileFloats + kTile * PO + 2 * kTile + kIdFloats) * 4;
}
template <int PO>
constexpr int dq_smem_bytes() {
  return (2 * kChunkFloats + kTileFloats + kTile * PO + kIdFloats) * 4;
}

// D[(b·hq + h)·l + i] = Σ_n dout[b, i, h, n] · out[b, i, h, n]; one warp per (b, i, h).
template <class T>
__global__ void rowdot_kernel(const T* __restrict__ dout, const T* __restrict__ out, float* __restrict__ D,
                              int64_t rows, int64_t l, int hq, int p) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t r = blockIdx.x * int64_t(blockDim.x / 32) + threadIdx.x / 32; r < rows; r += warps) {
    float acc = 0.f;
    for (int n = lane; n < p; n += 32) acc = fmaf(to_f32(dout[r * p + n]), to_f32(out[r * p + n]), acc);
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) {
      const int64_t h = r % hq, token = r / hq, i = token % l, bi = token / l;
      D[(bi * hq + h) * l + i] = acc;
    }
  }
}

template <class T, int PO>
__global__ void __launch_bounds__(kThreads, 2) attention_dkdv_kernel(BwdArgs a) {
  constexpr int NO = PO / 16;
  extern __shared__ float4 smem4[];
  float* a_s = reinterpret_cast<float*>(smem4);
  float* b_s = a_s + kChunkFloats;
  float* p_s = b_s + kChunkFloats;   // Pᵀ, [64 keys][kPad]
  float* ds_s = p_s + kTileFloats;   // dSᵀ, [64 keys][kPad]
  float* x_s = ds_s + kTileFloats;   // dout or Q slice, [64 queries][PO]
  float* lse_s = x_s + kTile * PO;   // lse and D of the query tile
  float* d_s = lse_s + kTile;
  int* q_ids = reinterpret_cast<int*>(d_s + kTile);
  int* k_ids = q_ids + kTile;
  int* mm = k_ids + kTile;  // query ids min, max; key ids min, max

  const int tx = tid_x(), ty = tid_y();
  const int64_t bkv = blockIdx.x, bi = bkv / a.hkv;
  const int kvh = int(bkv % a.hkv), group = a.hq / a.hkv;
  const int64_t j0 = int64_t(blockIdx.y) * kTile;
  const int n0 = int(blockIdx.z) * PO;
  const int64_t qs = int64_t(a.hq) * a.p, ks = int64_t(a.hkv) * a.p;
  const T* k = static_cast<const T*>(a.k) + bi * a.l * ks + int64_t(kvh) * a.p;
  const T* v = static_cast<const T*>(a.v) + bi * a.l * ks + int64_t(kvh) * a.p;
  const int32_t* seq = a.seq ? a.seq + bi * a.l : nullptr;
  if (seq) load_ids(seq, j0, a.l, k_ids, mm + 2);

  float dk[4][NO], dv[4][NO];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int jj = 0; jj < NO; ++jj) dk[i][jj] = 0.f, dv[i][jj] = 0.f;

  for (int hh = 0; hh < group; ++hh) {
    const int h = kvh * group + hh;
    const T* q = static_cast<const T*>(a.q) + bi * a.l * qs + int64_t(h) * a.p;
    const T* dout = static_cast<const T*>(a.dout) + bi * a.l * qs + int64_t(h) * a.p;
    const float* lse = a.lse + (bi * a.hq + h) * a.l;
    const float* D = a.D + (bi * a.hq + h) * a.l;
    for (int64_t i0 = j0; i0 < a.l; i0 += kTile) {
      __syncthreads();  // lse_s, d_s, the query ids and every tile of the previous step are read no more
      if (seq) load_ids(seq, i0, a.l, q_ids, mm);
      if (threadIdx.x < kTile) {
        const int64_t r = i0 + threadIdx.x;
        lse_s[threadIdx.x] = r < a.l ? lse[r] : 0.f;
        d_s[threadIdx.x] = r < a.l ? D[r] : 0.f;
      }
      __syncthreads();
      if (seq && disjoint(mm, mm + 2)) continue;
      // Pᵀ: rows are keys, columns queries.
      float pt[4][4], dpt[4][4];
      score_tile(pt, a_s, b_s, k, ks, j0, q, qs, i0, a.l, a.p);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int64_t key = j0 + ty * 4 + i;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int64_t qr = i0 + tx * 4 + j;
          const bool ok = key <= qr && qr < a.l && (!seq || k_ids[ty * 4 + i] == q_ids[tx * 4 + j]);
          pt[i][j] = ok ? expf(pt[i][j] * a.scale - lse_s[tx * 4 + j]) : 0.f;
        }
      }
      score_tile(dpt, a_s, b_s, v, ks, j0, dout, qs, i0, a.l, a.p);
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) dpt[i][j] = pt[i][j] * (dpt[i][j] - d_s[tx * 4 + j]);
      store_tile(p_s, pt);
      store_tile(ds_s, dpt);
      load_slice<PO>(x_s, dout, qs, i0, a.l, n0, a.p);
      __syncthreads();
      product_tile<PO>(dv, p_s, x_s);
      __syncthreads();
      load_slice<PO>(x_s, q, qs, i0, a.l, n0, a.p);
      __syncthreads();
      product_tile<PO>(dk, ds_s, x_s);
    }
  }

  T* dk_out = static_cast<T*>(a.dk) + bi * a.l * ks + int64_t(kvh) * a.p;
  T* dv_out = static_cast<T*>(a.dv) + bi * a.l * ks + int64_t(kvh) * a.p;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t key = j0 + ty * 4 + i;
    if (key >= a.l) continue;
#pragma unroll
    for (int jj = 0; jj < NO; ++jj) {
      const int n = n0 + slice_col<PO>(tx, jj);
      if (n < a.p) {
        dk_out[key * ks + n] = from_f32<T>(dk[i][jj] * a.scale);
        dv_out[key * ks + n] = from_f32<T>(dv[i][jj]);
      }
    }
  }
}

template <class T, int PO>
__global__ void __launch_bounds__(kThreads, 2) attention_dq_kernel(BwdArgs a) {
  constexpr int NO = PO / 16;
  extern __shared__ float4 smem4[];
  float* a_s = reinterpret_cast<float*>(smem4);
  float* b_s = a_s + kChunkFloats;
  float* ds_s = b_s + kChunkFloats;  // dS, [64 queries][kPad]
  float* x_s = ds_s + kTileFloats;   // K slice, [64 keys][PO]
  int* q_ids = reinterpret_cast<int*>(x_s + kTile * PO);
  int* k_ids = q_ids + kTile;
  int* mm = k_ids + kTile;

  const int tx = tid_x(), ty = tid_y();
  const int64_t bh = blockIdx.x, bi = bh / a.hq;
  const int h = int(bh % a.hq), kvh = h / (a.hq / a.hkv);
  const int64_t i0 = int64_t(gridDim.y - 1 - blockIdx.y) * kTile;
  const int n0 = int(blockIdx.z) * PO;
  const int64_t qs = int64_t(a.hq) * a.p, ks = int64_t(a.hkv) * a.p;
  const T* q = static_cast<const T*>(a.q) + bi * a.l * qs + int64_t(h) * a.p;
  const T* dout = static_cast<const T*>(a.dout) + bi * a.l * qs + int64_t(h) * a.p;
  const T* k = static_cast<const T*>(a.k) + bi * a.l * ks + int64_t(kvh) * a.p;
  const T* v = static_cast<const T*>(a.v) + bi * a.l * ks + int64_t(kvh) * a.p;
  const int32_t* seq = a.seq ? a.seq + bi * a.l : nullptr;
  if (seq) load_ids(seq, i0, a.l, q_ids, mm);

  float lr[4], dr[4], dq[4][NO];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t row = i0 + ty * 4 + i;
    lr[i] = row < a.l ? a.lse[bh * a.l + row] : 0.f;
    dr[i] = row < a.l ? a.D[bh * a.l + row] : 0.f;
#pragma unroll
    for (int jj = 0; jj < NO; ++jj) dq[i][jj] = 0.f;
  }

  const int64_t last_key = min(i0 + kTile - 1, a.l - 1);
  for (int64_t j0 = 0; j0 <= last_key; j0 += kTile) {
    if (seq) {
      __syncthreads();
      load_ids(seq, j0, a.l, k_ids, mm + 2);
      __syncthreads();
      if (disjoint(mm, mm + 2)) continue;
    }
    float pr[4][4], dp[4][4];
    score_tile(pr, a_s, b_s, q, qs, i0, k, ks, j0, a.l, a.p);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t row = i0 + ty * 4 + i;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t col = j0 + tx * 4 + j;
        const bool ok = col <= row && row < a.l && (!seq || k_ids[tx * 4 + j] == q_ids[ty * 4 + i]);
        pr[i][j] = ok ? expf(pr[i][j] * a.scale - lr[i]) : 0.f;
      }
    }
    score_tile(dp, a_s, b_s, dout, qs, i0, v, ks, j0, a.l, a.p);
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) dp[i][j] = pr[i][j] * (dp[i][j] - dr[i]);
    store_tile(ds_s, dp);
    load_slice<PO>(x_s, k, ks, j0, a.l, n0, a.p);
    __syncthreads();
    product_tile<PO>(dq, ds_s, x_s);
  }

  T* dq_out = static_cast<T*>(a.dq) + bi * a.l * qs + int64_t(h) * a.p;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t row = i0 + ty * 4 + i;
    if (row >= a.l) continue;
#pragma unroll
    for (int jj = 0; jj < NO; ++jj) {
      const int n = n0 + slice_col<PO>(tx, jj);
      if (n < a.p) dq_out[row * qs + n] = from_f32<T>(dq[i][jj] * a.scale);
    }
  }
}

template <class T, int PO>
void launch_backward(const BwdArgs& a, int64_t b, int dev) {
  cudaStream_t s = stream(dev);
  constexpr int smem_kv = dkdv_smem_bytes<PO>(), smem_q = dq_smem_bytes<PO>();
  allow_smem(reinterpret_cast<const void*>(&attention_dkdv_kernel<T, PO>), smem_kv);
  allow_smem(reinterpret_cast<const void*>(&attention_dq_kernel<T, PO>), smem_q);
  // dk, dv: key tiles in order, so the longest walks (near the start) go first.
  const dim3 grid_kv = tile_grid(b * a.hkv, a.l, a.p, PO, "attention_backward");
  attention_dkdv_kernel<T, PO><<<grid_kv, kThreads, smem_kv, s>>>(a);
  MT_CUDA_LAUNCH_CHECK();
  const dim3 grid_q = tile_grid(b * a.hq, a.l, a.p, PO, "attention_backward");
  attention_dq_kernel<T, PO><<<grid_q, kThreads, smem_q, s>>>(a);
  MT_CUDA_LAUNCH_CHECK();
}

}  // namespace

void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& seq_idx, double scale) {
  const int64_t b = q.size(0), l = q.size(1), hq = q.size(2), p = q.size(3);
  if (b == 0 || l == 0 || hq == 0) return;
  if (cudnn_attention_backward(dout, q, k, v, out, lse, dq, dk, dv, seq_idx, scale)) return;
  const int dev = q.device().index;
  DeviceGuard guard(dev);
  Tensor D = Tensor::empty({b * hq * l}, DType::f32, q.device());
  BwdArgs a{dout.data_ptr(), q.data_ptr(), k.data_ptr(), v.data_ptr(), static_cast<const float*>(lse.data_ptr()),
            static_cast<const float*>(D.data_ptr()), dq.data_ptr(), dk.data_ptr(), dv.data_ptr(),
            seq_idx.defined() ? static_cast<const int32_t*>(seq_idx.data_ptr()) : nullptr,
            l, int(hq), int(k.size(2)), int(p), float(scale)};
  visit_bf16_f32(q.dtype(), "attention_backward", "q", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t rows = b * l * hq;
    constexpr int kRowThreads = 256;
    const int64_t blocks = (rows + kRowThreads / 32 - 1) / (kRowThreads / 32);
    rowdot_kernel<T><<<unsigned(blocks < (1 << 20) ? blocks : (1 << 20)), kRowThreads, 0, stream(dev)>>>(
        static_cast<const T*>(dout.data_ptr()), static_cast<const T*>(out.data_ptr()),
        static_cast<float*>(D.data_ptr()), rows, l, int(hq), int(p));
    MT_CUDA_LAUNCH_CHECK();
    if (attention_mma_supported(q, {&dout, &q, &k, &v, &dq, &dk, &dv}))
      return attention_backward_mma(dout, q, k, v, a.lse, a.D, dq, dk, dv, seq_idx, scale);
    with_slice_width(p, [&](auto po) { launch_backward<T, decltype(po)::value>(a, b, dev); });
  });
}

}  // namespace mambatron::cuda
