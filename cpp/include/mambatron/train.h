// Training (MODELS.md §3): learning-rate schedules, AdamW over the model's flat
// buffers, and the Trainer step (micro-batches with gradient accumulation, global-norm
// clipping, the scheduled LR, one fused AdamW update). Everything is deterministic:
// the same model, data order and options give bitwise-identical steps, and a trainer
// whose state (optimizer moments, step counts) is restored continues exactly.
// Checkpoint folders are written by Python (mambatron.train_checkpoint).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "mambatron/data.h"
#include "mambatron/model.h"
#include "mambatron/tensor.h"

namespace mambatron {

// ---------------------------------------------------------------- LR schedules
enum class LrSchedule { constant, cosine, wsd };
enum class WsdDecay { linear, cosine };
// "constant" / "cosine" / "wsd" and "linear" / "cosine"; ValueError otherwise.
LrSchedule lr_schedule_from_string(const std::string& s);
WsdDecay wsd_decay_from_string(const std::string& s);
const char* lr_schedule_name(LrSchedule s);
const char* wsd_decay_name(WsdDecay d);

// `step` is the 1-based number of the optimizer step the LR is for (step 0, before any
// update, is allowed). With W = warmup_steps, D = decay_steps:
//   step <= W (W > 0):  lr = max_lr · step / W                          (linear warmup)
//   constant:           lr = max_lr
//   cosine:             step > D: min_lr; else with r = (step − W) / (D − W)
//                       lr = min_lr + (max_lr − min_lr) · ½ (1 + cos(π r))
//   wsd:                warmup, then max_lr until S = D − wsd_decay_steps, then a decay
//                       phase to min_lr at D (min_lr after it); with r = (step − S) /
//                       wsd_decay_steps the factor is 1 − r (linear) or ½ (1 + cos(π r))
//                       (cosine): lr = min_lr + (max_lr − min_lr) · factor.
// D is usually the run's total step count.
struct ScheduleOptions {
  LrSchedule kind = LrSchedule::cosine;
  double max_lr = 3e-4;
  double min_lr = 3e-5;
  int64_t warmup_steps = 0;
  int64_t decay_steps = 1000;
  int64_t wsd_decay_steps = 0;  // wsd: length of the final decay phase
  WsdDecay wsd_decay = WsdDecay::linear;

  // ValueError naming the field for negative steps or rates, min_lr > max_lr, a cosine
  // decay that does not end after the warmup (D <= W), or a WSD decay phase that is
  // empty or starts inside the warmup (wsd_decay_steps < 1 or D − wsd_decay_steps < W).
  const ScheduleOptions& validate() const;
};
double learning_rate(const ScheduleOptions& schedule, int64_t step);

// ---------------------------------------------------------------- AdamW
struct AdamWHyper {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double weight_decay = 0.1;  // only where the decay mask is set (matrices)
};

// AdamW over one flat parameter buffer and its gradient buffer (views, not copies:
// the optimizer updates the model's parameters in place). The moments m and v have the
// parameters' dtype and device (f32 for training; f64 in tests) and start at zero.
// params_copy (optional, laid out like params): a working copy in another dtype
// (the model's bf16 weights on CUDA), rewritten by every step in the same pass.
class AdamW {
 public:
  AdamW(Tensor params, Tensor grads, Tensor decay_mask, const AdamWHyper& hyper = {}, Tensor params_copy = Tensor());
  // One update with learning rate lr: the step count is incremented first, so the
  // first update has bias correction t = 1.
  void step(double lr);

  const AdamWHyper& hyper() const { return hyper_; }
  int64_t step_count() const { return step_; }
  const Tensor& exp_avg() const { return m_; }
  const Tensor& exp_avg_sq() const { return v_; }
  // Restores the moments (copied, any float dtype of the right size) and the step count.
  void load_state(const Tensor& exp_avg, const Tensor& exp_avg_sq, int64_t step_count);

 private:
  Tensor params_, grads_, mask_, m_, v_, copy_;
  AdamWHyper hyper_;
  int64_t step_ = 0;
};

// ---------------------------------------------------------------- Trainer
struct TrainerOptions {
  int64_t micro_batch = 8;   // sequences per forward_backward
  int64_t grad_accum = 1;    // micro-batches per optimizer step
  double clip = 1.0;         // global L2 norm limit; <= 0 measures the norm without clipping
  AdamWHyper adamw;
  ScheduleOptions schedule;
  bool use_seq_idx = true;   // pass the loader's document ids: packed documents stay apart

  const TrainerOptions& validate() const;
};

struct StepStats {
  int64_t step = 0;        // the trainer step just taken (1-based)
  double loss = 0;         // mean over the micro-batches of their mean loss
  double grad_norm = 0;    // global L2 norm before clipping
  double lr = 0;           // the LR of this step
  int64_t tokens = 0;      // target tokens of this step
  bool skipped = false;    // non-finite gradient norm: no update was made
};

// Drives a Model: step() runs grad_accum micro-batches through forward_backward with
// grad_scale 1/grad_accum (the first overwrites the gradients, the rest add to them),
// so the update follows the gradient of the mean loss; then clipping, the LR of this
// step, and AdamW. A step whose gradient norm is not finite leaves the parameters and
// the optimizer untouched (skipped), but still counts, so the schedule moves on.
class Trainer {
 public:
  // The model must outlive the trainer.
  Trainer(Model& model, const TrainerOptions& options);

  // Draws grad_accum batches of micro_batch samples from the loader.
  StepStats step(DataLoader& loader);
  // Explicit micro-batches: tokens [b, l+1] (i32/i64) each; seq_idx, when given, one per
  // micro-batch, [b, l+1] as the loader makes them or [b, l]. Their count may differ
  // from grad_accum (the scale is 1/count).
  StepStats step(const std::vector<Tensor>& tokens, const std::vector<Tensor>& seq_idx = {});
  // Mean loss over the first `batches` batches of micro_batch samples of the loader's
  // order: the loader is rewound to its start first, so every evaluation sees the same
  // samples (it is left after them).
  double evaluate(DataLoader& loader, int64_t batches);

  Model& model() { return model_; }
  const TrainerOptions& options() const { return opt_; }
  AdamW& optimizer() { return adamw_; }
  const AdamW& optimizer() const { return adamw_; }
  int64_t step_count() const { return step_; }
  int64_t consumed_tokens() const { return tokens_; }
  int64_t skipped_steps() const { return skipped_; }
  // The LR the next step will use.
  double next_lr() const { return learning_rate(opt_.schedule, step_ + 1); }
  // For resuming: the counters a checkpoint recorded (the optimizer state is restored
  // through optimizer().load_state).
  void set_progress(int64_t step, int64_t consumed_tokens, int64_t skipped_steps = 0);

 private:
  Model& model_;
  TrainerOptions opt_;
  AdamW adamw_;
  std::vector<Tensor> grad_list_;  // the flat gradient buffer, for the norm and clipping
  int64_t step_ = 0, tokens_ = 0, skipped_ = 0;
};

}  // namespace mambatron
