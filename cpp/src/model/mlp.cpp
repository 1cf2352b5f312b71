// MLP (MODELS.md §2): fc1 (d -> f, or 2f for SwiGLU), activation, fc2 (f -> d).
#include <cmath>

#include "internal.h"
#include "mambatron/ops.h"

namespace mambatron::model_detail {

namespace {

class Mlp final : public Sublayer {
 public:
  Mlp(const ModelConfig& c, const Precision&)
      : d_(c.d_model),
        f_(c.mlp.ffn_hidden),
        fc1_(c.mlp.activation == Activation::swiglu ? 2 * f_ : f_),
        act_(c.mlp.activation),
        std_(c.init_std),
        out_std_(c.init_std / std::sqrt(2.0 * double(c.num_layers()))) {}

  std::vector<ParamSpec> specs() const override {
    return {
        {"mixer.fc1.weight", {fc1_, d_}, {InitRule::normal, std_}, true},
        {"mixer.fc2.weight", {d_, f_}, {InitRule::normal, out_std_}, true},
    };
  }

  void forward(const Tensor& x, const Tensor& residual, Tensor& out, const Batch& batch, Arena& s, Arena&,
               InferenceState::Layer*) override {
    run(x, residual, out, {batch.b, batch.l}, s);
  }

  void backward(const Tensor& dout, const Tensor& x, Tensor& dx, const Batch& batch, Arena& s, Arena& scratch,
                Grads& grads) override {
    Shape lead = {batch.b, batch.l};
    Tensor h = s.get("h", with(lead, fc1_)), a = s.get("a", with(lead, f_));
    Tensor da = scratch.get("d_a", with(lead, f_)), dh = scratch.get("d_h", with(lead, fc1_));
    linear_grad_weight(dout, a, grads[kFc2], grads.accumulate());
    linear_grad_input(dout, params_[kFc2], da);
    switch (act_) {
      case Activation::gelu: gelu_backward(da, h, dh); break;
      case Activation::squared_relu: squared_relu_backward(da, h, dh); break;
      case Activation::swiglu: swiglu_backward(da, h, dh); break;
    }
    linear_grad_weight(dh, x, grads[kFc1], grads.accumulate());
    linear_grad_input(dh, params_[kFc1], dx);
  }

  void new_state(int64_t, int64_t, InferenceState::Layer&) const override {}

  void step(const Tensor& x, const Tensor& residual, Tensor& out, const Tensor&, Arena& s,
            InferenceState::Layer&) override {
    run(x, residual, out, {x.size(0)}, s);
  }

 private:
  enum { kFc1, kFc2 };

  static Shape with(Shape lead, int64_t last) {
    lead.push_back(last);
    return lead;
  }

  void run(const Tensor& x, const Tensor& residual, Tensor& out, const Shape& lead, Arena& s) const {
    Tensor h = s.get("h", with(lead, fc1_)), a = s.get("a", with(lead, f_));
    linear(x, params_[kFc1], h);
    switch (act_) {
      case Activation::gelu: gelu_forward(h, a); break;
      case Activation::squared_relu: squared_relu_forward(h, a); break;
      case Activation::swiglu: swiglu_forward(h, a); break;
    }
    linear_add(a, params_[kFc2], residual, out);
  }

  int64_t d_, f_, fc1_;
  Activation act_;
  double std_, out_std_;
};

}  // namespace

std::unique_ptr<Sublayer> make_mlp(const ModelConfig& c, const Precision& p) {
  return std::make_unique<Mlp>(c, p);
}

std::unique_ptr<Sublayer> make_sublayer(char symbol, const ModelConfig& c, const Precision& p) {
  switch (symbol) {
    case 'M': return make_mamba2(c, p);
    case 'm': return make_mamba1(c, p);
    case '*': return make_attention(c, p);
    case '-': return make_mlp(c, p);
  }
  throw ValueError(detail::cat("model: unknown sublayer symbol '", symbol, "'"));
}

}  // namespace mambatron::model_detail
