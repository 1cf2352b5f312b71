// Embedding on CUDA. Forward: one block per position copies (and converts) its
// row; an id outside [0, V) is recorded as the smallest bad position (an integer
// atomicMin: the same answer in any order) and reported after the kernel.
// Backward: a stable counting sort of the positions by id, made on the host, gives
// each table row its positions in position order; one block per table row then
// sums them in that order in f64. No float atomics: the bits are fixed.
#include <limits>
#include <vector>

#include "../backend.h"
#include "dense.cuh"
#include "embedding.h"

namespace mambatron::cuda {

namespace {
constexpr int kThreads = 256;
constexpr unsigned kMaxBlocks = 1u << 20;
constexpr unsigned long long kNoBad = std::numeric_limits<unsigned long long>::max();

template <class W, class O, class I>
__global__ void embedding_fwd_kernel(const W* __restrict__ w, const I* __restrict__ ids, O* __restrict__ out,
                                     int64_t n, int64_t vocab, int64_t d, unsigned long long* __restrict__ bad) {
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const int64_t v = int64_t(ids[i]);
    if (v < 0 || v >= vocab) {
      if (threadIdx.x == 0) atomicMin(bad, static_cast<unsigned long long>(i));
      continue;
    }
    const W* src = w + v * d;
    O* dst = out + i * d;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) dst[j] = from_f32<O>(to_f32(src[j]));
  }
}

// Row v of dweight = Σ dout[order[k]] for k in [start[v], start[v + 1]), k ascending
// (accumulate: added to the row, and rows no token names are left as they are).
template <class G, class P>
__global__ void embedding_bwd_kernel(const G* __restrict__ dout, const int64_t* __restrict__ start,
                                     const int64_t* __restrict__ order, P* __restrict__ dw, int64_t vocab, int64_t d,
                                     bool accumulate) {
  for (int64_t v = blockIdx.x; v < vocab; v += gridDim.x) {
    const int64_t b = start[v], e = start[v + 1];
    if (accumulate && b == e) continue;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
      double acc = 0;
      for (int64_t k = b; k < e; ++k) acc += double(to_f32(dout[order[k] * d + j]));
      const P sum = cast_value<P>(acc);
      dw[v * d + j] = accumulate ? cast_value<P>(to_f32(dw[v * d + j]) + to_f32(sum)) : sum;
    }
  }
}

[[noreturn]] void throw_bad_id(const char* op, int64_t pos, int64_t id, int64_t l, int64_t vocab) {
  throw ValueError(detail::cat(op, ": argument 'tokens' holds id ", id, " at [", pos / l, ", ", pos % l,
                               "], expected ids in [0, ", vocab, ") (the rows of 'weight')"));
}

template <class F>
void visit_ids(const Tensor& tokens, F&& f) {
  if (tokens.dtype() == DType::i32) f(DTypeTag<int32_t>{});
  else f(DTypeTag<int64_t>{});
}

unsigned blocks_for(int64_t n) { return unsigned(n < kMaxBlocks ? n : kMaxBlocks); }
}  // namespace

void embedding_forward(const Tensor& weight, const Tensor& tokens, Tensor& out) {
  const char* op = "embedding_forward";
  const int dev = weight.device().index;
  DeviceGuard guard(dev);
  cudaStream_t s = stream(dev);
  const int64_t vocab = weight.size(0), d = weight.size(1), n = tokens.numel(), l = tokens.size(1);
  if (n == 0) return;
  Tensor bad = Tensor::empty({1}, DType::i64, weight.device());
  auto* pbad = static_cast<unsigned long long*>(bad.data_ptr());
  MT_CUDA_CHECK(cudaMemsetAsync(pbad, 0xff, sizeof(unsigned long long), s));  // kNoBad
  visit_ids(tokens, [&](auto itag) {
    using I = typename decltype(itag)::type;
    const I* ids = static_cast<const I*>(tokens.data_ptr());
    visit_bf16_f32(weight.dtype(), op, "weight", [&](auto wtag) {
      using W = typename decltype(wtag)::type;
      visit_bf16_f32(out.dtype(), op, "out", [&](auto otag) {
        using O = typename decltype(otag)::type;
        if (d > 0) {
          embedding_fwd_kernel<W, O, I><<<blocks_for(n), kThreads, 0, s>>>(
              static_cast<const W*>(weight.data_ptr()), ids, static_cast<O*>(out.data_ptr()), n, vocab, d, pbad);
        } else {  // no columns to copy: the kernel still checks the ids
          embedding_fwd_kernel<W, O, I><<<blocks_for(n), kThreads, 0, s>>>(nullptr, ids, nullptr, n, vocab, 0, pbad);
        }
        MT_CUDA_LAUNCH_CHECK();
      });
    });
    unsigned long long first = kNoBad;
    memcpy(&first, Device::cpu(), pbad, weight.device(), sizeof(first));  // waits for the kernel
    if (first != kNoBad) {
      I id = 0;
      memcpy(&id, Device::cpu(), ids + first, weight.device(), sizeof(I));
      throw_bad_id(op, int64_t(first), int64_t(id), l, vocab);
    }
  });
}

void embedding_backward(const Tensor& dout, const Tensor& tokens, Tensor& dweight, bool accumulate) {
  const char* op = "embedding_backward";
  const int dev = dout.device().index;
  DeviceGuard guard(dev);
  const int64_t vocab = dweight.size(0), d = dweight.size(1), n = tokens.numel(), l = tokens.size(1);
  // The ids on the host, as int64.
  std::vector<int64_t> ids(static_cast<size_t>(n));
  visit_ids(tokens, [&](auto itag) {
    using I = typename decltype(itag)::type;
    std::vector<I> raw(static_cast<size_t>(n));
    memcpy(raw.data(), Device::cpu(), tokens.data_ptr(), tokens.device(), sizeof(I) * size_t(n));
    for (int64_t i = 0; i < n; ++i) ids[size_t(i)] = int64_t(raw[size_t(i)]);
  });
  for (int64_t i = 0; i < n; ++i)
    if (ids[size_t(i)] < 0 || ids[size_t(i)] >= vocab) throw_bad_id(op, i, ids[size_t(i)], l, vocab);
  // start[v] .. start[v + 1]: the slots of order holding the positions of id v, ascending.
  Tensor start = Tensor::zeros({vocab + 1}, DType::i64), order = Tensor::empty({n > 0 ? n : 1}, DType::i64);
  int64_t *ps = start.data<int64_t>(), *po = order.data<int64_t>();
  for (int64_t i = 0; i < n; ++i) ++ps[ids[size_t(i)] + 1];
  for (int64_t v = 0; v < vocab; ++v) ps[v + 1] += ps[v];
  std::vector<int64_t> next(ps, ps + vocab);
  for (int64_t i = 0; i < n; ++i) po[next[size_t(ids[size_t(i)])]++] = i;
  if (vocab == 0 || d == 0) return;
  Tensor start_d = start.to(dout.device()), order_d = order.to(dout.device());
  visit_bf16_f32(dout.dtype(), op, "dout", [&](auto gtag) {
    using G = typename decltype(gtag)::type;
    visit_bf16_f32(dweight.dtype(), op, "dweight", [&](auto ptag) {
      using P = typename decltype(ptag)::type;
      embedding_bwd_kernel<G, P><<<blocks_for(vocab), kThreads, 0, stream(dev)>>>(
          static_cast<const G*>(dout.data_ptr()), static_cast<const int64_t*>(start_d.data_ptr()),
          static_cast<const int64_t*>(order_d.data_ptr()), static_cast<P*>(dweight.data_ptr()), vocab, d,
          accumulate);
      MT_CUDA_LAUNCH_CHECK();
    });
  });
}

}  // namespace mambatron::cuda
