// Embedding: the lookup against a naive loop, the scatter-add against finite
// differences and a naive loop, fp32 against fp64, determinism across thread
// counts, and the argument and id checks.
#include <random>

#include "dense_testing.h"

namespace mt = mambatron;
using mt::DType;
using mt::Shape;
using mt::Tensor;
using namespace mt::testing;
using namespace mt::testing::dense;

namespace {
// Random ids in [lo, hi) as i32 or i64, with position 1 repeating position 0's id
// so that every draw has a repeated token.
Tensor random_tokens(int64_t b, int64_t l, int64_t lo, int64_t hi, DType dt) {
  std::mt19937_64 rng(fresh_seed());
  std::uniform_int_distribution<int64_t> pick(lo, hi - 1);
  Tensor t = Tensor::empty({b, l}, DType::i64);
  int64_t* p = t.data<int64_t>();
  for (int64_t i = 0; i < b * l; ++i) p[i] = pick(rng);
  if (b * l > 1) p[1] = p[0];
  return t.to(dt);
}

Tensor lookup(const Tensor& weight, const Tensor& tokens) {
  Tensor out = poisoned({tokens.size(0), tokens.size(1), weight.size(1)}, weight.dtype());
  mt::embedding_forward(weight, tokens, out);
  return out;
}
Tensor scatter(const Tensor& dout, const Tensor& tokens, int64_t vocab) {
  Tensor dw = poisoned({vocab, dout.size(2)}, dout.dtype());
  mt::embedding_backward(dout, tokens, dw);
  return dw;
}
}  // namespace

TEST(Embedding, ForwardMatchesNaiveLoop) {
  const int64_t V = 41, d = 37, b = 2, l = 13;
  for (DType id_type : {DType::i32, DType::i64}) {
    Tensor w = randn({V, d}), tokens = random_tokens(b, l, 0, V, id_type);
    auto wv = values(w), ids = values(tokens);
    std::vector<double> ref(size_t(b * l * d));
    for (int64_t i = 0; i < b * l; ++i)
      for (int64_t j = 0; j < d; ++j) ref[i * d + j] = wv[int64_t(ids[i]) * d + j];
    EXPECT_EQ(rel_error(lookup(w, tokens), ref), 0.0);
  }
}

TEST(Embedding, BackwardMatchesNaiveLoopAndFiniteDifferences) {
  const int64_t V = 41, d = 37, b = 2, l = 13;
  for (DType id_type : {DType::i32, DType::i64}) {
    Tensor w = randn({V, d}), tokens = random_tokens(b, l, 0, V, id_type), g = randn({b, l, d});
    Tensor dw = scatter(g, tokens, V);
    auto gv = values(g), ids = values(tokens);
    std::vector<double> ref(size_t(V * d), 0.0);  // rows no token names stay 0
    for (int64_t i = 0; i < b * l; ++i)
      for (int64_t j = 0; j < d; ++j) ref[int64_t(ids[i]) * d + j] += gv[i * d + j];
    EXPECT_LE(rel_error(dw, ref), 1e-15);
    expect_gradient([&] { return dot(g, lookup(w, tokens)); }, w, dw, "weight", 1e-6, 400);
  }
}

// Accumulating adds each named row's sum like a separate add and leaves other rows alone.
TEST(Embedding, BackwardAccumulatesIntoNamedRowsOnly) {
  const int64_t V = 41, d = 9, b = 2, l = 5;  // 10 positions: most rows are not named
  for (DType dt : {DType::f32, DType::f64}) {
    Tensor tokens = random_tokens(b, l, 0, V, DType::i64), g = randn({b, l, d}, dt), start = randn({V, d}, dt);
    Tensor fresh = Tensor::empty({V, d}, dt);
    mt::embedding_backward(g, tokens, fresh);
    Tensor expected = Tensor::empty({V, d}, dt);
    mt::add(start, fresh, expected);
    Tensor acc = start.clone();
    mt::embedding_backward(g, tokens, acc, true);
    EXPECT_TRUE(same_bits(acc, expected)) << mt::dtype_name(dt);
  }
}

TEST(Embedding, Float32MatchesFloat64) {
  const int64_t V = 23, d = 37, b = 3, l = 29;  // 87 tokens over 23 ids: many repeats
  Tensor tokens = random_tokens(b, l, 0, V, DType::i64);
  Tensor w32 = randn({V, d}, DType::f32), g32 = randn({b, l, d}, DType::f32);
  EXPECT_CLOSE(lookup(w32, tokens), lookup(w32.to(DType::f64), tokens), 0.0);
  EXPECT_CLOSE(scatter(g32, tokens, V), scatter(g32.to(DType::f64), tokens, V), 1e-5);
}

// Each row of dweight adds its positions in position order whatever the threads.
TEST(Embedding, BackwardBitsDoNotDependOnThreadCount) {
  const int64_t V = 300, d = 257, b = 4, l = 301;
  Tensor tokens = random_tokens(b, l, 0, 20, DType::i32);  // ~60 repeats per used id
  for (DType dt : {DType::f32, DType::f64}) {
    Tensor g = randn({b, l, d}, dt);
    Tensor one, many;
    with_threads(1, [&] { one = scatter(g, tokens, V); });
    with_threads(3, [&] { many = scatter(g, tokens, V); });
    EXPECT_TRUE(same_bits(one, many)) << mt::dtype_name(dt);
  }
}

TEST(Embedding, RejectsIdsOutOfRange) {
  const int64_t V = 11, d = 5;
  Tensor w = randn({V, d});
  for (DType id_type : {DType::i32, DType::i64}) {
    for (int64_t bad : {V, int64_t(-1)}) {
      Tensor tokens = random_tokens(2, 7, 0, V, DType::i64);
      tokens.data<int64_t>()[7 + 3] = bad;  // position [1, 3]
      tokens = tokens.to(id_type);
      std::string id = "id " + std::to_string(bad);
      Tensor out = poisoned({2, 7, d});
      expect_error<mt::ValueError>([&] { mt::embedding_forward(w, tokens, out); },
                                   {"embedding_forward", "'tokens'", id, "[1, 3]", "[0, 11)"});
      Tensor dw = poisoned({V, d});
      expect_error<mt::ValueError>([&] { mt::embedding_backward(randn({2, 7, d}), tokens, dw); },
                                   {"embedding_backward", "'tokens'", id, "[1, 3]", "[0, 11)"});
    }
  }
}

TEST(Embedding, RejectsBadArguments) {
  const int64_t V = 11, d = 5;
  Tensor w = randn({V, d}), tokens = random_tokens(2, 7, 0, V, DType::i64), out = poisoned({2, 7, d});
  Tensor g = randn({2, 7, d}), dw = poisoned({V, d});
  // forward
  expect_error<mt::ValueError>([&] { mt::embedding_forward(randn({V * d}), tokens, out); },
                               {"'weight'", "[55]", "[V, d]"});
  expect_error<mt::TypeError>([&] { mt::embedding_forward(Tensor::zeros({V, d}, DType::i32), tokens, out); },
                              {"'weight'", "i32"});
  expect_error<mt::TypeError>([&] { mt::embedding_forward(w, tokens.to(DType::f64), out); }, {"'tokens'", "f64"});
  expect_error<mt::ValueError>([&] { mt::embedding_forward(w, tokens.view({14}), out); }, {"'tokens'", "[b, l]"});
  expect_error<mt::ValueError>([&] { Tensor o = poisoned({2, 7, d + 1}); mt::embedding_forward(w, tokens, o); },
                               {"'out'", "expected [2, 7, 5]"});
  expect_error<mt::TypeError>([&] { Tensor o = poisoned({2, 7, d}, DType::f32); mt::embedding_forward(w, tokens, o); },
                              {"'out'", "f32"});
  expect_error<mt::ValueError>([&] { mt::embedding_forward(w, tokens.transpose(0, 1).contiguous().transpose(0, 1), out); },
                               {"'tokens'", "contiguous"});
  expect_error<mt::TypeError>([&] { mt::embedding_forward(w, fake_cuda(tokens), out); }, {"'tokens'", "cuda"});
  expect_error<mt::TypeError>([&] { Tensor o = fake_cuda(out); mt::embedding_forward(fake_cuda(w), fake_cuda(tokens), o); },
                              {"embedding_forward", "on CUDA"});
  // backward
  expect_error<mt::ValueError>([&] { mt::embedding_backward(randn({14, d}), tokens, dw); }, {"'dout'", "[b, l, d]"});
  expect_error<mt::ValueError>([&] { mt::embedding_backward(randn({2, 6, d}), tokens, dw); },
                               {"'tokens'", "expected [2, 6]"});
  expect_error<mt::ValueError>([&] { Tensor o = poisoned({V, d + 1}); mt::embedding_backward(g, tokens, o); },
                               {"'dweight'", "[V, 5]"});
  expect_error<mt::TypeError>([&] { Tensor o = poisoned({V, d}, DType::f32); mt::embedding_backward(g, tokens, o); },
                              {"'dweight'", "f32"});
  expect_error<mt::ValueError>([&] { Tensor o; mt::embedding_backward(g, tokens, o); }, {"'dweight'", "undefined"});
  expect_error<mt::TypeError>([&] { Tensor o = fake_cuda(dw); mt::embedding_backward(g, tokens, o); }, {"'dweight'", "cuda"});
  expect_error<mt::TypeError>([&] { Tensor o = fake_cuda(dw); mt::embedding_backward(fake_cuda(g), fake_cuda(tokens), o); },
                              {"embedding_backward", "on CUDA"});
}

// An empty batch names no row: the gradient is all zeros.
TEST(Embedding, EmptyBatchGivesZeroGradient) {
  Tensor tokens = Tensor::empty({2, 0}, DType::i64), dw = poisoned({7, 3});
  mt::embedding_backward(randn({2, 0, 3}), tokens, dw);
  for (double v : values(dw)) EXPECT_EQ(v, 0.0);
  Tensor out = poisoned({2, 0, 3});
  mt::embedding_forward(randn({7, 3}), tokens, out);
  EXPECT_EQ(out.numel(), 0);
}
