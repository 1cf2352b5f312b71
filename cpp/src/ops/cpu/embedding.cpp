// Embedding on the CPU. The forward copies rows; the backward is a scatter-add
// made deterministic by a stable counting sort of the positions by token id: each
// row of dweight then sums its positions in position order, on one thread, in
// f64, so the bits do not depend on the thread count.
#include "embedding.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "mambatron/dtype.h"
#include "mambatron/error.h"

namespace mambatron::cpu {

namespace {
// Every id must index a row of the table; the first bad one is reported.
template <class I>
void check_ids(const I* ids, int64_t n, int64_t vocab, const char* op, int64_t l) {
  for (int64_t i = 0; i < n; ++i)
    MT_CHECK(ids[i] >= 0 && int64_t(ids[i]) < vocab, ValueError, op, ": argument 'tokens' holds id ",
             int64_t(ids[i]), " at [", i / l, ", ", i % l, "], expected ids in [0, ", vocab, ") (the rows of 'weight')");
}

// f(ids) with ids an int32_t* or int64_t* by the dtype of `tokens` (checked i32 or i64).
template <class F>
void visit_ids(const Tensor& tokens, F&& f) {
  if (tokens.dtype() == DType::i32) f(tokens.data<int32_t>());
  else f(tokens.data<int64_t>());
}
}  // namespace

void embedding_forward(const Tensor& weight, const Tensor& tokens, Tensor& out) {
  const int64_t vocab = weight.size(0), d = weight.size(1), n = tokens.numel(), l = tokens.size(1);
  visit_ids(tokens, [&](auto ids) {
    check_ids(ids, n, vocab, "embedding_forward", l);
    visit_f32_f64(weight.dtype(), "embedding_forward", [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T* w = weight.data<T>();
      T* o = out.data<T>();
#pragma omp parallel for schedule(static) if (n * d >= (1 << 16))
      for (int64_t i = 0; i < n; ++i) std::memcpy(o + i * d, w + int64_t(ids[i]) * d, sizeof(T) * size_t(d));
    });
  });
}

void embedding_backward(const Tensor& dout, const Tensor& tokens, Tensor& dweight, bool accumulate) {
  const int64_t vocab = dweight.size(0), d = dweight.size(1), n = tokens.numel(), l = tokens.size(1);
  visit_ids(tokens, [&](auto ids) {
    check_ids(ids, n, vocab, "embedding_backward", l);
    // start[v] .. start[v + 1]: the slots of order[] holding the positions of id v, ascending.
    std::vector<int64_t> start(static_cast<size_t>(vocab) + 1, 0), order(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) ++start[size_t(ids[i]) + 1];
    for (int64_t v = 0; v < vocab; ++v) start[v + 1] += start[v];
    std::vector<int64_t> next(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < n; ++i) order[size_t(next[size_t(ids[i])]++)] = i;

    visit_f32_f64(dweight.dtype(), "embedding_backward", [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T* g = dout.data<T>();
      T* dw = dweight.data<T>();
#pragma omp parallel if (vocab * d >= (1 << 16))
      {
        std::vector<double> acc(static_cast<size_t>(d));
#pragma omp for schedule(dynamic, 64)
        for (int64_t v = 0; v < vocab; ++v) {
          T* row = dw + v * d;
          const int64_t b = start[v], e = start[v + 1];
          if (b == e) {
            if (!accumulate) std::memset(row, 0, sizeof(T) * size_t(d));
            continue;
          }
          std::fill(acc.begin(), acc.end(), 0.0);
          for (int64_t k = b; k < e; ++k) {
            const T* src = g + order[k] * d;
            for (int64_t j = 0; j < d; ++j) acc[j] += double(src[j]);
          }
          for (int64_t j = 0; j < d; ++j) row[j] = accumulate ? row[j] + T(acc[j]) : T(acc[j]);
        }
      }
    });
  });
}

}  // namespace mambatron::cpu
