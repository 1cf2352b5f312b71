// Causal attention on the CPU: forward, backward, KV-cache append and decode.
// One (batch, head) problem at a time, parallel over them with OpenMP. Queries
// are taken in tiles of kBlock rows; a tile's scores against the keys it may see
// are formed with one Eigen product, so memory stays kBlock × l per thread and
// the softmax of each row is exact (max, exp, sum over the whole row at once).
#include "attention.h"
#include "scratch.h"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <vector>

namespace mambatron::cpu {

namespace {

template <class T>
using RowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
// Token-major [l, heads, p] data seen as the [l, p] matrix of one head.
template <class T>
using ConstRows = Eigen::Map<const RowMat<T>, 0, Eigen::OuterStride<>>;
template <class T>
using Rows = Eigen::Map<RowMat<T>, 0, Eigen::OuterStride<>>;
template <class T>
using Vec = Eigen::Matrix<T, Eigen::Dynamic, 1>;

constexpr int64_t kBlock = 64;  // query rows per tile
// Below this many multiply-adds per call a thread team costs more than it saves
// (and on a busy machine far more): run on the calling thread.
constexpr double kParallelWork = 1 << 18;

// starts[bi·l + i]: the first key that token i of row bi may attend to, the first
// token of its document (0 without seq_idx). Documents are contiguous because
// seq_idx is non-decreasing (checked by the caller), so the keys of token i are
// exactly [starts[i], i].
std::vector<int64_t> document_starts(const Tensor& seq_idx, int64_t b, int64_t l) {
  std::vector<int64_t> starts(size_t(b * l), 0);
  if (!seq_idx.defined()) return starts;
  const int32_t* s = seq_idx.data<int32_t>();
  for (int64_t bi = 0; bi < b; ++bi)
    for (int64_t i = 1; i < l; ++i) {
      const int64_t t = bi * l + i;
      starts[t] = s[t] == s[t - 1] ? starts[t - 1] : i;
    }
  return starts;
}

// The geometry shared by forward and backward.
struct Geometry {
  int64_t b, l, hq, hkv, p, group;
  int64_t qs() const { return hq * p; }   // elements between tokens of q, out
  int64_t ks() const { return hkv * p; }  // elements between tokens of k, v
};

Geometry geometry(const Tensor& q, const Tensor& k) {
  Geometry g{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), 0};
  g.group = g.hq / g.hkv;
  return g;
}

template <class T>
void forward_typed(const Tensor& qt, const Tensor& kt, const Tensor& vt, Tensor& outt, Tensor& lset,
                   const std::vector<int64_t>& starts, T scale) {
  const Geometry g = geometry(qt, kt);
  const int64_t qs = g.qs(), ks = g.ks();
  const T *q = qt.data<T>(), *k = kt.data<T>(), *v = vt.data<T>();
  T *out = outt.data<T>(), *lse = lset.data<T>();
#pragma omp parallel if (double(g.b) * g.hq * g.l * g.l * g.p >= kParallelWork)
  {
    Scratch<T> scores(size_t(std::min(kBlock, g.l) * g.l));
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t bi = 0; bi < g.b; ++bi) {
      for (int64_t h = 0; h < g.hq; ++h) {
        const int64_t kvh = h / g.group;
        const T* qh = q + bi * g.l * qs + h * g.p;
        const T* kh = k + bi * g.l * ks + kvh * g.p;
        const T* vh = v + bi * g.l * ks + kvh * g.p;
        T* oh = out + bi * g.l * qs + h * g.p;
        T* lh = lse + (bi * g.hq + h) * g.l;
        const int64_t* st = starts.data() + bi * g.l;
        for (int64_t i0 = 0; i0 < g.l; i0 += kBlock) {
          // Tile rows i0..i0+m-1 see keys k0..i0+m-1 at most (k0: start of the first row's document).
          const int64_t m = std::min(kBlock, g.l - i0), k0 = st[i0], nk = i0 + m - k0;
          ConstRows<T> Q(qh + i0 * qs, m, g.p, Eigen::OuterStride<>(qs));
          ConstRows<T> K(kh + k0 * ks, nk, g.p, Eigen::OuterStride<>(ks));
          ConstRows<T> V(vh + k0 * ks, nk, g.p, Eigen::OuterStride<>(ks));
          Eigen::Map<RowMat<T>> S(scores.data(), m, nk);
          S.noalias() = Q * K.transpose();
          for (int64_t r = 0; r < m; ++r) {
            const int64_t lo = st[i0 + r] - k0, hi = i0 + r - k0;  // visible keys [lo, hi]
            auto row = S.row(r);
            auto seen = row.segment(lo, hi - lo + 1).array();
            seen *= scale;
            const T mx = seen.maxCoeff();
            seen = (seen - mx).exp();  // Eigen's vectorised exp
            const T sum = seen.sum();
            seen *= T(1) / sum;
            row.head(lo).setZero();
            row.tail(nk - hi - 1).setZero();
            lh[i0 + r] = mx + std::log(sum);
          }
          Rows<T> O(oh + i0 * qs, m, g.p, Eigen::OuterStride<>(qs));
          O.noalias() = S * V;
        }
      }
    }
  }
}

// With P the attention probabilities (recomputed from lse) and D_i = dout_i · out_i:
//   dS = P ∘ (dout·vᵀ − D),  dq = scale·dS·k,  dk = scale·dSᵀ·q,  dv = Pᵀ·dout.
// Each task owns one (batch, kv head) and runs its query heads in order, so the
// GQA sums into dk and dv are race-free and deterministic.
template <class T>
void backward_typed(const Tensor& doutt, const Tensor& qt, const Tensor& kt, const Tensor& vt, const Tensor& outt,
                    const Tensor& lset, Tensor& dqt, Tensor& dkt, Tensor& dvt, const std::vector<int64_t>& starts,
                    T scale) {
  const Geometry g = geometry(qt, kt);
  const int64_t qs = g.qs(), ks = g.ks();
  const T *dout = doutt.data<T>(), *q = qt.data<T>(), *k = kt.data<T>(), *v = vt.data<T>();
  const T *out = outt.data<T>(), *lse = lset.data<T>();
  T *dq = dqt.data<T>(), *dk = dkt.data<T>(), *dv = dvt.data<T>();
#pragma omp parallel if (double(g.b) * g.hq * g.l * g.l * g.p >= kParallelWork)
  {
    const size_t tile = size_t(std::min(kBlock, g.l) * g.l);
    Scratch<T> pbuf(tile), dsbuf(tile);
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t bi = 0; bi < g.b; ++bi) {
      for (int64_t kvh = 0; kvh < g.hkv; ++kvh) {
        const T* kh = k + bi * g.l * ks + kvh * g.p;
        const T* vh = v + bi * g.l * ks + kvh * g.p;
        Rows<T> dK(dk + bi * g.l * ks + kvh * g.p, g.l, g.p, Eigen::OuterStride<>(ks));
        Rows<T> dV(dv + bi * g.l * ks + kvh * g.p, g.l, g.p, Eigen::OuterStride<>(ks));
        dK.setZero();
        dV.setZero();
        const int64_t* st = starts.data() + bi * g.l;
        for (int64_t h = kvh * g.group; h < (kvh + 1) * g.group; ++h) {
          const int64_t off = bi * g.l * qs + h * g.p;
          const T* lh = lse + (bi * g.hq + h) * g.l;
          for (int64_t i0 = 0; i0 < g.l; i0 += kBlock) {
            const int64_t m = std::min(kBlock, g.l - i0), k0 = st[i0], nk = i0 + m - k0;
            const Eigen::OuterStride<> sq(qs), sk(ks);
            ConstRows<T> Q(q + off + i0 * qs, m, g.p, sq), dO(dout + off + i0 * qs, m, g.p, sq);
            ConstRows<T> O(out + off + i0 * qs, m, g.p, sq);
            ConstRows<T> K(kh + k0 * ks, nk, g.p, sk), V(vh + k0 * ks, nk, g.p, sk);
            Eigen::Map<RowMat<T>> P(pbuf.data(), m, nk), dS(dsbuf.data(), m, nk);
            P.noalias() = Q * K.transpose();
            dS.noalias() = dO * V.transpose();
            for (int64_t r = 0; r < m; ++r) {
              const int64_t lo = st[i0 + r] - k0, hi = i0 + r - k0, n = hi - lo + 1;
              const T li = lh[i0 + r], Di = dO.row(r).dot(O.row(r));
              auto p = P.row(r).segment(lo, n).array();
              p = (scale * p - li).exp();
              dS.row(r).segment(lo, n).array() = p * (dS.row(r).segment(lo, n).array() - Di);
              for (auto* M : {&P, &dS}) {
                M->row(r).head(lo).setZero();
                M->row(r).tail(nk - hi - 1).setZero();
              }
            }
            Rows<T> dQ(dq + off + i0 * qs, m, g.p, sq);
            dQ.noalias() = scale * (dS * K);
            dK.middleRows(k0, nk).noalias() += scale * (dS.transpose() * Q);
            dV.middleRows(k0, nk).noalias() += P.transpose() * dO;
          }
        }
      }
    }
  }
}

template <class T>
void append_typed(const Tensor& kt, const Tensor& vt, Tensor& kct, Tensor& vct, Tensor& lens_t) {
  const int64_t b = kt.size(0), row = kt.size(1) * kt.size(2), max_len = kct.size(1);
  const T *k = kt.data<T>(), *v = vt.data<T>();
  T *kc = kct.data<T>(), *vc = vct.data<T>();
  int32_t* lens = lens_t.data<int32_t>();
  for (int64_t bi = 0; bi < b; ++bi) {
    const int64_t dst = (bi * max_len + lens[bi]) * row;
    std::copy(k + bi * row, k + (bi + 1) * row, kc + dst);
    std::copy(v + bi * row, v + (bi + 1) * row, vc + dst);
    lens[bi] += 1;
  }
}

template <class T>
void decode_typed(const Tensor& qt, const Tensor& kct, const Tensor& vct, const Tensor& lens_t, Tensor& outt,
                  T scale) {
  const int64_t b = qt.size(0), hq = qt.size(1), p = qt.size(2);
  const int64_t max_len = kct.size(1), hkv = kct.size(2), group = hq / hkv, ks = hkv * p;
  const T *q = qt.data<T>(), *kc = kct.data<T>(), *vc = vct.data<T>();
  const int32_t* lens = lens_t.data<int32_t>();
  T* out = outt.data<T>();
#pragma omp parallel if (double(b) * hq * max_len * p >= kParallelWork)
  {
    Vec<T> s(max_len);
#pragma omp for collapse(2) schedule(dynamic)
    for (int64_t bi = 0; bi < b; ++bi) {
      for (int64_t h = 0; h < hq; ++h) {
        const int64_t n = lens[bi], base = bi * max_len * ks + (h / group) * p;
        ConstRows<T> K(kc + base, n, p, Eigen::OuterStride<>(ks)), V(vc + base, n, p, Eigen::OuterStride<>(ks));
        Eigen::Map<const Vec<T>> qv(q + (bi * hq + h) * p, p);
        Eigen::Map<Vec<T>> o(out + (bi * hq + h) * p, p);
        auto sn = s.head(n);
        sn.noalias() = scale * (K * qv);
        const T mx = sn.maxCoeff();
        sn = (sn.array() - mx).exp().matrix();
        const T sum = sn.sum();
        o.noalias() = V.transpose() * sn;
        o /= sum;
      }
    }
  }
}

}  // namespace

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, Tensor& lse,
                       const Tensor& seq_idx, double scale) {
  const auto starts = document_starts(seq_idx, q.size(0), q.size(1));
  visit_f32_f64(q.dtype(), "attention_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    forward_typed<T>(q, k, v, out, lse, starts, T(scale));
  });
}

void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& seq_idx, double scale) {
  const auto starts = document_starts(seq_idx, q.size(0), q.size(1));
  visit_f32_f64(q.dtype(), "attention_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    backward_typed<T>(dout, q, k, v, out, lse, dq, dk, dv, starts, T(scale));
  });
}

void kv_cache_append(const Tensor& k, const Tensor& v, Tensor& k_cache, Tensor& v_cache, Tensor& cache_lens) {
  visit_f32_f64(k.dtype(), "kv_cache_append", [&](auto tag) {
    using T = typename decltype(tag)::type;
    append_typed<T>(k, v, k_cache, v_cache, cache_lens);
  });
}

void attention_decode(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& cache_lens,
                      Tensor& out, double scale) {
  visit_f32_f64(q.dtype(), "attention_decode", [&](auto tag) {
    using T = typename decltype(tag)::type;
    decode_typed<T>(q, k_cache, v_cache, cache_lens, out, T(scale));
  });
}

}  // namespace mambatron::cpu
