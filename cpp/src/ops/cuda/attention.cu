// Attention forward on CUDA. One block per (batch, query head, 64-query tile,
// PO-column slice of the output) walks the key tiles from 0 to its diagonal with
// an online softmax in f32: per tile, S = scale·Q·Kᵀ (masked: key after query, or
// of another document), the running max and sum are rescaled, P = exp(S − max)
// goes through shared memory into O += P·V. A key tile whose document ids cannot
// meet the query tile's is skipped; a skipped tile would have added exact zeros,
// so skipping changes no bit. Query tiles are issued longest first.
#include <cmath>

#include "attention.h"
#include "attention_cudnn.h"
#include "attention_mma.cuh"
#include "attention_tile.cuh"

namespace mambatron::cuda {

namespace {
using namespace attn;

struct FwdArgs {
  const void *q, *k, *v;
  void* out;
  float* lse;
  const int32_t* seq;  // null without documents
  int64_t l;
  int hq, hkv, p;
  float scale;
};

template <int PO>
constexpr int fwd_smem_bytes() {
  return (2 * kChunkFloats + kTileFloats + kTile * PO) * 4 + (2 * kTile + 4) * 4;
}

template <class T, int PO>
__global__ void __launch_bounds__(kThreads, 2) attention_fwd_kernel(FwdArgs a) {
  constexpr int NO = PO / 16;
  extern __shared__ float4 smem4[];
  float* a_s = reinterpret_cast<float*>(smem4);
  float* b_s = a_s + kChunkFloats;
  float* p_s = b_s + kChunkFloats;  // P of the current tile, [64][kPad]
  float* v_s = p_s + kTileFloats;   // V slice of the current tile, [64][PO]
  int* q_ids = reinterpret_cast<int*>(v_s + kTile * PO);
  int* k_ids = q_ids + kTile;
  int* mm = k_ids + kTile;  // query ids min, max; key ids min, max

  const int tx = tid_x(), ty = tid_y();
  const int64_t bh = blockIdx.x, bi = bh / a.hq;
  const int h = int(bh % a.hq), kvh = h / (a.hq / a.hkv);
  const int64_t i0 = int64_t(gridDim.y - 1 - blockIdx.y) * kTile;
  const int n0 = int(blockIdx.z) * PO;
  const int64_t qs = int64_t(a.hq) * a.p, ks = int64_t(a.hkv) * a.p;
  const T* q = static_cast<const T*>(a.q) + bi * a.l * qs + int64_t(h) * a.p;
  const T* k = static_cast<const T*>(a.k) + bi * a.l * ks + int64_t(kvh) * a.p;
  const T* v = static_cast<const T*>(a.v) + bi * a.l * ks + int64_t(kvh) * a.p;
  const int32_t* seq = a.seq ? a.seq + bi * a.l : nullptr;
  if (seq) load_ids(seq, i0, a.l, q_ids, mm);

  float o[4][NO], m[4], sum[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    m[i] = -INFINITY, sum[i] = 0.f;
#pragma unroll
    for (int jj = 0; jj < NO; ++jj) o[i][jj] = 0.f;
  }

  const int64_t last_key = min(i0 + kTile - 1, a.l - 1);
  for (int64_t j0 = 0; j0 <= last_key; j0 += kTile) {
    if (seq) {
      __syncthreads();  // the previous tile's key ids are read no more
      load_ids(seq, j0, a.l, k_ids, mm + 2);
      __syncthreads();
      if (disjoint(mm, mm + 2)) continue;
    }
    float s[4][4];
    score_tile(s, a_s, b_s, q, qs, i0, k, ks, j0, a.l, a.p);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t row = i0 + ty * 4 + i;
      float mx = -INFINITY;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t col = j0 + tx * 4 + j;
        const bool ok = col <= row && row < a.l && (!seq || k_ids[tx * 4 + j] == q_ids[ty * 4 + i]);
        s[i][j] = ok ? s[i][j] * a.scale : -INFINITY;
        mx = fmaxf(mx, s[i][j]);
      }
      mx = group_max(mx);
      const float mnew = fmaxf(m[i], mx);
      const float base = mnew == -INFINITY ? 0.f : mnew;  // a row that has seen no key yet
      const float alpha = expf(m[i] - base);
      float ps = 0.f;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        s[i][j] = expf(s[i][j] - base);
        ps += s[i][j];
      }
      sum[i] = sum[i] * alpha + group_sum(ps);
      m[i] = mnew;
#pragma unroll
      for (int jj = 0; jj < NO; ++jj) o[i][jj] *= alpha;
    }
    store_tile(p_s, s);
    load_slice<PO>(v_s, v, ks, j0, a.l, n0, a.p);
    __syncthreads();
    product_tile<PO>(o, p_s, v_s);
  }

  T* out = static_cast<T*>(a.out) + bi * a.l * qs + int64_t(h) * a.p;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t row = i0 + ty * 4 + i;
    if (row >= a.l) continue;
    const float inv = 1.f / sum[i];
#pragma unroll
    for (int jj = 0; jj < NO; ++jj) {
      const int n = n0 + slice_col<PO>(tx, jj);
      if (n < a.p) out[row * qs + n] = from_f32<T>(o[i][jj] * inv);
    }
    if (blockIdx.z == 0 && tx == 0) a.lse[bh * a.l + row] = m[i] + logf(sum[i]);
  }
}

template <class T, int PO>
void launch_forward(const FwdArgs& a, int64_t b, int dev) {
  constexpr int smem = fwd_smem_bytes<PO>();
  allow_smem(reinterpret_cast<const void*>(&attention_fwd_kernel<T, PO>), smem);
  const dim3 grid = tile_grid(b * a.hq, a.l, a.p, PO, "attention_forward");
  attention_fwd_kernel<T, PO><<<grid, kThreads, smem, stream(dev)>>>(a);
  MT_CUDA_LAUNCH_CHECK();
}

}  // namespace

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, Tensor& lse,
                       const Tensor& seq_idx, double scale) {
  if (q.size(0) == 0 || q.size(1) == 0 || q.size(2) == 0) return;
  if (cudnn_attention_forward(q, k, v, out, lse, seq_idx, scale)) return;
  const int dev = q.device().index;
  DeviceGuard guard(dev);
  FwdArgs a{q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), static_cast<float*>(lse.data_ptr()),
            seq_idx.defined() ? static_cast<const int32_t*>(seq_idx.data_ptr()) : nullptr,
            q.size(1), int(q.size(2)), int(k.size(2)), int(q.size(3)), float(scale)};
  const int64_t b = q.size(0);
  if (attention_mma_supported(q, {&q, &k, &v, &out})) return attention_forward_mma(q, k, v, out, lse, seq_idx, scale);
  visit_bf16_f32(q.dtype(), "attention_forward", "q", [&](auto tag) {
    using T = typename decltype(tag)::type;
    with_slice_width(a.p, [&](auto po) { launch_forward<T, decltype(po)::value>(a, b, dev); });
  });
}

}  // namespace mambatron::cuda
