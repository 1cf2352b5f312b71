// SSD argument checks: every op rejects wrong shapes, dtypes, layouts, devices and
// options with a message that names the op, the argument and what was expected.
#include <functional>
#include <string>

#include "ssd_testing.h"

namespace mt = mambatron;
using mt::DType;
using mt::Tensor;
using namespace mt::testing;
using namespace mt::testing::ssd;

namespace {

enum class Kind { Value, Type };

struct Case {
  const char* what;
  Kind kind;
  std::vector<std::string> parts;  // substrings the message must contain
};

void expect_error(const std::function<void()>& call, const Case& c) {
  try {
    call();
    ADD_FAILURE() << c.what << ": no exception";
  } catch (const mt::ValueError& e) {
    EXPECT_EQ(c.kind, Kind::Value) << c.what << ": got ValueError " << e.what();
    for (const auto& s : c.parts) EXPECT_NE(std::string(e.what()).find(s), std::string::npos) << c.what << ": " << e.what();
  } catch (const mt::TypeError& e) {
    EXPECT_EQ(c.kind, Kind::Type) << c.what << ": got TypeError " << e.what();
    for (const auto& s : c.parts) EXPECT_NE(std::string(e.what()).find(s), std::string::npos) << c.what << ": " << e.what();
  }
}

// A view of a CPU tensor's memory labelled as CUDA memory: enough for the device
// checks, which throw before any data is read.
Tensor fake_cuda(const Tensor& t) {
  if (!t.defined()) return t;
  return Tensor::from_blob(t.data_ptr(), t.shape(), t.strides(), t.dtype(), mt::Device::cuda(0), t.storage());
}

const Sizes kSizes{2, 5, 4, 3, 2, 6};

// A valid forward call; each case breaks one thing.
struct Forward {
  Inputs in = random_inputs(kSizes);
  Tensor y = poisoned({2, 5, 4, 3}), final_state = poisoned({2, 4, 3, 6});
  mt::SsdOptions opt = options(0);
  Forward() { in.seq_idx = seq_idx_from_lengths({{2, 3}, {5}}, 5); }
  void run() {
    mt::ssd_forward(in.x, in.dt, in.A, in.B, in.C, in.D, in.dt_bias, in.initial_state, in.seq_idx, y, final_state,
                    opt);
  }
};

}  // namespace

TEST(SsdChecks, ValidCallsSucceed) {
  Forward f;
  EXPECT_NO_THROW(f.run());
  Gradients g;
  EXPECT_NO_THROW(g = backward(f.in, randn(f.y.shape()), Tensor(), f.opt));
}

TEST(SsdChecks, ForwardRejectsBadArguments) {
  std::vector<std::pair<Case, std::function<void(Forward&)>>> cases = {
      {{"x 3-D", Kind::Value, {"ssd_forward", "'x'", "[b, l, h, p]"}}, [](Forward& f) { f.in.x = randn({2, 5, 4}); }},
      {{"x bf16", Kind::Type, {"'x'", "f32 or f64"}}, [](Forward& f) { f.in.x = f.in.x.to(DType::bf16); }},
      {{"dt shape", Kind::Value, {"'dt'", "[2, 5, 4]"}}, [](Forward& f) { f.in.dt = randn({2, 5, 3}); }},
      {{"dt dtype", Kind::Type, {"'dt'", "f64"}}, [](Forward& f) { f.in.dt = f.in.dt.to(DType::f32); }},
      {{"dt undefined", Kind::Value, {"'dt'", "undefined"}}, [](Forward& f) { f.in.dt = Tensor(); }},
      {{"A shape", Kind::Value, {"'A'", "[4]"}}, [](Forward& f) { f.in.A = randn({3}); }},
      {{"B groups", Kind::Value, {"'B'", "divide"}}, [](Forward& f) { f.in.B = randn({2, 5, 3, 6}); }},
      {{"B 3-D", Kind::Value, {"'B'", "[b, l, g, n]"}}, [](Forward& f) { f.in.B = randn({2, 5, 6}); }},
      {{"B strided", Kind::Value, {"'B'", "contiguous"}},
       [](Forward& f) { f.in.B = randn({2, 5, 6, 2}).transpose(2, 3); }},
      {{"C shape", Kind::Value, {"'C'", "[2, 5, 2, 6]"}}, [](Forward& f) { f.in.C = randn({2, 5, 2, 7}); }},
      {{"D shape", Kind::Value, {"'D'", "[4]"}}, [](Forward& f) { f.in.D = randn({5}); }},
      {{"dt_bias shape", Kind::Value, {"'dt_bias'", "[4]"}}, [](Forward& f) { f.in.dt_bias = randn({1}); }},
      {{"initial_state shape", Kind::Value, {"'initial_state'", "[2, 4, 3, 6]"}},
       [](Forward& f) { f.in.initial_state = randn({2, 4, 3, 5}); }},
      {{"seq_idx dtype", Kind::Type, {"'seq_idx'", "i32"}}, [](Forward& f) { f.in.seq_idx = randn({2, 5}); }},
      {{"seq_idx shape", Kind::Value, {"'seq_idx'", "[2, 5]"}},
       [](Forward& f) { f.in.seq_idx = Tensor::zeros({2, 4}, DType::i32); }},
      {{"seq_idx decreasing", Kind::Value, {"'seq_idx'", "non-decreasing"}},
       [](Forward& f) { f.in.seq_idx.data<int32_t>()[7] = -1; }},
      {{"y shape", Kind::Value, {"'y'", "[2, 5, 4, 3]"}}, [](Forward& f) { f.y = poisoned({2, 5, 4, 2}); }},
      {{"y dtype", Kind::Type, {"'y'", "f64"}}, [](Forward& f) { f.y = poisoned({2, 5, 4, 3}, DType::f32); }},
      {{"final_state shape", Kind::Value, {"'final_state'", "[2, 4, 3, 6]"}},
       [](Forward& f) { f.final_state = poisoned({2, 4, 6, 3}); }},
      {{"chunk_size", Kind::Value, {"chunk_size", "-1"}}, [](Forward& f) { f.opt.chunk_size = -1; }},
      {{"dt_min negative", Kind::Value, {"dt_min"}}, [](Forward& f) { f.opt.dt_min = -0.1; }},
      {{"dt_min above dt_max", Kind::Value, {"dt_min", "dt_max"}},
       [](Forward& f) { f.opt.dt_min = 0.5, f.opt.dt_max = 0.1; }},
      {{"dt on another device", Kind::Type, {"'dt'", "cuda:0"}}, [](Forward& f) { f.in.dt = fake_cuda(f.in.dt); }},
      {{"all on CUDA in f64", Kind::Type, {"ssd_forward", "'x'", "bf16 or f32 on CUDA"}},
       [](Forward& f) {
         for (Tensor* t : {&f.in.x, &f.in.dt, &f.in.A, &f.in.B, &f.in.C, &f.in.D, &f.in.dt_bias, &f.in.initial_state,
                           &f.in.seq_idx, &f.y, &f.final_state})
           *t = fake_cuda(*t);
       }},
  };
  for (auto& [c, mutate] : cases) {
    Forward f;
    mutate(f);
    expect_error([&] { f.run(); }, c);
  }
}

TEST(SsdChecks, BackwardRejectsBadArguments) {
  struct Backward {
    Forward f;
    Tensor dy = randn({2, 5, 4, 3}), d_final_state = randn({2, 4, 3, 6});
    Gradients g{poisoned({2, 5, 4, 3}), poisoned({2, 5, 4}), poisoned({4}),      poisoned({2, 5, 2, 6}),
                poisoned({2, 5, 2, 6}), poisoned({4}),       poisoned({4}),      poisoned({2, 4, 3, 6})};
    void run() {
      const Inputs& in = f.in;
      mt::ssd_backward(dy, d_final_state, in.x, in.dt, in.A, in.B, in.C, in.D, in.dt_bias, in.initial_state,
                       in.seq_idx, g.dx, g.ddt, g.dA, g.dB, g.dC, g.dD, g.ddt_bias, g.d_initial_state, f.opt);
    }
  };
  {
    Backward ok;
    EXPECT_NO_THROW(ok.run());
  }
  std::vector<std::pair<Case, std::function<void(Backward&)>>> cases = {
      {{"dy shape", Kind::Value, {"ssd_backward", "'dy'", "[2, 5, 4, 3]"}}, [](Backward& b) { b.dy = randn({2, 5, 4}); }},
      {{"d_final_state shape", Kind::Value, {"'d_final_state'", "[2, 4, 3, 6]"}},
       [](Backward& b) { b.d_final_state = randn({2, 4, 3}); }},
      {{"dx shape", Kind::Value, {"'dx'", "[2, 5, 4, 3]"}}, [](Backward& b) { b.g.dx = poisoned({2, 5, 4, 4}); }},
      {{"ddt shape", Kind::Value, {"'ddt'", "[2, 5, 4]"}}, [](Backward& b) { b.g.ddt = poisoned({2, 5}); }},
      {{"dA shape", Kind::Value, {"'dA'", "[4]"}}, [](Backward& b) { b.g.dA = poisoned({1, 4}); }},
      {{"dB shape", Kind::Value, {"'dB'", "[2, 5, 2, 6]"}}, [](Backward& b) { b.g.dB = poisoned({2, 5, 4, 6}); }},
      {{"dB dtype", Kind::Type, {"'dB'", "f64"}}, [](Backward& b) { b.g.dB = poisoned({2, 5, 2, 6}, DType::f32); }},
      {{"dC shape", Kind::Value, {"'dC'", "[2, 5, 2, 6]"}}, [](Backward& b) { b.g.dC = poisoned({2, 5, 2, 5}); }},
      {{"dD shape", Kind::Value, {"'dD'", "[4]"}}, [](Backward& b) { b.g.dD = poisoned({2}); }},
      {{"ddt_bias shape", Kind::Value, {"'ddt_bias'", "[4]"}}, [](Backward& b) { b.g.ddt_bias = poisoned({4, 1}); }},
      {{"d_initial_state shape", Kind::Value, {"'d_initial_state'", "[2, 4, 3, 6]"}},
       [](Backward& b) { b.g.d_initial_state = poisoned({2, 4, 3}); }},
      {{"x dtype", Kind::Type, {"'x'", "f32 or f64"}}, [](Backward& b) { b.f.in.x = b.f.in.x.to(DType::f16); }},
      {{"seq_idx decreasing", Kind::Value, {"'seq_idx'"}}, [](Backward& b) { b.f.in.seq_idx.data<int32_t>()[1] = -5; }},
      {{"dy on another device", Kind::Type, {"'dy'", "cuda:0"}}, [](Backward& b) { b.dy = fake_cuda(b.dy); }},
      {{"all on CUDA in f64", Kind::Type, {"ssd_backward", "'x'", "bf16 or f32 on CUDA"}},
       [](Backward& b) {
         Inputs& in = b.f.in;
         for (Tensor* t : {&in.x, &in.dt, &in.A, &in.B, &in.C, &in.D, &in.dt_bias, &in.initial_state, &in.seq_idx,
                           &b.dy, &b.d_final_state, &b.g.dx, &b.g.ddt, &b.g.dA, &b.g.dB, &b.g.dC, &b.g.dD,
                           &b.g.ddt_bias, &b.g.d_initial_state})
           *t = fake_cuda(*t);
       }},
  };
  for (auto& [c, mutate] : cases) {
    Backward b;
    mutate(b);
    expect_error([&] { b.run(); }, c);
  }
}

TEST(SsdChecks, StepRejectsBadArguments) {
  struct Step {
    Tensor x = randn({2, 4, 3}), dt = randn({2, 4}), A = uniform({4}, -2, -1), B = randn({2, 2, 6}),
           C = randn({2, 2, 6}), D = randn({4}), dt_bias = randn({4}), state = randn({2, 4, 3, 6}),
           y = poisoned({2, 4, 3});
    mt::SsdOptions opt = options(0);
    void run() { mt::ssd_step(x, dt, A, B, C, D, dt_bias, state, y, opt); }
  };
  {
    Step ok;
    EXPECT_NO_THROW(ok.run());
  }
  std::vector<std::pair<Case, std::function<void(Step&)>>> cases = {
      {{"x 4-D", Kind::Value, {"ssd_step", "'x'", "[b, h, p]"}}, [](Step& s) { s.x = randn({2, 1, 4, 3}); }},
      {{"x i32", Kind::Type, {"'x'", "f32 or f64"}}, [](Step& s) { s.x = Tensor::zeros({2, 4, 3}, DType::i32); }},
      {{"dt shape", Kind::Value, {"'dt'", "[2, 4]"}}, [](Step& s) { s.dt = randn({2, 4, 1}); }},
      {{"A shape", Kind::Value, {"'A'", "[4]"}}, [](Step& s) { s.A = randn({2}); }},
      {{"B groups", Kind::Value, {"'B'", "divide"}}, [](Step& s) { s.B = randn({2, 3, 6}); }},
      {{"B 4-D", Kind::Value, {"'B'", "[b, g, n]"}}, [](Step& s) { s.B = randn({2, 1, 2, 6}); }},
      {{"C shape", Kind::Value, {"'C'", "[2, 2, 6]"}}, [](Step& s) { s.C = randn({2, 2, 5}); }},
      {{"D shape", Kind::Value, {"'D'", "[4]"}}, [](Step& s) { s.D = randn({3}); }},
      {{"dt_bias dtype", Kind::Type, {"'dt_bias'", "f64"}}, [](Step& s) { s.dt_bias = s.dt_bias.to(DType::f32); }},
      {{"state shape", Kind::Value, {"'state'", "[2, 4, 3, 6]"}}, [](Step& s) { s.state = randn({2, 4, 6, 3}); }},
      {{"state strided", Kind::Value, {"'state'", "contiguous"}},
       [](Step& s) { s.state = randn({2, 4, 6, 3}).transpose(2, 3); }},
      {{"y shape", Kind::Value, {"'y'", "[2, 4, 3]"}}, [](Step& s) { s.y = poisoned({4, 3}); }},
      {{"dt_max", Kind::Value, {"dt_max"}}, [](Step& s) { s.opt.dt_max = -1.0; }},
      {{"state on another device", Kind::Type, {"'state'", "cuda:0"}}, [](Step& s) { s.state = fake_cuda(s.state); }},
      {{"all on CUDA in f64", Kind::Type, {"ssd_step", "'x'", "bf16 or f32 on CUDA"}},
       [](Step& s) {
         for (Tensor* t : {&s.x, &s.dt, &s.A, &s.B, &s.C, &s.D, &s.dt_bias, &s.state, &s.y}) *t = fake_cuda(*t);
       }},
  };
  for (auto& [c, mutate] : cases) {
    Step s;
    mutate(s);
    expect_error([&] { s.run(); }, c);
  }
}
