// Linear + cross-entropy on CUDA, without the full [n, V] logits.
//
// A single-block kernel first checks every target and mask value and lists the
// included positions in order (a ballot scan), with their targets and weights and
// the weights' f64 sum; the host reads that back once, so a bad value throws before
// any output is written, as on the CPU. The included rows are then processed
// chunk_size at a time. Sweep 1: for each vocabulary chunk, cuBLASLt writes the f32
// logits block H·W_vᵀ and one block per row folds it into the row's running max and
// sum of exponentials (online logsumexp) and picks up the target's logit. Sweep 2
// (gradients) recomputes each block (unless there is one vocabulary chunk, whose
// logits are still in the scratch), turns it into G = coef·(softmax − one-hot) in the
// operand dtype, and feeds the gemms dH (+)= G·W_v and dW_v (+)= Gᵀ·H with f32
// output; the first vocabulary chunk (for dH) and the first row chunk (for dW)
// overwrite, later ones accumulate with beta = 1. Every reduction has a fixed order
// and no atomics touch floats, so the bits repeat from run to run.
#include <cmath>
#include <limits>

#include "../backend.h"
#include "dense.cuh"
#include "loss.h"

namespace mambatron::cuda {

namespace {

constexpr int kSelectThreads = 1024;
constexpr unsigned kMaxBlocks = 1u << 20;
constexpr unsigned long long kNoBad = std::numeric_limits<unsigned long long>::max();

// What select_kernel reports to the host, in one copy.
struct SelectInfo {
  unsigned long long first_bad;  // the smallest position with a bad target or mask value; kNoBad if none
  long long count;               // included positions
  double total;                  // the sum of their weights
};

__device__ __forceinline__ float mask_weight(uint8_t m) { return m ? 1.0f : 0.0f; }
__device__ __forceinline__ float mask_weight(float m) { return m; }

// One block of kSelectThreads walks the positions a tile at a time; the included ones
// of a tile get consecutive slots after those of earlier tiles (warp ballots, then a
// scan of the warp counts), so idx is in position order.
template <class I, class M>
__global__ void select_kernel(const I* __restrict__ targets, const M* __restrict__ mask, int64_t n, int64_t vocab,
                              int64_t ignore, int64_t* __restrict__ idx, int64_t* __restrict__ tgt,
                              float* __restrict__ wt, SelectInfo* __restrict__ info) {
  __shared__ int warp_end[32];
  __shared__ double red[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  int64_t offset = 0;
  double acc = 0;
  for (int64_t base = 0; base < n; base += blockDim.x) {
    const int64_t i = base + threadIdx.x;
    bool inc = false;
    int64_t t = 0;
    float m = 1.0f;
    if (i < n) {
      t = int64_t(targets[i]);
      if (mask) m = mask_weight(mask[i]);
      const bool bad = !(isfinite(m) && m >= 0.0f) || (t != ignore && (t < 0 || t >= vocab));
      if (bad) atomicMin(&info->first_bad, static_cast<unsigned long long>(i));  // an integer: order-free
      inc = !bad && t != ignore && m > 0.0f;
    }
    const unsigned ballot = __ballot_sync(0xffffffffu, inc);
    if (lane == 0) warp_end[warp] = __popc(ballot);
    __syncthreads();
    if (warp == 0) {  // inclusive scan of the warp counts
      int c = lane < warps ? warp_end[lane] : 0;
      for (int o = 1; o < 32; o <<= 1) {
        const int y = __shfl_up_sync(0xffffffffu, c, o);
        if (lane >= o) c += y;
      }
      warp_end[lane] = c;
    }
    __syncthreads();
    if (inc) {
      const int64_t slot = offset + (warp ? warp_end[warp - 1] : 0) + __popc(ballot & ((1u << lane) - 1u));
      idx[slot] = i;
      tgt[slot] = t;
      wt[slot] = m;
      acc += double(m);
    }
    offset += warp_end[warps - 1];
    __syncthreads();  // warp_end is rewritten by the next tile
  }
  acc = block_sum(acc, red);
  if (threadIdx.x == 0) {
    info->count = offset;
    info->total = acc;
  }
}

// dst row r = src row idx[r], converted.
template <class S, class D>
__global__ void gather_rows_kernel(const S* __restrict__ src, const int64_t* __restrict__ idx, D* __restrict__ dst,
                                   int64_t rows, int64_t d) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const S* s = src + idx[r] * d;
    D* o = dst + r * d;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) o[j] = cast_value<D>(s[j]);
  }
}

// dst row idx[r] = src row r, converted.
template <class S, class D>
__global__ void scatter_rows_kernel(const S* __restrict__ src, const int64_t* __restrict__ idx, D* __restrict__ dst,
                                    int64_t rows, int64_t d) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const S* s = src + r * d;
    D* o = dst + idx[r] * d;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) o[j] = cast_value<D>(s[j]);
  }
}

// (m, s) ← the max and the sum of exponentials of the union of two sets, each given as
// its max and its sum of exp(x − max).
__device__ __forceinline__ void merge_lse(float& m, float& s, float m2, float s2) {
  const float mx = fmaxf(m, m2);
  if (mx == -INFINITY) return;  // both empty
  s = s * expf(m - mx) + s2 * expf(m2 - mx);
  m = mx;
}

__device__ __forceinline__ void fold(float& m, float& s, float x) {
  if (x > m) {
    s *= expf(m - x);
    m = x;
  }
  s += expf(x - m);
}

// One block per row of the f32 logits block L [rows, vc] (vocabulary v0 .. v0 + vc):
// the chunk's max and sum of exponentials, merged into the row's running pair (the
// first chunk overwrites it); the target's logit if it lies in the chunk; on the last
// chunk the row's loss ℓ = max + log(sum) − target logit.
template <bool kVec4>
__global__ void lse_kernel(const float* __restrict__ L, int64_t rows, int64_t vc, int64_t v0, bool first, bool last,
                           const int64_t* __restrict__ tgt, const int64_t* __restrict__ idx, float* __restrict__ run_max,
                           float* __restrict__ run_sum, float* __restrict__ tlogit, double* __restrict__ row_loss,
                           float* __restrict__ losses) {
  __shared__ float sh_m[32], sh_s[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float* x = L + r * vc;
    float m = -INFINITY, s = 0.0f;
    if constexpr (kVec4) {
      const float4* x4 = reinterpret_cast<const float4*>(x);
      for (int64_t j = threadIdx.x; j < vc / 4; j += blockDim.x) {
        const float4 v = x4[j];
        const float mj = fmaxf(fmaxf(v.x, v.y), fmaxf(v.z, v.w));
        if (mj > m) {
          s *= expf(m - mj);
          m = mj;
        }
        s += (expf(v.x - m) + expf(v.y - m)) + (expf(v.z - m) + expf(v.w - m));
      }
    } else {
      for (int64_t j = threadIdx.x; j < vc; j += blockDim.x) fold(m, s, x[j]);
    }
    for (int o = 16; o > 0; o >>= 1) merge_lse(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
    if (lane == 0) sh_m[warp] = m, sh_s[warp] = s;
    __syncthreads();
    if (warp == 0) {
      m = lane < warps ? sh_m[lane] : -INFINITY;
      s = lane < warps ? sh_s[lane] : 0.0f;
      for (int o = 16; o > 0; o >>= 1)
        merge_lse(m, s, __shfl_xor_sync(0xffffffffu, m, o), __shfl_xor_sync(0xffffffffu, s, o));
      if (lane == 0) {
        if (!first) {
          float pm = run_max[r], ps = run_sum[r];
          merge_lse(pm, ps, m, s);
          m = pm, s = ps;
        }
        run_max[r] = m;
        run_sum[r] = s;
        const int64_t t = tgt[r] - v0;
        if (t >= 0 && t < vc) tlogit[r] = x[t];
        if (last) {
          const double loss = double(m) + log(double(s)) - double(tlogit[r]);
          row_loss[r] = loss;
          if (losses) losses[idx[r]] = float(loss);
        }
      }
    }
    __syncthreads();  // sh_m / sh_s are rewritten for the next row
  }
}

__device__ __forceinline__ void store4(float* p, float a, float b, float c, float d) {
  *reinterpret_cast<float4*>(p) = make_float4(a, b, c, d);
}
__device__ __forceinline__ void store4(__nv_bfloat16* p, float a, float b, float c, float d) {
  __nv_bfloat162 lo = __floats2bfloat162_rn(a, b), hi = __floats2bfloat162_rn(c, d);
  uint2 u;
  u.x = *reinterpret_cast<unsigned*>(&lo);
  u.y = *reinterpret_cast<unsigned*>(&hi);
  *reinterpret_cast<uint2*>(p) = u;
}

// G = coef·(softmax − one-hot) for the logits block L [rows, vc] (vocabulary from v0),
// coef = scale·weight of the row (scale = grad_scale / Σ weights). The softmax is
// exp(x − max)·(coef / sum), so the logsumexp is never rounded inside the exponential.
// G may be L itself (f32): every element is read and written by one thread.
template <class G, bool kVec4>
__global__ void dlogits_kernel(const float* L, G* out, int64_t rows, int64_t vc, int64_t v0,
                               const int64_t* __restrict__ tgt, const float* __restrict__ wt, double scale,
                               const float* __restrict__ run_max, const float* __restrict__ run_sum) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const double coef = scale * double(wt[r]);
    const float a = float(coef / double(run_sum[r])), mx = run_max[r], c = float(coef);
    const int64_t t = tgt[r] - v0;
    const float* x = L + r * vc;
    G* g = out + r * vc;
    if constexpr (kVec4) {
      for (int64_t j = threadIdx.x; j < vc / 4; j += blockDim.x) {
        const float4 v = reinterpret_cast<const float4*>(x)[j];
        const int64_t k = 4 * j;
        store4(g + k, expf(v.x - mx) * a - (k == t ? c : 0.0f), expf(v.y - mx) * a - (k + 1 == t ? c : 0.0f),
               expf(v.z - mx) * a - (k + 2 == t ? c : 0.0f), expf(v.w - mx) * a - (k + 3 == t ? c : 0.0f));
      }
    } else {
      for (int64_t j = threadIdx.x; j < vc; j += blockDim.x) g[j] = cast_value<G>(expf(x[j] - mx) * a - (j == t ? c : 0.0f));
    }
  }
}

// Σ weight·ℓ over the rows, in f64: per-thread strided sums, then block_sum's fixed tree.
__global__ void weighted_sum_kernel(const double* __restrict__ row_loss, const float* __restrict__ wt, int64_t rows,
                                    double* __restrict__ out) {
  __shared__ double sh[32];
  double acc = 0;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) acc += double(wt[r]) * row_loss[r];
  acc = block_sum(acc, sh);
  if (threadIdx.x == 0) *out = acc;
}

unsigned blocks_for(int64_t rows) { return unsigned(rows < kMaxBlocks ? (rows > 0 ? rows : 1) : kMaxBlocks); }

// Threads per row for the row kernels: a function of the row length alone.
int row_threads(int64_t len) { return len >= 2048 ? 256 : len >= 512 ? 128 : len >= 128 ? 64 : 32; }

void zero(const Tensor& t, cudaStream_t s) {
  if (t.nbytes() > 0) MT_CUDA_CHECK(cudaMemsetAsync(t.data_ptr(), 0, t.nbytes(), s));
}

template <class T>
T* ptr(const Tensor& t) { return static_cast<T*>(t.data_ptr()); }

// The included positions, in order, with their targets and weights.
struct Selection {
  Tensor idx, tgt, wt;  // [n] each; the first `count` entries are used
  int64_t count = 0;
  double total = 0;
};

// Reads targets and mask on the device; throws the CPU op's message for the first bad value.
Selection select_rows(const Tensor& targets, const Tensor& mask, int64_t vocab, int64_t ignore, const char* op) {
  const Device dev = targets.device();
  cudaStream_t s = stream(dev.index);
  const int64_t n = targets.numel();
  Selection sel;
  sel.idx = Tensor::empty({n > 0 ? n : 1}, DType::i64, dev);
  sel.tgt = Tensor::empty({n > 0 ? n : 1}, DType::i64, dev);
  sel.wt = Tensor::empty({n > 0 ? n : 1}, DType::f32, dev);
  Tensor info_t = Tensor::empty({int64_t(sizeof(SelectInfo) / 8)}, DType::i64, dev);
  auto* info = ptr<SelectInfo>(info_t);
  MT_CUDA_CHECK(cudaMemsetAsync(info, 0xff, sizeof(SelectInfo), s));  // first_bad = kNoBad
  auto launch = [&](auto itag, auto mtag) {
    using I = typename decltype(itag)::type;
    using M = typename decltype(mtag)::type;
    select_kernel<I, M><<<1, kSelectThreads, 0, s>>>(ptr<const I>(targets), mask.defined() ? ptr<const M>(mask) : nullptr,
                                                     n, vocab, ignore, ptr<int64_t>(sel.idx), ptr<int64_t>(sel.tgt),
                                                     ptr<float>(sel.wt), info);
    MT_CUDA_LAUNCH_CHECK();
  };
  auto with_mask = [&](auto itag) {
    if (mask.defined() && mask.dtype() == DType::f32) launch(itag, DTypeTag<float>{});
    else launch(itag, DTypeTag<uint8_t>{});
  };
  if (targets.dtype() == DType::i32) with_mask(DTypeTag<int32_t>{});
  else with_mask(DTypeTag<int64_t>{});

  SelectInfo host{};
  memcpy(&host, Device::cpu(), info, dev, sizeof(host));  // waits for the kernel
  if (host.first_bad != kNoBad) {
    const int64_t i = int64_t(host.first_bad);
    double m = 1.0;
    if (mask.defined() && mask.dtype() == DType::f32) {
      float v = 0;
      memcpy(&v, Device::cpu(), ptr<const float>(mask) + i, dev, sizeof(v));
      m = v;
    } else if (mask.defined()) {
      uint8_t v = 0;
      memcpy(&v, Device::cpu(), ptr<const uint8_t>(mask) + i, dev, sizeof(v));
      m = v ? 1.0 : 0.0;
    }
    MT_CHECK(std::isfinite(m) && m >= 0, ValueError, op, ": mask[", i, "] = ", m,
             ", expected a finite weight >= 0 (0 excludes the position)");
    int64_t t = 0;
    if (targets.dtype() == DType::i32) {
      int32_t v = 0;
      memcpy(&v, Device::cpu(), ptr<const int32_t>(targets) + i, dev, sizeof(v));
      t = v;
    } else {
      memcpy(&t, Device::cpu(), ptr<const int64_t>(targets) + i, dev, sizeof(t));
    }
    throw ValueError(detail::cat(op, ": targets[", i, "] = ", t, " is outside the vocabulary [0, ", vocab,
                                 ") and is not ignore_index (", ignore, ")"));
  }
  sel.count = host.count;
  sel.total = host.total;
  return sel;
}

// The chunked computation once the included rows are known (count ≥ 1).
class Chunked {
 public:
  Chunked(const Tensor& h, const Tensor& w, const Selection& sel, const LinearCrossEntropyOptions& opt, Tensor* dh,
          Tensor* dw, Tensor* losses)
      : h_(h), w_(w), sel_(sel), opt_(opt), dh_(dh), dw_(dw), losses_(losses) {
    dev_ = h.device();
    s_ = stream(dev_.index);
    n_ = h.size(0), d_ = h.size(1), V_ = w.size(0), R_ = sel.count;
    C_ = std::min(opt.chunk_size, R_);
    VC_ = opt.vocab_chunk_size > 0 ? std::min(opt.vocab_chunk_size, V_) : V_;
    op_dt_ = h.dtype() == DType::bf16 && w.dtype() == DType::bf16 ? DType::bf16 : DType::f32;
    h_direct_ = R_ == n_ && h.dtype() == op_dt_;
    logits_ = Tensor::empty({C_ * VC_}, DType::f32, dev_);
    stats_ = Tensor::empty({3 * C_}, DType::f32, dev_);
    row_loss_ = Tensor::empty({R_}, DType::f64, dev_);
    if (!h_direct_) hc_ = Tensor::empty({C_ * d_}, op_dt_, dev_);
    if (w.dtype() != op_dt_) wc_ = Tensor::empty({VC_ * d_}, op_dt_, dev_);
    if (dh_) {
      if (op_dt_ != DType::f32) g_ = Tensor::empty({C_ * VC_}, op_dt_, dev_);
      dh_direct_ = R_ == n_ && dh->dtype() == DType::f32;
      if (!dh_direct_) dhc_ = Tensor::empty({C_ * d_}, DType::f32, dev_);
      dw_acc_ = dw->dtype() == DType::f32 ? *dw : Tensor::empty({V_, d_}, DType::f32, dev_);
    }
  }

  double run() {
    for (int64_t r0 = 0; r0 < R_; r0 += C_) {
      const int64_t rc = std::min(C_, R_ - r0);
      const Tensor H = rows(r0, rc);
      sweep_lse(r0, rc, H);
      if (dh_) sweep_grads(r0, rc, H);
    }
    if (dh_ && dw_->dtype() != DType::f32) cuda::copy(dw_acc_, *dw_);
    Tensor sum = Tensor::empty({1}, DType::f64, dev_);
    weighted_sum_kernel<<<1, 1024, 0, s_>>>(ptr<const double>(row_loss_), ptr<const float>(sel_.wt), R_,
                                             ptr<double>(sum));
    MT_CUDA_LAUNCH_CHECK();
    double total = 0;
    memcpy(&total, Device::cpu(), ptr<const double>(sum), dev_, sizeof(total));
    return total / sel_.total;
  }

 private:
  // The first rows·cols values of a flat scratch buffer as a [rows, cols] matrix.
  static Tensor block(const Tensor& buf, int64_t rows, int64_t cols) {
    return buf.narrow(0, 0, rows * cols).view({rows, cols});
  }

  // c (+)= op(a)·op(b); with an empty inner dimension the product is 0.
  void mm(const Tensor& a, const Tensor& b, Tensor c, bool trans_a, bool trans_b, bool accumulate) {
    if (c.numel() == 0) return;
    if (d_ == 0 && !trans_a && trans_b) {  // logits of zero-width rows
      zero(c, s_);
      return;
    }
    GemmOptions o;
    o.trans_a = trans_a;
    o.trans_b = trans_b;
    o.beta = accumulate ? 1.0f : 0.0f;
    cuda::gemm(a, b, c, o);
  }

  // The chunk's included rows of h in the operand dtype: a view of h when every row is
  // included and h has that dtype, else gathered (and converted) into the scratch.
  Tensor rows(int64_t r0, int64_t rc) {
    if (h_direct_) return h_.narrow(0, r0, rc);
    Tensor H = block(hc_, rc, d_);
    if (d_ > 0) {
      visit_bf16_f32(h_.dtype(), "linear_cross_entropy", "h", [&](auto stag) {
        using S = typename decltype(stag)::type;
        visit_bf16_f32(op_dt_, "linear_cross_entropy", "operand", [&](auto dtag) {
          using D = typename decltype(dtag)::type;
          gather_rows_kernel<S, D><<<blocks_for(rc), row_threads(d_), 0, s_>>>(
              ptr<const S>(h_), ptr<const int64_t>(sel_.idx) + r0, ptr<D>(H), rc, d_);
          MT_CUDA_LAUNCH_CHECK();
        });
      });
    }
    return H;
  }

  // Rows v0 .. v0 + vc of w in the operand dtype (converted into the scratch when w is
  // bf16 and h f32; the chunk last converted is kept).
  Tensor wrows(int64_t v0, int64_t vc) {
    if (w_.dtype() == op_dt_) return w_.narrow(0, v0, vc);
    Tensor W = block(wc_, vc, d_);
    if (wc_v0_ != v0) {
      cuda::copy(w_.narrow(0, v0, vc), W);
      wc_v0_ = v0;
    }
    return W;
  }

  float* run_max() const { return ptr<float>(stats_); }
  float* run_sum() const { return ptr<float>(stats_) + C_; }
  float* tlogit() const { return ptr<float>(stats_) + 2 * C_; }

  // Sweep 1: the logsumexp, target logit and loss of each row of the chunk.
  void sweep_lse(int64_t r0, int64_t rc, const Tensor& H) {
    const bool vec = aligned16({logits_.data_ptr()});
    for (int64_t v0 = 0; v0 < V_; v0 += VC_) {
      const int64_t vc = std::min(VC_, V_ - v0);
      Tensor L = block(logits_, rc, vc);
      mm(H, wrows(v0, vc), L, false, true, false);
      const bool first = v0 == 0, last = v0 + vc == V_;
      float* losses = losses_ ? ptr<float>(*losses_) : nullptr;
      const int64_t* tgt = ptr<const int64_t>(sel_.tgt) + r0;
      const int64_t* idx = ptr<const int64_t>(sel_.idx) + r0;
      double* rl = ptr<double>(row_loss_) + r0;
      if (vec && vc % 4 == 0)
        lse_kernel<true><<<blocks_for(rc), row_threads(vc / 4), 0, s_>>>(ptr<const float>(L), rc, vc, v0, first, last,
                                                                          tgt, idx, run_max(), run_sum(), tlogit(), rl,
                                                                          losses);
      else
        lse_kernel<false><<<blocks_for(rc), row_threads(vc), 0, s_>>>(ptr<const float>(L), rc, vc, v0, first, last,
                                                                       tgt, idx, run_max(), run_sum(), tlogit(), rl,
                                                                       losses);
      MT_CUDA_LAUNCH_CHECK();
    }
  }

  // Sweep 2: dlogits block by block, then the dH and dW gemms.
  void sweep_grads(int64_t r0, int64_t rc, const Tensor& H) {
    const bool one_vocab_chunk = VC_ == V_;
    const double scale = opt_.grad_scale / sel_.total;
    Tensor dH = dh_direct_ ? dh_->narrow(0, r0, rc) : block(dhc_, rc, d_);
    for (int64_t v0 = 0; v0 < V_; v0 += VC_) {
      const int64_t vc = std::min(VC_, V_ - v0);
      const Tensor W = wrows(v0, vc);
      Tensor L = block(logits_, rc, vc);
      if (!one_vocab_chunk) mm(H, W, L, false, true, false);
      Tensor G = op_dt_ == DType::f32 ? L : block(g_, rc, vc);
      visit_bf16_f32(op_dt_, "linear_cross_entropy", "operand", [&](auto tag) {
        using T = typename decltype(tag)::type;
        const bool vec = aligned16({L.data_ptr(), G.data_ptr()}) && vc % 4 == 0;
        auto args = [&](auto kernel, int threads) {
          kernel<<<blocks_for(rc), threads, 0, s_>>>(ptr<const float>(L), ptr<T>(G), rc, vc, v0,
                                                     ptr<const int64_t>(sel_.tgt) + r0,
                                                     ptr<const float>(sel_.wt) + r0, scale, run_max(), run_sum());
        };
        if (vec) args(dlogits_kernel<T, true>, row_threads(vc / 4));
        else args(dlogits_kernel<T, false>, row_threads(vc));
        MT_CUDA_LAUNCH_CHECK();
      });
      mm(G, W, dH, false, false, v0 > 0);
      mm(G, H, dw_acc_.narrow(0, v0, vc), true, false, r0 > 0 || opt_.accumulate_dw);
    }
    if (!dh_direct_ && d_ > 0) {
      visit_bf16_f32(dh_->dtype(), "linear_cross_entropy", "dh", [&](auto tag) {
        using D = typename decltype(tag)::type;
        scatter_rows_kernel<float, D><<<blocks_for(rc), row_threads(d_), 0, s_>>>(
            ptr<const float>(dH), ptr<const int64_t>(sel_.idx) + r0, ptr<D>(*dh_), rc, d_);
        MT_CUDA_LAUNCH_CHECK();
      });
    }
  }

  const Tensor &h_, &w_;
  const Selection& sel_;
  const LinearCrossEntropyOptions& opt_;
  Tensor *dh_, *dw_, *losses_;
  Device dev_;
  cudaStream_t s_;
  int64_t n_, d_, V_, R_, C_, VC_;
  DType op_dt_;
  bool h_direct_ = false, dh_direct_ = false;
  int64_t wc_v0_ = -1;
  Tensor logits_, stats_, row_loss_, hc_, wc_, g_, dhc_, dw_acc_;
};

}  // namespace

double linear_cross_entropy(const Tensor& h, const Tensor& w, const Tensor& targets, const Tensor& mask,
                            const LinearCrossEntropyOptions& opt, Tensor* dh, Tensor* dw, Tensor* losses,
                            const char* op) {
  const int dev = h.device().index;
  DeviceGuard guard(dev);
  cudaStream_t s = stream(dev);
  const Selection sel = select_rows(targets, mask, w.size(0), opt.ignore_index, op);
  if (losses) zero(*losses, s);
  if (dh && sel.count < h.size(0)) zero(*dh, s);  // excluded rows stay 0
  if (sel.count == 0) {
    if (dw && !opt.accumulate_dw) zero(*dw, s);
    return 0.0;
  }
  return Chunked(h, w, sel, opt, dh, dw, losses).run();
}

}  // namespace mambatron::cuda
