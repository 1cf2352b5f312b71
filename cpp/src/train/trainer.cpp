// The Trainer step: accumulate micro-batch gradients, clip, schedule, AdamW.
#include <cmath>

#include "mambatron/error.h"
#include "mambatron/ops.h"
#include "mambatron/train.h"

namespace mambatron {

const TrainerOptions& TrainerOptions::validate() const {
  MT_CHECK(micro_batch >= 1, ValueError, "Trainer: micro_batch = ", micro_batch, " must be >= 1");
  MT_CHECK(grad_accum >= 1, ValueError, "Trainer: grad_accum = ", grad_accum, " must be >= 1");
  MT_CHECK(!std::isnan(clip), ValueError, "Trainer: clip must not be NaN");
  schedule.validate();
  return *this;
}

Trainer::Trainer(Model& model, const TrainerOptions& options)
    : model_(model),
      opt_(options.validate()),
      adamw_(model.flat_parameters(), model.flat_gradients(), model.weight_decay_mask(), options.adamw,
             model.working_parameters().data_ptr() == model.flat_parameters().data_ptr() ? Tensor()
                                                                                         : model.working_parameters()),
      grad_list_{model.flat_gradients()} {}

namespace {
// The loader's seq_idx covers all l+1 tokens; the model wants the inputs' l.
Tensor input_seq_idx(const Tensor& seq_idx, const Tensor& tokens) {
  if (seq_idx.dim() == 2 && tokens.dim() == 2 && seq_idx.size(1) == tokens.size(1))
    return seq_idx.narrow(1, 0, seq_idx.size(1) - 1);
  return seq_idx;
}
}  // namespace

StepStats Trainer::step(DataLoader& loader) {
  std::vector<Tensor> tokens, seq_idx;
  for (int64_t i = 0; i < opt_.grad_accum; ++i) {
    auto [t, s] = loader.next_batch(opt_.micro_batch);
    tokens.push_back(std::move(t));
    seq_idx.push_back(std::move(s));
  }
  return step(tokens, seq_idx);
}

StepStats Trainer::step(const std::vector<Tensor>& tokens, const std::vector<Tensor>& seq_idx) {
  MT_CHECK(!tokens.empty(), ValueError, "Trainer.step: no micro-batches given");
  MT_CHECK(seq_idx.empty() || seq_idx.size() == tokens.size(), ValueError, "Trainer.step: ", seq_idx.size(),
           " seq_idx tensors for ", tokens.size(), " micro-batches");
  const size_t n = tokens.size();
  const double scale = 1.0 / double(n);
  double loss_sum = 0;
  int64_t ntok = 0;
  for (size_t i = 0; i < n; ++i) {
    MT_CHECK(tokens[i].dim() == 2 && tokens[i].size(1) >= 2, ValueError, "Trainer.step: micro-batch ", i,
             " has shape ", shape_str(tokens[i].shape()), ", expected [b, l+1] with l >= 1");
    Tensor s = (opt_.use_seq_idx && !seq_idx.empty()) ? input_seq_idx(seq_idx[i], tokens[i]) : Tensor();
    loss_sum += model_.forward_backward(tokens[i], Tensor(), s, scale, /*accumulate=*/i > 0);
    ntok += tokens[i].size(0) * (tokens[i].size(1) - 1);
  }
  StepStats st;
  st.loss = loss_sum / double(n);
  st.grad_norm = opt_.clip > 0 ? clip_grad_norm(grad_list_, opt_.clip) : grad_norm(grad_list_);
  st.step = step_ + 1;
  st.lr = learning_rate(opt_.schedule, st.step);
  st.tokens = ntok;
  st.skipped = !std::isfinite(st.grad_norm);
  if (!st.skipped) adamw_.step(st.lr);
  step_ = st.step;
  tokens_ += ntok;
  skipped_ += st.skipped ? 1 : 0;
  return st;
}

double Trainer::evaluate(DataLoader& loader, int64_t batches) {
  MT_CHECK(batches >= 1, ValueError, "Trainer.evaluate: batches = ", batches, " must be >= 1");
  loader.set_state({0, 0});
  double sum = 0;
  for (int64_t i = 0; i < batches; ++i) {
    auto [t, s] = loader.next_batch(opt_.micro_batch);
    sum += model_.loss(t, Tensor(), opt_.use_seq_idx ? input_seq_idx(s, t) : Tensor());
  }
  return sum / double(batches);
}

void Trainer::set_progress(int64_t step, int64_t consumed_tokens, int64_t skipped_steps) {
  MT_CHECK(step >= 0 && consumed_tokens >= 0 && skipped_steps >= 0 && skipped_steps <= step, ValueError,
           "Trainer.set_progress: step = ", step, ", consumed_tokens = ", consumed_tokens, ", skipped_steps = ",
           skipped_steps, " must be >= 0 (skipped <= step)");
  step_ = step;
  tokens_ = consumed_tokens;
  skipped_ = skipped_steps;
}

}  // namespace mambatron
