// Helpers shared by the attention-family tests (test_attention*.cpp, test_rope.cpp).
#pragma once
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

// A tensor labelled cuda:0 over host memory: only for argument checks, which throw
// before any data is touched.
inline Tensor fake_cuda(const Tensor& like) {
  auto owner = std::make_shared<Tensor>(like);
  return Tensor::from_blob(like.data_ptr(), like.shape(), like.strides(), like.dtype(), Device::cuda(0), owner);
}

// f() must throw E with a message containing every one of `needles`.
}  // namespace mambatron::testing::attn
