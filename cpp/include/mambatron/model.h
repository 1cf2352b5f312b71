// The model (MODELS.md §1–2): a token embedding, a stack of pre-norm residual
// sublayers given by a pattern string (M Mamba-2, m Mamba-1, * attention, - MLP),
// a final norm and an output layer. Explicit forward, backward and decode; the
// parameters live in one flat buffer and their gradients in another of the same
// layout, so one optimizer call, one all-reduce and one checkpoint walk cover them.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "mambatron/tensor.h"

namespace mambatron {

enum class NormKind { rmsnorm, layernorm1p };
enum class Activation { gelu, squared_relu, swiglu };
// "rmsnorm" / "layernorm1p" and "gelu" / "squared_relu" / "swiglu"; ValueError otherwise.
NormKind norm_kind_from_string(const std::string& s);
Activation activation_from_string(const std::string& s);
const char* norm_kind_name(NormKind k);
const char* activation_name(Activation a);

// Mirrors python/mambatron/config.py (same fields and defaults). Derived widths
// that the Python config leaves as None ("auto") are 0 here, and resolved() fills them.
struct Mamba2Options {
  int64_t expand = 2, head_dim = 64, d_state = 128, n_groups = 8, d_conv = 4, chunk_size = 128;
  double dt_min = 1e-3, dt_max = 1e-1, dt_init_floor = 1e-4;
  double A_init_min = 1.0, A_init_max = 16.0;
};
struct Mamba1Options {
  int64_t expand = 2, d_state = 16;
  int64_t dt_rank = 0;  // 0: ceil(d_model / 16)
  int64_t d_conv = 4;
  double dt_min = 1e-3, dt_max = 1e-1, dt_init_floor = 1e-4;
};
struct AttentionOptions {
  int64_t num_heads = 32;
  int64_t num_kv_heads = 0;  // 0: num_heads
  int64_t head_dim = 0;      // 0: d_model / num_heads
  double rotary_fraction = 0.0;  // share of each head's dims under RoPE; 0 = none
  double rope_base = 10000.0;
};
struct MlpOptions {
  int64_t ffn_hidden = 0;  // 0: 4 · d_model
  Activation activation = Activation::gelu;
};

struct ModelConfig {
  std::string pattern;  // one symbol per sublayer: M m * -
  int64_t d_model = 1024;
  int64_t vocab_size = 256000;
  NormKind norm = NormKind::rmsnorm;
  double norm_eps = 1e-5;
  bool tie_embeddings = false;
  double init_std = 0.02;
  Mamba2Options mamba2;
  Mamba1Options mamba1;
  AttentionOptions attention;
  MlpOptions mlp;

  // A copy with every "auto" (0) width replaced by its derived value.
  ModelConfig resolved() const;
  // Throws ValueError naming the field, its value and the rule of the first
  // inconsistency (of the resolved widths); returns *this.
  const ModelConfig& validate() const;

  int64_t num_layers() const { return int64_t(pattern.size()); }
  int64_t mamba2_d_inner() const { return mamba2.expand * d_model; }
  int64_t mamba2_num_heads() const { return mamba2_d_inner() / mamba2.head_dim; }
  int64_t mamba2_conv_dim() const { return mamba2_d_inner() + 2 * mamba2.n_groups * mamba2.d_state; }
  int64_t mamba1_d_inner() const { return mamba1.expand * d_model; }
};

// Decoding state of a batch of sequences: per sublayer the Mamba conv and SSM
// states, or the attention KV cache; `lengths` counts the tokens each sequence has
// consumed (the RoPE position of its next token). Sequences advance independently.
struct InferenceState {
  struct Layer {
    Tensor conv_state;  // M: [b, conv_dim, d_conv − 1]; m: [b, d_inner, d_conv − 1]
    Tensor ssm_state;   // M: [b, h, p, n]; m: [b, d_inner, n]
    Tensor k_cache, v_cache;  // *: [b, max_len, hkv, p]
    Tensor cache_lens;        // *: i32 [b]
  };
  int64_t batch = 0, max_len = 0;
  Tensor lengths;  // i32 [b], on the CPU (also on a CUDA model: read every step)
  std::vector<Layer> layers;  // one per sublayer; MLP entries hold nothing
};

struct LinearCrossEntropyOptions;  // ops.h

namespace model_detail {
class Grads;
class Sublayer;
struct Workspace;
struct ParamSpec;
}  // namespace model_detail

class Model {
 public:
  using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

  // dtype: the compute dtype. f32 or f64 on the CPU; on CUDA bf16 (mixed precision
  // as MODELS.md §3: f32 master weights, gradients and optimizer state, a bf16
  // working copy of the matrices, bf16 activations; norms, A_log, D and dt_bias read
  // in f32) or f32. Parameters are allocated, not initialised: call init(seed) or
  // load_parameters().
  explicit Model(const ModelConfig& config, DType dtype = DType::f32, Device device = Device::cpu());
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const ModelConfig& config() const { return config_; }  // resolved
  DType dtype() const { return dtype_; }
  // The master weights' and gradients' dtype: dtype() on the CPU, f32 on CUDA.
  DType parameter_dtype() const { return flat_params_.dtype(); }
  Device device() const { return device_; }

  // ---- parameters: views into one flat buffer, in the order of ModelConfig.parameter_shapes()
  const NamedTensors& parameters() const { return params_; }
  const NamedTensors& gradients() const { return grads_; }
  const Tensor& flat_parameters() const { return flat_params_; }
  const Tensor& flat_gradients() const { return flat_grads_; }
  // u8 [num_parameters()]: 1 where AdamW decays the element (matrices), 0 for 1-D
  // parameters (norms, biases, A_log, D, dt_bias).
  const Tensor& weight_decay_mask() const { return decay_mask_; }
  int64_t num_parameters() const { return flat_params_.numel(); }
  // The working copy the forward reads (bf16 on a bf16 CUDA model), laid out like
  // flat_parameters(); the same tensor when the dtypes agree. AdamW writes it in the
  // same pass as the master weights; after changing parameters any other way, call
  // sync_working_copy() (init and load_parameters do).
  const Tensor& working_parameters() const { return flat_work_; }
  void sync_working_copy();
  // The parameter (or its gradient) named `name`; ValueError for an unknown name.
  const Tensor& parameter(const std::string& name) const;
  const Tensor& gradient(const std::string& name) const;
  // Copies every parameter by name (any float dtype, converted). Each model name
  // must appear once with its exact shape and no other name may appear; all names
  // are checked before anything is copied.
  void load_parameters(const NamedTensors& named);

  // MODELS.md's initialisation; the same seed gives the same weights (drawn in f64
  // from the counter-based generator, each parameter from its own counter range).
  void init(uint64_t seed);

  // ---- training
  // tokens: [b, l+1] i32/i64 (inputs tokens[:, :-1], targets tokens[:, 1:]);
  // loss_mask: optional [b, l] (u8, or f32/f64 weights); seq_idx: optional i32 [b, l]
  // document ids of the inputs (non-decreasing per row: packed documents do not see
  // each other, RoPE positions restart). Returns the mean loss over the unmasked
  // targets; the gradients of grad_scale · loss overwrite the gradient buffer, or
  // are added to it when `accumulate`.
  double forward_backward(const Tensor& tokens, const Tensor& loss_mask = Tensor(), const Tensor& seq_idx = Tensor(),
                          double grad_scale = 1.0, bool accumulate = false);
  // The same loss without the backward.
  double loss(const Tensor& tokens, const Tensor& loss_mask = Tensor(), const Tensor& seq_idx = Tensor());
  // tokens [b, l] -> logits [b, l, V] (a new tensor; for evaluation and tests).
  Tensor logits(const Tensor& tokens, const Tensor& seq_idx = Tensor());

  // ---- memory
  // Activation recomputation: when on, the forward keeps only each sublayer's input
  // (the residual stream) and forward_backward recomputes a sublayer's forward just
  // before its backward. Saved activations then take one sublayer's worth per kind
  // instead of every sublayer's, for about one more forward of compute; losses and
  // gradients are the same bits either way.
  void set_recompute(bool on);
  bool recompute() const { return recompute_; }

  // ---- decoding
  // Empty states for `batch` sequences of up to max_len tokens (KV caches of that length).
  InferenceState new_state(int64_t batch, int64_t max_len) const;
  // Runs the chunked forward over tokens [b, l] (every sequence restarts from empty
  // states; l <= max_len) and fills the states; returns the last position's logits [b, V].
  Tensor prefill(const Tensor& tokens, InferenceState& state);
  // One new token per sequence: tokens [b] -> logits [b, V]; advances the states.
  Tensor step(const Tensor& tokens, InferenceState& state);

 private:
  void build_layout(DType master);
  model_detail::Workspace& workspace(int64_t b, int64_t l, std::unique_ptr<model_detail::Workspace>& slot);
  // Checks tokens [b, l + 1] (or [b, l] for logits), the mask and seq_idx, and loads
  // the ids into a workspace; returns it.
  model_detail::Workspace& prepare(std::unique_ptr<model_detail::Workspace>& slot, const char* op,
                                   const Tensor& tokens, bool with_targets, const Tensor& loss_mask,
                                   const Tensor& seq_idx);
  // Embedding, residual stack and final norm over the workspace's inputs; with a
  // state (prefill) the sublayers fill it.
  void forward_stack(model_detail::Workspace& ws, InferenceState* state);
  // From the gradient of the final norm's output [b, l, d] down to the embedding.
  // accumulate: add to the gradient buffer instead of overwriting it.
  void backward_stack(model_detail::Workspace& ws, const Tensor& d_final, bool accumulate);
  void norm_forward(size_t first, const Tensor& x, Tensor out, Tensor mean, Tensor rstd) const;
  // dx = dresidual (when given) + the norm's input gradient.
  void norm_backward(size_t first, const Tensor& dout, const Tensor& x, const Tensor& mean, const Tensor& rstd,
                     Tensor dx, model_detail::Grads& grads, const Tensor& dresidual = Tensor()) const;
  const Tensor& output_weight() const;
  LinearCrossEntropyOptions loss_options() const;
  bool has_attention() const;
  void check_state(const InferenceState& state, const char* op) const;

  ModelConfig config_;
  DType dtype_;
  Device device_;
  std::vector<std::unique_ptr<model_detail::Sublayer>> layers_;
  std::vector<model_detail::ParamSpec> specs_;  // full names, in order
  NamedTensors params_, grads_;
  std::unordered_map<std::string, size_t> index_;  // name -> position in params_
  std::vector<int64_t> offsets_;  // element offset of each parameter in the flat buffers
  // Index of each sublayer's first parameter (its pre-norm); the last entry is norm_f's.
  std::vector<size_t> layer_first_;
  size_t norm_params_ = 1;  // parameters per norm: weight (+ bias for layernorm1p)
  Tensor flat_params_, flat_grads_, decay_mask_, flat_work_;
  // What the forward reads: per parameter a view of flat_work_, or of the master
  // buffer for the wide ones (ParamSpec::wide).
  std::vector<Tensor> compute_;
  std::vector<Tensor> grad_views_;  // gradient views over flat_grads_
  std::unique_ptr<model_detail::Workspace> train_ws_, prefill_ws_, step_ws_;
  bool recompute_ = false;
};

}  // namespace mambatron
