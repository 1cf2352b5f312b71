// Helpers shared by the attention-family tests (test_attention*.cpp, test_rope.cpp).
#pragma once
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "testing.h"

namespace mambatron::testing::attn {

using mambatron::testing::expect_error;

// A new contiguous tensor of `shape` holding `v` (row-major), converted to `dt`.
inline Tensor from_values(const std::vector<double>& v, const Shape& shape, DType dt = DType::f64) {
  Tensor t = Tensor::empty(shape, DType::f64);
  EXPECT_EQ(int64_t(v.size()), t.numel());
  std::copy(v.begin(), v.end(), t.data<double>());
  return t.to(dt);
}

// Random document ids for packed rows: non-decreasing along each row, several
// documents per row (some of a single token), ids not starting at 0.
inline Tensor random_documents(int64_t b, int64_t l) {
  std::mt19937_64 rng(fresh_seed());
  Tensor t = Tensor::empty({b, l}, DType::i32);
  int32_t* s = t.data<int32_t>();
  for (int64_t bi = 0; bi < b; ++bi) {
    int32_t id = int32_t(rng() % 5);
    for (int64_t i = 0; i < l; ++i) {
      if (i > 0 && rng() % 5 == 0) id += 1 + int32_t(rng() % 3);
      s[bi * l + i] = id;
    }
  }
  return t;
}

// Half-open [start, end) token ranges of the documents of row bi.
inline std::vector<std::pair<int64_t, int64_t>> documents_of(const Tensor& seq_idx, int64_t bi) {
  const int64_t l = seq_idx.size(1);
  const int32_t* s = seq_idx.data<int32_t>() + bi * l;
  std::vector<std::pair<int64_t, int64_t>> docs;
  for (int64_t i = 0; i < l; ++i)
    if (i == 0 || s[i] != s[i - 1]) docs.push_back({i, i + 1});
    else docs.back().second = i + 1;
  return docs;
}

// Contiguous copy of row bi, tokens [s, e) along dim `dim` (1 for [b, l, ...], 2 for lse).
inline Tensor part(const Tensor& t, int64_t bi, int64_t s, int64_t e, int dim = 1) {
  return t.narrow(0, bi, 1).narrow(dim, s, e - s).clone();
}

// max |a − b| and max |t|: for parts of a tensor that may be exactly zero (the dq and
// dk of a one-token document), compared against the scale of the whole tensor.
inline double max_abs_error(const Tensor& a, const Tensor& b) {
  auto va = values(a), vb = values(b);
  EXPECT_EQ(va.size(), vb.size());
  double err = 0;
  for (size_t i = 0; i < va.size(); ++i) err = std::max(err, std::isnan(va[i] - vb[i]) ? INFINITY : std::fabs(va[i] - vb[i]));
  return err;
}
inline double max_abs(const Tensor& t) {
  double m = 0;
  for (double v : values(t)) m = std::max(m, std::fabs(v));
  return m;
}

// Attention the way a bf16 framework computes it, the yardstick of the flash-attention
// rule ("the same computation done in bf16"): f64 arithmetic on the given values, with
// every tensor such a framework stores rounded to bf16 — the scaled scores S, the
// probabilities P and the output; in the backward dP, dS, each query head's dq, dk, dv,
// and the kv heads' sums over their groups. Causal, grouped-query, no documents.
// An engine that keeps P and dS in bf16 for its tensor-core products (as cuDNN's does)
// is held to this; lse is log Σ exp of the bf16 S, in f64.
struct Bf16Attention {
  Tensor out, lse, dq, dk, dv;  // f64
};
inline double round_bf16(double x) {
  float f = float(x);
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
  std::memcpy(&f, &u, 4);
  return f;
}
inline Bf16Attention bf16_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& dout,
                                    double scale) {
  const int64_t b = q.size(0), l = q.size(1), hq = q.size(2), hkv = k.size(2), p = q.size(3), g = hq / hkv;
  const std::vector<double> Q = values(q), K = values(k), V = values(v), dO = values(dout);
  std::vector<double> O(Q.size()), L(size_t(b * hq * l)), dQ(Q.size()), dK(K.size()), dV(V.size());
  std::vector<double> dKh(K.size() * g), dVh(V.size() * g);  // per query head, then summed per group
  std::vector<double> P(size_t(l * l)), dS(size_t(l * l));
  auto qi = [&](int64_t bi, int64_t i, int64_t h) { return ((bi * l + i) * hq + h) * p; };
  auto ki = [&](int64_t bi, int64_t j, int64_t h) { return ((bi * l + j) * hkv + h) * p; };
  for (int64_t bi = 0; bi < b; ++bi)
    for (int64_t h = 0; h < hq; ++h) {
      const int64_t kh = h / g;
      for (int64_t i = 0; i < l; ++i) {
        double mx = -INFINITY;
        for (int64_t j = 0; j <= i; ++j) {
          double s = 0;
          for (int64_t c = 0; c < p; ++c) s += Q[qi(bi, i, h) + c] * K[ki(bi, j, kh) + c];
          P[i * l + j] = round_bf16(s * scale);
          mx = std::max(mx, P[i * l + j]);
        }
        double sum = 0;
        for (int64_t j = 0; j <= i; ++j) sum += std::exp(P[i * l + j] - mx);
        L[(bi * hq + h) * l + i] = mx + std::log(sum);
        for (int64_t j = 0; j <= i; ++j) P[i * l + j] = round_bf16(std::exp(P[i * l + j] - mx) / sum);
        for (int64_t c = 0; c < p; ++c) {
          double o = 0;
          for (int64_t j = 0; j <= i; ++j) o += P[i * l + j] * V[ki(bi, j, kh) + c];
          O[qi(bi, i, h) + c] = round_bf16(o);
        }
        double D = 0;
        for (int64_t j = 0; j <= i; ++j) {
          double dp = 0;
          for (int64_t c = 0; c < p; ++c) dp += dO[qi(bi, i, h) + c] * V[ki(bi, j, kh) + c];
          dS[i * l + j] = round_bf16(dp);
          D += P[i * l + j] * dS[i * l + j];
        }
        for (int64_t j = 0; j <= i; ++j) dS[i * l + j] = round_bf16(P[i * l + j] * (dS[i * l + j] - D));
        for (int64_t c = 0; c < p; ++c) {
          double d = 0;
          for (int64_t j = 0; j <= i; ++j) d += dS[i * l + j] * K[ki(bi, j, kh) + c];
          dQ[qi(bi, i, h) + c] = round_bf16(d * scale);
        }
      }
      for (int64_t j = 0; j < l; ++j)
        for (int64_t c = 0; c < p; ++c) {
          double dk = 0, dv = 0;
          for (int64_t i = j; i < l; ++i) {
            dk += dS[i * l + j] * Q[qi(bi, i, h) + c];
            dv += P[i * l + j] * dO[qi(bi, i, h) + c];
          }
          const size_t at = size_t(ki(bi, j, kh) + c) * g + size_t(h % g);
          dKh[at] = round_bf16(dk * scale);
          dVh[at] = round_bf16(dv);
        }
    }
  for (size_t e = 0; e < dK.size(); ++e) {
    double sk = 0, sv = 0;
    for (int64_t m = 0; m < g; ++m) sk += dKh[e * g + m], sv += dVh[e * g + m];
    dK[e] = round_bf16(sk);
    dV[e] = round_bf16(sv);
  }
  return {from_values(O, q.shape()), from_values(L, {b, hq, l}), from_values(dQ, q.shape()),
          from_values(dK, k.shape()), from_values(dV, v.shape())};
}

// A tensor labelled cuda:0 over host memory: only for argument checks, which throw
// before any data is touched.
inline Tensor fake_cuda(const Tensor& like) {
  auto owner = std::make_shared<Tensor>(like);
  return Tensor::from_blob(like.data_ptr(), like.shape(), like.strides(), like.dtype(), Device::cuda(0), owner);
}

// f() must throw E with a message containing every one of `needles`.
}  // namespace mambatron::testing::attn
