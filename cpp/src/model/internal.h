// Internals of the model: parameter declarations with their init rules, the
// activation arena, the sublayer interface and small tensor helpers.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "mambatron/model.h"
#include "mambatron/random.h"

namespace mambatron::model_detail {

// How init(seed) fills a parameter (init.cpp). All draws are made in f64.
struct InitRule {
  enum Kind {
    normal,       // N(0, a²)
    uniform,      // U(a, b)
    constant,     // a
    dt_bias,      // dt = exp(U(ln a, ln b)) clamped >= c; inverse softplus of dt
    log_uniform,  // ln U(a, b)  (Mamba-2 A_log)
    s4d_real,     // [rows, n]: ln(1..n) in every row (Mamba-1 A_log)
  } kind = constant;
  double a = 0, b = 0, c = 0;
};

struct ParamSpec {
  std::string name;  // relative to the owner ("mixer.in_proj.weight")
  Shape shape;
  InitRule init;
  bool decay;         // AdamW weight decay (matrices only)
  bool wide = false;  // read in the master dtype (f32) on the GPU, not the bf16 copy (MODELS.md §3)
};

// The dtypes of one model: `act` for activations and the working copy of the
// matrices (f32/f64 on the CPU, bf16 or f32 on CUDA); `wide` for master weights,
// gradients, norm statistics, A and the recurrent SSM states (f32 on CUDA, act on
// the CPU).
struct Precision {
  DType act;
  DType wide;
  Device device;
};

void init_parameter(Tensor& p, const InitRule& rule, Generator& gen);

// Buffers of one owner (a sublayer, or the stack) for one (batch, seq_len): each
// name is allocated at its first use and the same memory is returned afterwards.
class Arena {
 public:
  explicit Arena(const Precision& p) : prec_(p) {}
  // In the activation dtype, or `dtype`.
  Tensor get(const std::string& name, const Shape& shape, std::optional<DType> dtype = std::nullopt);
  // In the wide dtype (statistics, A and its gradient).
  Tensor wide(const std::string& name, const Shape& shape) { return get(name, shape, prec_.wide); }

 private:
  Precision prec_;
  std::unordered_map<std::string, Tensor> buffers_;
};

// What every sublayer of one call shares.
struct Batch {
  int64_t b = 0, l = 0;
  Tensor seq_idx;    // i32 [b, l] or undefined
  Tensor positions;  // i32 [b, l] RoPE positions, or undefined (0..l-1)
};

// Everything one (batch, seq_len) needs, allocated at first use and then reused.
struct Workspace {
  Workspace(int64_t b_, int64_t l_, int64_t layers, const Precision& p);
  // The backward temporaries of the sublayers of one kind (pattern symbol).
  Arena& scratch(char kind) { return scratch_.try_emplace(kind, prec).first->second; }
  // What sublayer i (of kind `kind`) saves for its backward: its own arena, or with
  // activation recomputation one arena shared by the sublayers of its kind.
  Arena& saved(int64_t i, char kind, bool recompute) {
    return recompute ? saved_shared_.try_emplace(kind, prec).first->second : layers[size_t(i)];
  }
  int64_t b, l;
  Precision prec;
  Batch batch;                // of the last forward
  Tensor inputs, targets, mask;  // i32 [b, l], i32 [b·l] and the loss mask [b·l] (or undefined), on the device
  Arena arena;                // the stack's buffers
  std::vector<Arena> layers;  // each sublayer's saved activations (and its decode scratch)

 private:
  std::unordered_map<char, Arena> scratch_, saved_shared_;
};

// The parameter gradients one backward writes: views into the model's gradient buffer,
// overwritten, or added to when accumulating. Gemm weight gradients add in the gemm
// itself (beta = 1, see linear_grad_weight); an op that can only overwrite writes to
// out(k): the view itself, or when accumulating a temporary from `scratch` that
// finish() adds in. So accumulation needs no second gradient buffer.
class Grads {
 public:
  Grads(std::vector<Tensor> views, bool accumulate, Arena& scratch)
      : views_(std::move(views)), accumulate_(accumulate), scratch_(&scratch) {}
  const Tensor& operator[](size_t k) const { return views_[k]; }
  bool accumulate() const { return accumulate_; }
  Tensor out(size_t k);
  void finish();  // adds the temporaries handed out since the last finish

 private:
  std::vector<Tensor> views_;
  bool accumulate_;
  Arena* scratch_;
  std::vector<std::pair<size_t, Tensor>> pending_;
};

// One mixer (the part after the pre-norm). Parameters are views in specs() order.
class Sublayer {
 public:
  virtual ~Sublayer() = default;
  virtual std::vector<ParamSpec> specs() const = 0;
  void bind(std::vector<Tensor> params) { params_ = std::move(params); }
  // x: the normed input [b, l, d]; out [b, l, d] = residual + the mixer's output (the
  // add rides in the out projection's epilogue; out may be residual). With `state`
  // (prefill), the layer's decoding state is filled too. `saved` keeps what backward
  // needs; `scratch` (shared by the layers of one kind) takes the rest.
  virtual void forward(const Tensor& x, const Tensor& residual, Tensor& out, const Batch& batch, Arena& saved,
                       Arena& scratch, InferenceState::Layer* state) = 0;
  // After forward with the same arguments: dout [b, l, d] -> dx [b, l, d] (overwritten)
  // and the parameter gradients (in specs() order; the caller calls grads.finish()).
  // `scratch` holds the backward's temporaries; every layer of one kind shares it (they
  // run one at a time).
  virtual void backward(const Tensor& dout, const Tensor& x, Tensor& dx, const Batch& batch, Arena& saved,
                        Arena& scratch, Grads& grads) = 0;
  virtual void new_state(int64_t batch, int64_t max_len, InferenceState::Layer& st) const = 0;
  // One token per sequence: x [b, d] -> out [b, d] = residual + the mixer's output;
  // positions i32 [b, 1] (RoPE).
  virtual void step(const Tensor& x, const Tensor& residual, Tensor& out, const Tensor& positions, Arena& scratch,
                    InferenceState::Layer& st) = 0;

 protected:
  std::vector<Tensor> params_;
};

std::unique_ptr<Sublayer> make_mamba2(const ModelConfig& config, const Precision& p);
std::unique_ptr<Sublayer> make_mamba1(const ModelConfig& config, const Precision& p);
std::unique_ptr<Sublayer> make_attention(const ModelConfig& config, const Precision& p);
std::unique_ptr<Sublayer> make_mlp(const ModelConfig& config, const Precision& p);
// The mixer of a pattern symbol (M m * -), for a resolved, validated config.
std::unique_ptr<Sublayer> make_sublayer(char symbol, const ModelConfig& config, const Precision& p);

// ---- helpers (helpers.cpp): contiguous tensors on the model's device
// y[N, out] (+)= x[N, in] · Wᵀ for W [out, in]; x and y are viewed as 2-D.
void linear(const Tensor& x, const Tensor& w, const Tensor& y, bool accumulate = false);
// y = residual + x · Wᵀ in one pass (the gemm's epilogue adds; y may be residual).
void linear_add(const Tensor& x, const Tensor& w, const Tensor& residual, const Tensor& y);
// dW [out, in] (+)= dyᵀ · x.
void linear_grad_weight(const Tensor& dy, const Tensor& x, const Tensor& dw, bool accumulate = false);
// dx [N, in] (+)= dy · W.
void linear_grad_input(const Tensor& dy, const Tensor& w, const Tensor& dx, bool accumulate = false);
// Rows of W [out, in] from `start`, a contiguous view.
inline Tensor rows(const Tensor& w, int64_t start, int64_t count) { return w.narrow(0, start, count); }
// t viewed as [numel / cols, cols].
Tensor as_2d(const Tensor& t, int64_t cols);
// Copies consecutive column blocks of src [.., C] into parts (each [.., c_i], viewed
// 2-D with the same row count), and back.
void split_columns(const Tensor& src, const std::vector<Tensor>& parts);
void join_columns(const std::vector<Tensor>& parts, const Tensor& dst);
void add_(const Tensor& y, const Tensor& x);                      // y += x
void neg_exp(const Tensor& a_log, const Tensor& a);                // a = −exp(a_log)
void mul_into(const Tensor& out, const Tensor& a, const Tensor& b);  // out = a ⊙ b

}  // namespace mambatron::model_detail
