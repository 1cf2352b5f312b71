// Training: schedules against their formulas, the Trainer step against a hand-made
// step from the ops, gradient accumulation, clipping, skipped steps, exact resume,
// and steps drawn from a DataLoader.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "io_testing.h"
#include "mambatron/data.h"
#include "mambatron/ops.h"
#include "mambatron/train.h"
#include "model_testing.h"

namespace mambatron::testing {
namespace {

const double kPi = std::acos(-1.0);

bool bitwise_equal(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() &&
         std::memcmp(a.contiguous().data_ptr(), b.contiguous().data_ptr(), a.nbytes()) == 0;
}

ScheduleOptions schedule(LrSchedule kind, int64_t warmup, int64_t decay, int64_t wsd = 0,
                         WsdDecay style = WsdDecay::linear) {
  ScheduleOptions s;
  s.kind = kind;
  s.max_lr = 6e-4;
  s.min_lr = 6e-5;
  s.warmup_steps = warmup;
  s.decay_steps = decay;
  s.wsd_decay_steps = wsd;
  s.wsd_decay = style;
  return s.validate(), s;
}

TEST(TrainSchedule, WarmupThenCosineFollowsTheFormula) {
  ScheduleOptions s = schedule(LrSchedule::cosine, 100, 1000);
  for (int64_t t = 0; t <= 1200; t += 7) {
    double want;
    if (t <= 100) {
      want = 6e-4 * double(t) / 100.0;
    } else if (t > 1000) {
      want = 6e-5;
    } else {
      double r = double(t - 100) / 900.0;
      want = 6e-5 + (6e-4 - 6e-5) * 0.5 * (1.0 + std::cos(kPi * r));
    }
    EXPECT_NEAR(learning_rate(s, t), want, 1e-15) << "step " << t;
  }
  EXPECT_DOUBLE_EQ(learning_rate(s, 100), 6e-4);     // the end of warmup is the peak
  EXPECT_NEAR(learning_rate(s, 550), 3.3e-4, 1e-15);  // halfway: the mean of max and min
  EXPECT_DOUBLE_EQ(learning_rate(s, 1000), 6e-5);
  EXPECT_DOUBLE_EQ(learning_rate(s, 5000), 6e-5);
  // Monotone after the warmup.
  for (int64_t t = 101; t <= 1000; ++t) EXPECT_LE(learning_rate(s, t), learning_rate(s, t - 1));
  // Without warmup, step 1 starts just below the peak.
  ScheduleOptions nw = schedule(LrSchedule::cosine, 0, 10);
  EXPECT_NEAR(learning_rate(nw, 1), 6e-5 + 5.4e-4 * 0.5 * (1 + std::cos(kPi * 0.1)), 1e-15);
}

TEST(TrainSchedule, WsdHoldsThenDecaysLinearOrCosine) {
  for (WsdDecay style : {WsdDecay::linear, WsdDecay::cosine}) {
    ScheduleOptions s = schedule(LrSchedule::wsd, 10, 200, 50, style);
    for (int64_t t = 0; t <= 260; t += 3) {
      double want;
      if (t <= 10) {
        want = 6e-4 * double(t) / 10.0;
      } else if (t <= 150) {
        want = 6e-4;
      } else if (t > 200) {
        want = 6e-5;
      } else {
        double r = double(t - 150) / 50.0;
        double f = style == WsdDecay::linear ? 1.0 - r : 0.5 * (1.0 + std::cos(kPi * r));
        want = 6e-5 + 5.4e-4 * f;
      }
      EXPECT_NEAR(learning_rate(s, t), want, 1e-15) << wsd_decay_name(style) << " step " << t;
    }
    EXPECT_DOUBLE_EQ(learning_rate(s, 200), 6e-5);
  }
}

TEST(TrainSchedule, ConstantAndErrors) {
  ScheduleOptions c = schedule(LrSchedule::constant, 4, 0);
  EXPECT_DOUBLE_EQ(learning_rate(c, 2), 3e-4);
  EXPECT_DOUBLE_EQ(learning_rate(c, 5), 6e-4);
  EXPECT_DOUBLE_EQ(learning_rate(c, 1000000), 6e-4);
  EXPECT_EQ(lr_schedule_from_string("wsd"), LrSchedule::wsd);
  expect_value_error([] { lr_schedule_from_string("linear"); }, {"linear", "constant, cosine, wsd"});
  expect_value_error([] { schedule(LrSchedule::cosine, 10, 10); }, {"decay_steps", "warmup_steps"});
  expect_value_error([] { schedule(LrSchedule::wsd, 10, 100, 0); }, {"wsd_decay_steps"});
  expect_value_error([] { schedule(LrSchedule::wsd, 60, 100, 50); }, {"after warmup_steps"});
  ScheduleOptions bad = schedule(LrSchedule::constant, 0, 0);
  bad.min_lr = 1.0;
  expect_value_error([&] { bad.validate(); }, {"min_lr"});
  expect_value_error([&] { learning_rate(c, -1); }, {"step"});
}

TrainerOptions options(int64_t grad_accum, double clip) {
  TrainerOptions o;
  o.micro_batch = 2;
  o.grad_accum = grad_accum;
  o.clip = clip;
  o.schedule = schedule(LrSchedule::cosine, 2, 10);
  o.schedule.max_lr = 1e-2;
  return o;
}

// Bitwise comparisons use sublayers whose backward is bitwise repeatable (the Mamba-2
// mixer's gradients can differ in the last bits between identical calls).
const char* const kRepeatable = "m*-";

// Trainer steps equal forward_backward, clip_grad_norm and adamw_update called by hand.
void expect_step_equals_hand(double clip) {
  ModelConfig cfg = tiny_config(kRepeatable);
  Model a(cfg, DType::f64), b(cfg, DType::f64);
  uint64_t seed = fresh_seed();
  a.init(seed);
  b.init(seed);
  TrainerOptions o = options(1, clip);
  Trainer trainer(a, o);
  Tensor m = Tensor::zeros({b.num_parameters()}, DType::f64), v = Tensor::zeros({b.num_parameters()}, DType::f64);
  for (int64_t t = 1; t <= 3; ++t) {
    Tensor tokens = random_tokens(2, 9, cfg.vocab_size);
    StepStats st = trainer.step({tokens});
    double loss = b.forward_backward(tokens);
    std::vector<Tensor> g{b.flat_gradients()};
    double norm = clip > 0 ? clip_grad_norm(g, clip) : grad_norm(g);
    AdamWOptions ao;
    ao.lr = learning_rate(o.schedule, t);
    ao.step = t;
    Tensor p = b.flat_parameters();
    adamw_update(p, b.flat_gradients(), m, v, b.weight_decay_mask(), ao);
    EXPECT_EQ(st.step, t);
    EXPECT_EQ(st.loss, loss);
    EXPECT_EQ(st.grad_norm, norm);
    EXPECT_EQ(st.lr, ao.lr);
    EXPECT_EQ(st.tokens, 2 * 8);
    EXPECT_FALSE(st.skipped);
    EXPECT_TRUE(bitwise_equal(a.flat_parameters(), b.flat_parameters())) << "step " << t;
    EXPECT_TRUE(bitwise_equal(trainer.optimizer().exp_avg(), m));
    EXPECT_TRUE(bitwise_equal(trainer.optimizer().exp_avg_sq(), v));
    if (clip > 0) {
      EXPECT_GT(norm, clip);  // the test is about clipping: the limit must bind
      EXPECT_NEAR(grad_norm(g), clip, 1e-6 * clip);
    }
  }
  EXPECT_EQ(trainer.step_count(), 3);
  EXPECT_EQ(trainer.optimizer().step_count(), 3);
  EXPECT_EQ(trainer.consumed_tokens(), 3 * 16);
}

TEST(TrainStep, EqualsHandComputationWithoutClipping) { expect_step_equals_hand(0.0); }
TEST(TrainStep, EqualsHandComputationWithClipping) { expect_step_equals_hand(1e-3); }

TEST(TrainStep, AccumulatingMicroBatchesEqualsOneBigBatch) {
  ModelConfig cfg = tiny_config("M*m-");
  Model a(cfg, DType::f64), b(cfg, DType::f64);
  uint64_t seed = fresh_seed();
  a.init(seed);
  b.init(seed);
  Trainer ta(a, options(3, 0.5)), tb(b, options(1, 0.5));
  for (int step = 0; step < 2; ++step) {
    Tensor big = random_tokens(6, 11, cfg.vocab_size);
    std::vector<Tensor> micro{big.narrow(0, 0, 2).contiguous(), big.narrow(0, 2, 2).contiguous(),
                              big.narrow(0, 4, 2).contiguous()};
    StepStats sa = ta.step(micro), sb = tb.step({big});
    EXPECT_NEAR(sa.loss, sb.loss, 1e-13 * sb.loss);
    EXPECT_NEAR(sa.grad_norm, sb.grad_norm, 1e-12 * sb.grad_norm);
    EXPECT_EQ(sa.tokens, sb.tokens);
    EXPECT_CLOSE(a.flat_parameters(), b.flat_parameters(), 1e-12);
  }
}

TEST(TrainStep, NonFiniteGradientsSkipTheUpdate) {
  ModelConfig cfg = tiny_config("M-");
  Model a(cfg, DType::f32);
  a.init(fresh_seed());
  Trainer t(a, options(1, 1.0));
  t.step({random_tokens(2, 5, cfg.vocab_size)});
  for (const auto& named : a.parameters()) named.second.data<float>()[0] = std::nanf("");  // norms included
  Tensor before = a.flat_parameters().clone(), m = t.optimizer().exp_avg().clone();
  StepStats st = t.step({random_tokens(2, 5, cfg.vocab_size)});
  EXPECT_TRUE(st.skipped);
  EXPECT_TRUE(std::isnan(st.grad_norm));
  EXPECT_TRUE(bitwise_equal(a.flat_parameters(), before));
  EXPECT_TRUE(bitwise_equal(t.optimizer().exp_avg(), m));
  EXPECT_EQ(t.step_count(), 2);
  EXPECT_EQ(t.optimizer().step_count(), 1);
  EXPECT_EQ(t.skipped_steps(), 1);
}

TEST(TrainStep, RestoredStateContinuesBitwise) {
  ModelConfig cfg = tiny_config(kRepeatable);
  std::vector<Tensor> batches;
  for (int i = 0; i < 6; ++i) batches.push_back(random_tokens(2, 9, cfg.vocab_size));
  uint64_t seed = fresh_seed();
  Model straight(cfg), first(cfg);
  straight.init(seed);
  first.init(seed);
  Trainer ts(straight, options(1, 1.0)), tf(first, options(1, 1.0));
  std::vector<double> losses;
  for (const Tensor& b : batches) losses.push_back(ts.step({b}).loss);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(tf.step({batches[i]}).loss, losses[i]);
  // A new model and trainer, given the parameters, moments and counters.
  Model second(cfg);
  second.load_parameters(first.parameters());
  Trainer t2(second, options(1, 1.0));
  t2.optimizer().load_state(tf.optimizer().exp_avg().clone(), tf.optimizer().exp_avg_sq().clone(),
                            tf.optimizer().step_count());
  t2.set_progress(tf.step_count(), tf.consumed_tokens());
  for (int i = 4; i < 6; ++i) EXPECT_EQ(t2.step({batches[i]}).loss, losses[i]);
  EXPECT_TRUE(bitwise_equal(second.flat_parameters(), straight.flat_parameters()));
  EXPECT_TRUE(bitwise_equal(t2.optimizer().exp_avg_sq(), ts.optimizer().exp_avg_sq()));
  EXPECT_EQ(t2.consumed_tokens(), ts.consumed_tokens());
}

TEST(TrainStep, LoaderStepsEqualExplicitBatchesAndEvaluationRewinds) {
  TempDir dir;
  {
    IndexedDatasetWriter w(dir / "ds", int(TokenCode::u16));
    Tensor u = random_tokens(1, 400, 31);
    for (int d = 0; d < 20; ++d) {
      std::vector<int64_t> doc;
      for (int i = 0; i < 5 + 3 * d; ++i) doc.push_back(1 + u.data<int32_t>()[(d * 17 + i) % 400]);
      w.add_document(doc);
    }
    w.finalize();
  }
  auto ds = std::make_shared<IndexedDataset>(dir / "ds");
  DataLoaderOptions lo;
  lo.seq_len = 8;
  lo.split = DataSplit::train;
  lo.eval_fraction = 0.2;
  DataLoader la(ds, lo), lb(ds, lo);
  ModelConfig cfg = tiny_config(kRepeatable);
  Model a(cfg, DType::f64), b(cfg, DType::f64);
  uint64_t seed = fresh_seed();
  a.init(seed);
  b.init(seed);
  Trainer ta(a, options(2, 1.0)), tb(b, options(2, 1.0));
  for (int step = 0; step < 3; ++step) {
    StepStats sa = ta.step(la);
    auto [t0, s0] = lb.next_batch(2);
    auto [t1, s1] = lb.next_batch(2);
    StepStats sb = tb.step({t0, t1}, {s0.narrow(1, 0, 8), s1});  // either seq_idx width
    EXPECT_EQ(sa.loss, sb.loss);
    EXPECT_EQ(sa.tokens, 2 * 2 * 8);
  }
  EXPECT_TRUE(bitwise_equal(a.flat_parameters(), b.flat_parameters()));
  lo.split = DataSplit::eval;
  lo.shuffle = false;
  DataLoader ev(ds, lo);
  double e1 = ta.evaluate(ev, 2);
  EXPECT_EQ(ta.evaluate(ev, 2), e1);
  ev.set_state({0, 0});
  auto [et0, es0] = ev.next_batch(2);
  auto [et1, es1] = ev.next_batch(2);
  double l0 = a.loss(et0, Tensor(), es0.narrow(1, 0, 8)), l1 = a.loss(et1, Tensor(), es1.narrow(1, 0, 8));
  EXPECT_EQ(e1, (l0 + l1) / 2);
}

}  // namespace
}  // namespace mambatron::testing
