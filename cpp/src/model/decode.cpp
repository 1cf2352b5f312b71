// Decoding: states, prefill (the chunked forward that also fills the conv and SSM
// states and the KV caches) and one-token steps on those states.
#include "internal.h"
#include "mambatron/ops.h"

namespace mambatron {

using model_detail::Workspace;

InferenceState Model::new_state(int64_t batch, int64_t max_len) const {
  MT_CHECK(batch >= 1, ValueError, "Model.new_state: batch = ", batch, " must be >= 1");
  MT_CHECK(max_len >= 1, ValueError, "Model.new_state: max_len = ", max_len, " must be >= 1");
  InferenceState st;
  st.batch = batch;
  st.max_len = max_len;
  st.lengths = Tensor::zeros({batch}, DType::i32);
  st.layers.resize(layers_.size());
  for (size_t i = 0; i < layers_.size(); ++i) layers_[i]->new_state(batch, max_len, st.layers[i]);
  return st;
}

void Model::check_state(const InferenceState& state, const char* op) const {
  MT_CHECK(state.layers.size() == layers_.size() && state.lengths.defined() && state.batch >= 1, ValueError, op,
           ": the state has ", state.layers.size(), " layers, the model ", layers_.size(),
           "; make it with this model's new_state(batch, max_len)");
}

Tensor Model::prefill(const Tensor& tokens, InferenceState& state) {
  const char* op = "Model.prefill";
  check_state(state, op);
  Workspace& ws = prepare(prefill_ws_, op, tokens, false, Tensor(), Tensor());
  MT_CHECK(ws.b == state.batch, ValueError, op, ": tokens have batch ", ws.b, ", the state ", state.batch);
  MT_CHECK(!has_attention() || ws.l <= state.max_len, ValueError, op, ": a prompt of ", ws.l,
           " tokens does not fit the state's KV cache of max_len ", state.max_len);
  forward_stack(ws, &state);
  state.lengths.fill_(double(ws.l));
  const int64_t d = config_.d_model;
  Tensor last = ws.arena.get("last", {ws.b, d});
  last.copy_(ws.arena.get("final", {ws.b, ws.l, d}).select(1, ws.l - 1));
  Tensor out = Tensor::empty({ws.b, config_.vocab_size}, flat_params_.dtype(), device_);
  model_detail::linear(last, output_weight(), out);
  return out;
}

Tensor Model::step(const Tensor& tokens, InferenceState& state) {
  const char* op = "Model.step";
  check_state(state, op);
  MT_CHECK(tokens.defined() && tokens.dim() == 1 && tokens.size(0) == state.batch, ValueError, op, ": tokens have ",
           tokens.defined() ? "shape " + shape_str(tokens.shape()) : std::string("no value"), ", expected [",
           state.batch, "] (one new token per sequence)");
  // A full KV cache is refused before any layer's state moves.
  if (has_attention()) {
    const int32_t* len = state.lengths.data<int32_t>();
    for (int64_t i = 0; i < state.batch; ++i)
      MT_CHECK(len[i] < state.max_len, ValueError, op, ": sequence ", i, " already holds ", len[i],
               " tokens, the state's max_len; its KV cache is full");
  }
  Workspace& ws = prepare(step_ws_, op, tokens.reshape({state.batch, 1}), false, Tensor(), Tensor());
  const int64_t b = ws.b, d = config_.d_model;
  Tensor x = ws.arena.get("x", {b, 1, d}), normed = ws.arena.get("normed", {b, 1, d});
  Tensor mean = ws.arena.wide("mean", {b, 1}), rstd = ws.arena.wide("rstd", {b, 1});
  embedding_forward(compute_[0], ws.inputs, x);
  Tensor positions = ws.arena.get("positions", {b, 1}, DType::i32);
  positions.copy_(state.lengths.view({b, 1}));
  Tensor n2 = normed.view({b, d}), x2 = x.view({b, d});
  for (size_t i = 0; i < layers_.size(); ++i) {
    norm_forward(layer_first_[i], x, normed, mean, rstd);
    layers_[i]->step(n2, x2, x2, positions, ws.layers[i], state.layers[i]);  // x += mixer(norm(x))
  }
  norm_forward(layer_first_.back(), x, normed, mean, rstd);
  Tensor logits = Tensor::empty({b, config_.vocab_size}, flat_params_.dtype(), device_);
  model_detail::linear(normed, output_weight(), logits);
  int32_t* len = state.lengths.data<int32_t>();
  for (int64_t i = 0; i < b; ++i) ++len[i];
  return logits;
}

}  // namespace mambatron
