// The residual stack (MODELS.md §1): x0 = Embed[tokens]; x_{i+1} = x_i +
// Sublayer_i(Norm_i(x_i)); logits = Norm_f(x_L) · W_outᵀ. Parameter layout, the
// training forward/backward through the fused linear cross-entropy, and logits.
#include <algorithm>

#include "internal.h"
#include "mambatron/ops.h"

namespace mambatron {

using model_detail::Arena;
using model_detail::Grads;
using model_detail::InitRule;
using model_detail::ParamSpec;
using model_detail::Workspace;

Model::Model(const ModelConfig& config, DType dtype, Device device)
    : config_(config.resolved()), dtype_(dtype), device_(device) {
  config_.validate();
  if (device.is_cuda()) {
#ifndef MAMBATRON_WITH_CUDA
    throw TypeError("Model: device " + device.str() + " needs CUDA, but mambatron was built without it");
#endif
    MT_CHECK(dtype == DType::bf16 || dtype == DType::f32, TypeError, "Model: dtype ", dtype_name(dtype),
             " is not supported on CUDA; use bf16 (mixed precision) or f32");
  } else {
    MT_CHECK(dtype == DType::f32 || dtype == DType::f64, TypeError, "Model: dtype ", dtype_name(dtype),
             " is not supported on the CPU; the model computes in f32 or f64 there");
  }
  model_detail::Precision prec{dtype, device.is_cuda() ? DType::f32 : dtype, device};
  for (char c : config_.pattern) layers_.push_back(model_detail::make_sublayer(c, config_, prec));
  build_layout(prec.wide);
}

Model::~Model() = default;

void Model::build_layout(DType master) {
  const int64_t d = config_.d_model, V = config_.vocab_size;
  const double std = config_.init_std;
  bool rms = config_.norm == NormKind::rmsnorm;
  norm_params_ = rms ? 1 : 2;
  auto add_norm = [&](const std::string& prefix) {
    // RMSNorm weight 1; LayerNorm-1p gain offset γ = 0 (w = 1 + γ) and bias β = 0.
    specs_.push_back({prefix + ".weight", {d}, {InitRule::constant, rms ? 1.0 : 0.0}, false, true});
    if (!rms) specs_.push_back({prefix + ".bias", {d}, {InitRule::constant, 0.0}, false, true});
  };
  specs_.push_back({"embedding.weight", {V, d}, {InitRule::normal, std}, true});
  for (size_t i = 0; i < layers_.size(); ++i) {
    std::string prefix = "layers." + std::to_string(i) + ".";
    layer_first_.push_back(specs_.size());
    add_norm(prefix + "norm");
    for (ParamSpec s : layers_[i]->specs()) {
      s.name = prefix + s.name;
      specs_.push_back(std::move(s));
    }
  }
  layer_first_.push_back(specs_.size());
  add_norm("norm_f");
  if (!config_.tie_embeddings) specs_.push_back({"lm_head.weight", {V, d}, {InitRule::normal, std}, true});

  int64_t total = 0;
  for (const ParamSpec& s : specs_) {
    offsets_.push_back(total);
    total += shape_numel(s.shape);
  }
  flat_params_ = Tensor::zeros({total}, master, device_);
  flat_grads_ = Tensor::zeros({total}, master, device_);
  flat_work_ = master == dtype_ ? flat_params_ : Tensor::zeros({total}, dtype_, device_);
  decay_mask_ = Tensor::zeros({total}, DType::u8, device_);
  for (size_t k = 0; k < specs_.size(); ++k) {
    const ParamSpec& s = specs_[k];
    int64_t n = shape_numel(s.shape);
    params_.emplace_back(s.name, flat_params_.narrow(0, offsets_[k], n).view(s.shape));
    grads_.emplace_back(s.name, flat_grads_.narrow(0, offsets_[k], n).view(s.shape));
    grad_views_.push_back(grads_.back().second);
    compute_.push_back(s.wide ? params_.back().second : flat_work_.narrow(0, offsets_[k], n).view(s.shape));
    if (s.decay) decay_mask_.narrow(0, offsets_[k], n).fill_(1.0);
    index_[s.name] = k;
  }
  for (size_t i = 0; i < layers_.size(); ++i) {
    std::vector<Tensor> mixer;
    for (size_t k = layer_first_[i] + norm_params_; k < layer_first_[i + 1]; ++k) mixer.push_back(compute_[k]);
    layers_[i]->bind(std::move(mixer));
  }
}

const Tensor& Model::parameter(const std::string& name) const {
  auto it = index_.find(name);
  MT_CHECK(it != index_.end(), ValueError, "Model: no parameter named '", name, "'");
  return params_[it->second].second;
}

const Tensor& Model::gradient(const std::string& name) const {
  auto it = index_.find(name);
  MT_CHECK(it != index_.end(), ValueError, "Model: no parameter named '", name, "'");
  return grads_[it->second].second;
}

void Model::load_parameters(const NamedTensors& named) {
  std::vector<const Tensor*> source(params_.size(), nullptr);
  for (const auto& [name, t] : named) {
    auto it = index_.find(name);
    MT_CHECK(it != index_.end(), ValueError, "Model.load_parameters: unexpected parameter '", name,
             "'; the model has no parameter of that name");
    const Tensor& p = params_[it->second].second;
    MT_CHECK(source[it->second] == nullptr, ValueError, "Model.load_parameters: parameter '", name,
             "' is given twice");
    MT_CHECK(t.defined(), ValueError, "Model.load_parameters: parameter '", name, "' is undefined");
    MT_CHECK(t.shape() == p.shape(), ValueError, "Model.load_parameters: parameter '", name, "' has shape ",
             shape_str(t.shape()), ", expected ", shape_str(p.shape()));
    MT_CHECK(is_floating(t.dtype()), TypeError, "Model.load_parameters: parameter '", name, "' has dtype ",
             dtype_name(t.dtype()), ", expected a floating type");
    source[it->second] = &t;
  }
  for (size_t k = 0; k < params_.size(); ++k)
    MT_CHECK(source[k] != nullptr, ValueError, "Model.load_parameters: parameter '", params_[k].first,
             "' is missing (", named.size(), " given, the model has ", params_.size(), ")");
  for (size_t k = 0; k < params_.size(); ++k) params_[k].second.copy_(*source[k]);
  sync_working_copy();
}

void Model::sync_working_copy() {
  if (flat_work_.data_ptr() != flat_params_.data_ptr()) flat_work_.copy_(flat_params_);
}

LinearCrossEntropyOptions Model::loss_options() const {
  LinearCrossEntropyOptions opt;
  if (device_.is_cuda()) {
    // The whole vocabulary per block: backward then needs no second pass of logits
    // (1024 rows · V f32 logits, 1 GiB at V = 256000).
    opt.chunk_size = 1024;
    opt.vocab_chunk_size = 0;
  }
  return opt;
}

const Tensor& Model::output_weight() const { return compute_[config_.tie_embeddings ? 0 : compute_.size() - 1]; }

bool Model::has_attention() const { return config_.pattern.find('*') != std::string::npos; }

Workspace& Model::workspace(int64_t b, int64_t l, std::unique_ptr<Workspace>& slot) {
  if (!slot || slot->b != b || slot->l != l)
    slot = std::make_unique<Workspace>(b, l, int64_t(layers_.size()),
                                       model_detail::Precision{dtype_, flat_params_.dtype(), device_});
  return *slot;
}

namespace {

// tokens: a defined CPU tensor of i32/i64 ids with `dims` dims, every id in [0, V).
void check_ids(const Tensor& tokens, int dims, int64_t vocab, const char* op, const char* layout) {
  MT_CHECK(tokens.defined(), ValueError, op, ": tokens are undefined");
  MT_CHECK(tokens.dtype() == DType::i32 || tokens.dtype() == DType::i64, TypeError, op, ": tokens have dtype ",
           dtype_name(tokens.dtype()), ", expected i32 or i64");
  MT_CHECK(tokens.device().is_cpu(), TypeError, op, ": tokens are on ", tokens.device().str(),
           ", expected the model's device cpu");
  MT_CHECK(tokens.dim() == dims, ValueError, op, ": tokens have shape ", shape_str(tokens.shape()), ", expected ",
           layout);
  Tensor ids = tokens.to(DType::i64).contiguous();
  const int64_t* p = ids.data<int64_t>();
  int64_t cols = dims == 2 ? tokens.size(1) : 1;
  for (int64_t i = 0; i < ids.numel(); ++i)
    MT_CHECK(p[i] >= 0 && p[i] < vocab, ValueError, op, ": tokens[", i / cols,
             dims == 2 ? detail::cat(", ", i % cols) : std::string(), "] = ", p[i], " is outside the vocabulary [0, ",
             vocab, ")");
}

// Packed documents restart RoPE at 0: positions count tokens since the row's
// document id last changed.
void positions_from_documents(const Tensor& seq_idx, Tensor& positions) {
  int64_t b = seq_idx.size(0), l = seq_idx.size(1);
  const int32_t* s = seq_idx.data<int32_t>();
  int32_t* pos = positions.data<int32_t>();
  for (int64_t i = 0; i < b; ++i)
    for (int64_t t = 0; t < l; ++t)
      pos[i * l + t] = t == 0 || s[i * l + t] != s[i * l + t - 1] ? 0 : pos[i * l + t - 1] + 1;
}

}  // namespace

Workspace& Model::prepare(std::unique_ptr<Workspace>& slot, const char* op, const Tensor& tokens,
                          bool with_targets, const Tensor& loss_mask, const Tensor& seq_idx) {
  check_ids(tokens, 2, config_.vocab_size, op, with_targets ? "[batch, seq_len + 1]" : "[batch, seq_len]");
  int64_t b = tokens.size(0), l = tokens.size(1) - (with_targets ? 1 : 0);
  MT_CHECK(b >= 1 && l >= 1, ValueError, op, ": tokens have shape ", shape_str(tokens.shape()), ", expected ",
           with_targets ? "[batch, seq_len + 1] with batch >= 1 and seq_len + 1 >= 2"
                        : "[batch, seq_len] with batch >= 1 and seq_len >= 1");
  Workspace& ws = workspace(b, l, slot);
  // Ids are formed on the CPU, then moved to the model's device in one copy each.
  Tensor ids = tokens.to(DType::i32);
  ws.inputs = ws.arena.get("inputs", {b, l}, DType::i32);
  ws.inputs.copy_(ids.narrow(1, 0, l).contiguous());
  if (with_targets) {
    ws.targets = ws.arena.get("targets", {b * l}, DType::i32);
    ws.targets.view({b, l}).copy_(ids.narrow(1, 1, l).contiguous());
  }
  ws.mask = Tensor();
  if (loss_mask.defined()) {
    MT_CHECK(loss_mask.shape() == Shape({b, l}), ValueError, op, ": loss_mask has shape ",
             shape_str(loss_mask.shape()), ", expected [", b, ", ", l, "] (one weight per target)");
    // Weights in the master dtype (f32 on CUDA); a u8 mask stays u8.
    DType mdt = loss_mask.dtype() == DType::u8 ? DType::u8 : flat_params_.dtype();
    ws.mask = loss_mask.contiguous().view({b * l}).to(device_, mdt);
  }
  ws.batch = model_detail::Batch{b, l, Tensor(), Tensor()};
  if (seq_idx.defined()) {
    MT_CHECK(seq_idx.dtype() == DType::i32, TypeError, op, ": seq_idx has dtype ", dtype_name(seq_idx.dtype()),
             ", expected i32 document ids");
    MT_CHECK(seq_idx.shape() == Shape({b, l}), ValueError, op, ": seq_idx has shape ", shape_str(seq_idx.shape()),
             ", expected [", b, ", ", l, "] (one document id per input token)");
    MT_CHECK(seq_idx.device().is_cpu(), TypeError, op, ": seq_idx is on ", seq_idx.device().str(),
             ", expected cpu");
    Tensor host_seq = seq_idx.contiguous();
    // Checked here, on the host, once a batch: the CUDA ops take document ids as given
    // (checking them on the device would cost a wait on every call).
    const int32_t* s = host_seq.data<int32_t>();
    for (int64_t i = 0; i < b; ++i)
      for (int64_t t = 1; t < l; ++t)
        MT_CHECK(s[i * l + t] >= s[i * l + t - 1], ValueError, op, ": seq_idx decreases in row ", i, " at position ",
                 t, " (", s[i * l + t - 1], " then ", s[i * l + t],
                 "); document ids must be non-decreasing along each row");
    ws.batch.seq_idx = ws.arena.get("seq_idx", {b, l}, DType::i32);
    ws.batch.seq_idx.copy_(host_seq);
    if (has_attention() && config_.attention.rotary_fraction > 0) {
      Tensor pos = Tensor::empty({b, l}, DType::i32);
      positions_from_documents(host_seq, pos);
      ws.batch.positions = ws.arena.get("positions", {b, l}, DType::i32);
      ws.batch.positions.copy_(pos);
    }
  }
  return ws;
}

void Model::norm_forward(size_t first, const Tensor& x, Tensor out, Tensor mean, Tensor rstd) const {
  if (config_.norm == NormKind::rmsnorm)
    rmsnorm_forward(x, compute_[first], config_.norm_eps, out, rstd);
  else
    layernorm1p_forward(x, compute_[first], compute_[first + 1], config_.norm_eps, out, mean, rstd);
}

void Model::norm_backward(size_t first, const Tensor& dout, const Tensor& x, const Tensor& mean, const Tensor& rstd,
                          Tensor dx, model_detail::Grads& grads, const Tensor& dresidual) const {
  Tensor dw = grads.out(first);
  if (config_.norm == NormKind::rmsnorm) {
    rmsnorm_backward(dout, x, compute_[first], rstd, dx, dw, dresidual);
  } else {
    Tensor db = grads.out(first + 1);
    layernorm1p_backward(dout, x, compute_[first], mean, rstd, dx, dw, db, dresidual);
  }
}

void Model::set_recompute(bool on) {
  if (on != recompute_) train_ws_.reset();  // drop the buffers laid out for the other mode
  recompute_ = on;
}

void Model::forward_stack(Workspace& ws, InferenceState* state) {
  const int64_t b = ws.b, l = ws.l, d = config_.d_model, L = int64_t(layers_.size());
  Tensor X = ws.arena.get("x", {L + 1, b, l, d});  // the residual stream before each sublayer
  // Each sublayer's normed input, or with recomputation only the latest.
  Tensor normed = ws.arena.get("normed", {recompute_ ? 1 : L, b, l, d});
  Tensor mean = ws.arena.wide("mean", {L + 1, b, l}), rstd = ws.arena.wide("rstd", {L + 1, b, l});
  Tensor x0 = X.select(0, 0);
  embedding_forward(compute_[0], ws.inputs, x0);
  for (int64_t i = 0; i < L; ++i) {
    const char kind = config_.pattern[size_t(i)];
    Tensor xi = X.select(0, i), ni = normed.select(0, recompute_ ? 0 : i);
    norm_forward(layer_first_[i], xi, ni, mean.select(0, i), rstd.select(0, i));
    Tensor next = X.select(0, i + 1);  // x_{i+1} = x_i + mixer(norm(x_i))
    layers_[i]->forward(ni, xi, next, ws.batch, ws.saved(i, kind, recompute_), ws.scratch(kind),
                        state ? &state->layers[i] : nullptr);
  }
  norm_forward(layer_first_[L], X.select(0, L), ws.arena.get("final", {b, l, d}), mean.select(0, L),
               rstd.select(0, L));
}

void Model::backward_stack(Workspace& ws, const Tensor& d_final, bool accumulate) {
  const int64_t b = ws.b, l = ws.l, d = config_.d_model, L = int64_t(layers_.size());
  Tensor X = ws.arena.get("x", {L + 1, b, l, d}), normed = ws.arena.get("normed", {recompute_ ? 1 : L, b, l, d});
  Tensor mean = ws.arena.wide("mean", {L + 1, b, l}), rstd = ws.arena.wide("rstd", {L + 1, b, l});
  // d_res: the gradient of the residual stream x_i, carried down the stack.
  Tensor d_res = ws.arena.get("d_res", {b, l, d}), d_normed = ws.arena.get("d_normed", {b, l, d});
  Grads stack(grad_views_, accumulate, ws.arena);  // the norms' gradients
  norm_backward(layer_first_[L], d_final, X.select(0, L), mean.select(0, L), rstd.select(0, L), d_res, stack);
  for (int64_t i = L - 1; i >= 0; --i) {
    const char kind = config_.pattern[size_t(i)];
    Grads mixer(std::vector<Tensor>(grad_views_.begin() + int64_t(layer_first_[i] + norm_params_),
                                    grad_views_.begin() + int64_t(layer_first_[i + 1])),
                accumulate, ws.scratch(kind));
    Arena& saved = ws.saved(i, kind, recompute_);
    Tensor ni = normed.select(0, recompute_ ? 0 : i);
    if (recompute_ && i < L - 1) {  // the top sublayer's activations are still the latest
      norm_forward(layer_first_[i], X.select(0, i), ni, mean.select(0, i), rstd.select(0, i));
      // x_{i+1} is no longer read (sublayer i+1's backward is done): rewritten with the same values.
      Tensor next = X.select(0, i + 1);
      layers_[i]->forward(ni, X.select(0, i), next, ws.batch, saved, ws.scratch(kind), nullptr);
    }
    layers_[i]->backward(d_res, ni, d_normed, ws.batch, saved, ws.scratch(kind), mixer);
    mixer.finish();
    // d_res += the norm's input gradient, in the norm's own pass.
    norm_backward(layer_first_[i], d_normed, X.select(0, i), mean.select(0, i), rstd.select(0, i), d_res, stack,
                  d_res);
  }
  stack.finish();
  // Tied embeddings: the output layer's gradient is already there; the lookup's adds to it.
  Tensor d_embedding = grad_views_[0];
  embedding_backward(d_res, ws.inputs, d_embedding, accumulate || config_.tie_embeddings);
}

double Model::forward_backward(const Tensor& tokens, const Tensor& loss_mask, const Tensor& seq_idx,
                               double grad_scale, bool accumulate) {
  Workspace& ws = prepare(train_ws_, "Model.forward_backward", tokens, true, loss_mask, seq_idx);
  forward_stack(ws, nullptr);
  const int64_t n = ws.b * ws.l, d = config_.d_model;
  Tensor final_h = ws.arena.get("final", {n, d}), d_final = ws.arena.get("d_final", {n, d});
  // The output layer's gradient goes straight to its place (the embedding's, when tied).
  Tensor d_out_w = config_.tie_embeddings ? grad_views_[0] : grad_views_.back();
  LinearCrossEntropyOptions opt = loss_options();
  opt.grad_scale = grad_scale;
  opt.accumulate_dw = accumulate;
  double loss = linear_cross_entropy_backward(final_h, output_weight(), ws.targets, ws.mask, d_final, d_out_w, opt);
  backward_stack(ws, d_final.view({ws.b, ws.l, d}), accumulate);
  return loss;
}

double Model::loss(const Tensor& tokens, const Tensor& loss_mask, const Tensor& seq_idx) {
  Workspace& ws = prepare(train_ws_, "Model.loss", tokens, true, loss_mask, seq_idx);
  forward_stack(ws, nullptr);
  Tensor final_h = ws.arena.get("final", {ws.b * ws.l, config_.d_model});
  return linear_cross_entropy_forward(final_h, output_weight(), ws.targets, ws.mask, loss_options());
}

Tensor Model::logits(const Tensor& tokens, const Tensor& seq_idx) {
  Workspace& ws = prepare(train_ws_, "Model.logits", tokens, false, Tensor(), seq_idx);
  forward_stack(ws, nullptr);
  Tensor out = Tensor::empty({ws.b, ws.l, config_.vocab_size}, flat_params_.dtype(), device_);
  model_detail::linear(ws.arena.get("final", {ws.b, ws.l, config_.d_model}), output_weight(), out);
  return out;
}

}  // namespace mambatron
