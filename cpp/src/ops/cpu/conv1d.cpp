// Causal depthwise conv1d on the CPU, f32 and f64. Tasks are (batch row, block of
// channels); the inner loops run over contiguous channels of one token. Parameter
// gradients are summed per batch row in f64, then over rows in a fixed order, so
// results do not depend on the number of threads.
#include "conv1d.h"

#include <Eigen/Core>
#include <cmath>
#include <vector>

#include "scratch.h"

namespace mambatron::cpu {

namespace {

constexpr int64_t kChannelBlock = 64;
// Below this many (token, channel) pairs a call runs on one thread: starting threads
// costs more than the work.
constexpr int64_t kParallelWork = 1 << 15;

// For every token, the position where its document starts (0 without seq_idx); also
// checks that the ids never decrease along a row.
std::vector<int64_t> doc_starts(const Tensor& seq_idx, int64_t b, int64_t l, const char* op) {
  std::vector<int64_t> start(size_t(b * l), 0);
  if (!seq_idx.defined()) return start;
  const int32_t* seq = seq_idx.data<int32_t>();
  for (int64_t i = 0; i < b; ++i) {
    const int32_t* row = seq + i * l;
    for (int64_t t = 1; t < l; ++t) {
      MT_CHECK(row[t] >= row[t - 1], ValueError, op, ": 'seq_idx' must be non-decreasing along each row; row ", i,
               " has ", row[t - 1], " then ", row[t], " at position ", t);
      start[i * l + t] = row[t] == row[t - 1] ? start[i * l + t - 1] : t;
    }
  }
  return start;
}

template <class T>
struct Conv {
  const T* x;
  const T* w;
  const T* bias;  // may be null
  const T* init;  // may be null
  int64_t b, l, c, width;

  // The input at position s (s < 0: the initial state) as seen by a token of row i
  // whose document starts at `start`: zero before that document; the initial state
  // belongs to the row's first document.
  T tap(int64_t i, int64_t s, int64_t start, int64_t ch) const {
    if (s >= 0) return s >= start ? x[(i * l + s) * c + ch] : T(0);
    return start == 0 && init ? init[(i * c + ch) * (width - 1) + s + width - 1] : T(0);
  }
  // pre[j] = the convolution (before SiLU) of channel c0 + j at token t of row i, for
  // the channels [c0, c1). wt is the weight transposed to [width, c], so that the
  // inner loop runs over contiguous channels.
  void pre_block(int64_t i, int64_t t, int64_t start, int64_t c0, int64_t c1, const T* wt, T* pre) const {
    const int64_t cb = c1 - c0;
    for (int64_t j = 0; j < cb; ++j) pre[j] = bias ? bias[c0 + j] : T(0);
    const bool inside = t - (width - 1) >= start;  // every tap inside the document
    for (int64_t k = 0; k < width; ++k) {
      const int64_t s = t - (width - 1) + k;
      const T* wk = wt + k * c + c0;
      if (inside) {
        const T* xk = x + (i * l + s) * c + c0;
        for (int64_t j = 0; j < cb; ++j) pre[j] += wk[j] * xk[j];
      } else {
        for (int64_t j = 0; j < cb; ++j) pre[j] += wk[j] * tap(i, s, start, c0 + j);
      }
    }
  }
};

template <class T>
inline T sigmoid(T v) {
  return T(1) / (T(1) + std::exp(-v));
}

// p[0, n) = sigmoid(p), vectorised.
template <class T>
void sigmoid_inplace(T* p, int64_t n) {
  Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> a(p, n);
  a = T(1) / (T(1) + (-a).exp());
}

template <class T>
Conv<T> make_conv(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& initial_state) {
  return Conv<T>{x.data<T>(),
                 weight.data<T>(),
                 bias.data_or_null<T>(),
                 initial_state.data_or_null<T>(),
                 x.size(0),
                 x.size(1),
                 x.size(2),
                 weight.size(1)};
}

template <class T>
Scratch<T> transposed_weight(const Conv<T>& cv) {
  Scratch<T> wt(size_t(cv.width * cv.c));
  for (int64_t ch = 0; ch < cv.c; ++ch)
    for (int64_t k = 0; k < cv.width; ++k) wt[k * cv.c + ch] = cv.w[ch * cv.width + k];
  return wt;
}

template <class T>
void forward_typed(const Conv<T>& cv, const std::vector<int64_t>& start, T* out, T* final_state, bool silu) {
  const int64_t b = cv.b, l = cv.l, c = cv.c, w = cv.width;
  const int64_t nblk = (c + kChannelBlock - 1) / kChannelBlock;
  const Scratch<T> wt = transposed_weight(cv);
#pragma omp parallel if (b * l * c >= kParallelWork)
  {
    Scratch<T> pre(kChannelBlock), sig(kChannelBlock);  // one token of the block
#pragma omp for collapse(2) schedule(static)
    for (int64_t i = 0; i < b; ++i) {
      for (int64_t blk = 0; blk < nblk; ++blk) {
        int64_t c0 = blk * kChannelBlock, c1 = std::min(c, c0 + kChannelBlock), cb = c1 - c0;
        for (int64_t t = 0; t < l; ++t) {
          int64_t st = start[i * l + t];
          T* o = out + (i * l + t) * c;
          cv.pre_block(i, t, st, c0, c1, wt.data(), pre.data());
          if (silu) {
            std::copy(pre.begin(), pre.begin() + cb, sig.begin());
            sigmoid_inplace(sig.data(), cb);
            for (int64_t k = 0; k < cb; ++k) o[c0 + k] = pre[k] * sig[k];
          } else {
            std::copy(pre.begin(), pre.begin() + cb, o + c0);
          }
        }
        if (final_state) {
          // The state a next token of the last document would see.
          int64_t st = l > 0 ? start[i * l + l - 1] : 0;
          for (int64_t ch = c0; ch < c1; ++ch)
            for (int64_t j = 0; j < w - 1; ++j)
              final_state[(i * c + ch) * (w - 1) + j] = cv.tap(i, l - (w - 1) + j, st, ch);
        }
      }
    }
  }
}

template <class T>
void backward_typed(const Conv<T>& cv, const std::vector<int64_t>& start, const T* dout, const T* dfinal, T* dx,
                    T* dweight, T* dbias, T* dinit, bool silu) {
  const int64_t b = cv.b, l = cv.l, c = cv.c, w = cv.width;
  const int64_t nblk = (c + kChannelBlock - 1) / kChannelBlock;
  // Per batch row sums of the parameter gradients (dweight as [w, c]), reduced over
  // rows below.
  Scratch<double> dw_rows(size_t(b * c * w), 0.0), db_rows(size_t(b * c), 0.0);
  const Scratch<T> wt = transposed_weight(cv);
  const bool parallel = b * l * c >= kParallelWork;
#pragma omp parallel if (parallel)
  {
    Scratch<T> dpre;  // gradient of the conv before SiLU, [l, block]
    Scratch<T> pre(kChannelBlock), sig(kChannelBlock);
#pragma omp for collapse(2) schedule(static)
    for (int64_t i = 0; i < b; ++i) {
      for (int64_t blk = 0; blk < nblk; ++blk) {
        const int64_t c0 = blk * kChannelBlock, c1 = std::min(c, c0 + kChannelBlock), cb = c1 - c0;
        dpre.assign(size_t(l * cb), T(0));
        double* dw_row = dw_rows.data() + i * w * c;
        double* db_row = db_rows.data() + i * c;
        for (int64_t t = 0; t < l; ++t) {
          const int64_t st = start[i * l + t];
          const T* g = dout + (i * l + t) * c + c0;
          T* dp = dpre.data() + t * cb;
          if (silu) {
            cv.pre_block(i, t, st, c0, c1, wt.data(), pre.data());
            std::copy(pre.begin(), pre.begin() + cb, sig.begin());
            sigmoid_inplace(sig.data(), cb);
            for (int64_t j = 0; j < cb; ++j) dp[j] = g[j] * sig[j] * (T(1) + pre[j] * (T(1) - sig[j]));
          } else {
            std::copy(g, g + cb, dp);
          }
          for (int64_t j = 0; j < cb; ++j) db_row[c0 + j] += double(dp[j]);
          const bool inside = t - (w - 1) >= st;  // every tap inside the document
          for (int64_t k = 0; k < w; ++k) {
            const int64_t s = t - (w - 1) + k;
            double* dwk = dw_row + k * c + c0;
            if (inside) {
              const T* xk = cv.x + (i * l + s) * c + c0;
              for (int64_t j = 0; j < cb; ++j) dwk[j] += double(dp[j]) * double(xk[j]);
            } else {
              for (int64_t j = 0; j < cb; ++j) dwk[j] += double(dp[j]) * double(cv.tap(i, s, st, c0 + j));
            }
          }
        }
        // Input s feeds tokens t = s + (w-1) - k of its own document (start[t] <= s);
        // s < 0 is the initial state, seen by the row's first document only.
        const int64_t st_last = l > 0 ? start[i * l + l - 1] : 0;
        for (int64_t s = -(w - 1); s < l; ++s) {
          if (s < 0 && !dinit) continue;
          // Where the gradient of input s goes: dx, or the initial state (stride w-1).
          T* dst = s >= 0 ? dx + (i * l + s) * c + c0 : dinit + (i * c + c0) * (w - 1) + s + w - 1;
          const int64_t dst_stride = s >= 0 ? 1 : w - 1;
          if (s >= 0 && s + (w - 1) < l && start[i * l + s + w - 1] <= s) {  // all w readers in the document
            for (int64_t j = 0; j < cb; ++j) dst[j] = T(0);
            for (int64_t k = 0; k < w; ++k) {
              const T* dpt = dpre.data() + (s + (w - 1) - k) * cb;
              const T* wk = wt.data() + k * c + c0;
              for (int64_t j = 0; j < cb; ++j) dst[j] += dpt[j] * wk[j];
            }
          } else {
            for (int64_t j = 0; j < cb; ++j) {
              T acc = T(0);
              for (int64_t k = 0; k < w; ++k) {
                const int64_t t = s + (w - 1) - k;
                if (t >= 0 && t < l && start[i * l + t] <= std::max<int64_t>(s, 0))
                  acc += dpre[t * cb + j] * wt[k * c + c0 + j];
              }
              dst[j * dst_stride] = acc;
            }
          }
          const int64_t slot = s - (l - (w - 1));  // the slot of final_state that holds s
          if (dfinal && slot >= 0 && (s >= 0 ? s >= st_last : st_last == 0))
            for (int64_t j = 0; j < cb; ++j) dst[j * dst_stride] += dfinal[(i * c + c0 + j) * (w - 1) + slot];
        }
      }
    }
  }
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t ch = 0; ch < c; ++ch) {
    for (int64_t k = 0; k < w; ++k) {
      double acc = 0;
      for (int64_t i = 0; i < b; ++i) acc += dw_rows[(i * w + k) * c + ch];
      dweight[ch * w + k] = T(acc);
    }
    if (dbias) {
      double acc = 0;
      for (int64_t i = 0; i < b; ++i) acc += db_rows[i * c + ch];
      dbias[ch] = T(acc);
    }
  }
}

template <class T>
void step_typed(const T* x, const T* weight, const T* bias, T* state, T* out, int64_t b, int64_t c, int64_t w,
                bool silu) {
#pragma omp parallel for schedule(static) if (b * c >= kParallelWork)
  for (int64_t i = 0; i < b * c; ++i) {
    int64_t ch = i % c;
    T* st = state + i * (w - 1);
    const T* wc = weight + ch * w;
    T xv = x[i];
    T acc = bias ? bias[ch] : T(0);
    for (int64_t k = 0; k < w - 1; ++k) acc += wc[k] * st[k];
    acc += wc[w - 1] * xv;
    for (int64_t k = 0; k + 1 < w - 1; ++k) st[k] = st[k + 1];
    st[w - 2] = xv;
    out[i] = silu ? acc * sigmoid(acc) : acc;
  }
}

}  // namespace

void conv1d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& initial_state,
                    const Tensor& seq_idx, Tensor& out, Tensor& final_state, const Conv1dOptions& opt) {
  auto start = doc_starts(seq_idx, x.size(0), x.size(1), "conv1d_forward");
  visit_f32_f64(x.dtype(), "conv1d_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    forward_typed<T>(make_conv<T>(x, weight, bias, initial_state), start, out.data<T>(), final_state.data_or_null<T>(),
                     opt.silu);
  });
}

void conv1d_backward(const Tensor& dout, const Tensor& d_final_state, const Tensor& x, const Tensor& weight,
                     const Tensor& bias, const Tensor& initial_state, const Tensor& seq_idx, Tensor& dx,
                     Tensor& dweight, Tensor& dbias, Tensor& d_initial_state, const Conv1dOptions& opt) {
  auto start = doc_starts(seq_idx, x.size(0), x.size(1), "conv1d_backward");
  visit_f32_f64(x.dtype(), "conv1d_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    backward_typed<T>(make_conv<T>(x, weight, bias, initial_state), start, dout.data<T>(),
                      d_final_state.data_or_null<T>(), dx.data<T>(), dweight.data<T>(), dbias.data_or_null<T>(),
                      d_initial_state.data_or_null<T>(), opt.silu);
  });
}

void conv1d_step(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& conv_state, Tensor& out,
                 const Conv1dOptions& opt) {
  visit_f32_f64(x.dtype(), "conv1d_step", [&](auto tag) {
    using T = typename decltype(tag)::type;
    step_typed<T>(x.data<T>(), weight.data<T>(), bias.data_or_null<T>(), conv_state.data<T>(), out.data<T>(),
                  x.size(0), x.size(1), weight.size(1), opt.silu);
  });
}

}  // namespace mambatron::cpu
