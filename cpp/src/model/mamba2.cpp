// Mamba-2 mixer (MODELS.md §2): in_proj -> z | xBC | dt; xBC = SiLU(conv1d(xBC));
// x | B | C; SSD scan with dt_bias, softplus, A = −exp(A_log) and D; gated grouped
// RMSNorm(y, z); out_proj. The in_proj row blocks are separate projections, so each
// part lands in its own contiguous buffer.
#include <cmath>

#include "internal.h"
#include "mambatron/ops.h"

namespace mambatron::model_detail {

namespace {

class Mamba2 final : public Sublayer {
 public:
  Mamba2(const ModelConfig& c, const Precision& prec)
      : prec_(prec),
        cfg_(c.mamba2),
        d_(c.d_model),
        di_(c.mamba2_d_inner()),
        h_(c.mamba2_num_heads()),
        p_(c.mamba2.head_dim),
        n_(c.mamba2.d_state),
        g_(c.mamba2.n_groups),
        w_(c.mamba2.d_conv),
        conv_(c.mamba2_conv_dim()),
        eps_(c.norm_eps),
        std_(c.init_std),
        out_std_(c.init_std / std::sqrt(2.0 * double(c.num_layers()))),
        A_(Tensor::empty({h_}, prec.wide, prec.device)) {
    opt_.chunk_size = cfg_.chunk_size;
    opt_.dt_softplus = true;
  }

  std::vector<ParamSpec> specs() const override {
    double conv_bound = 1.0 / std::sqrt(double(w_));  // kaiming uniform (a = √5) at fan-in w
    return {
        {"mixer.in_proj.weight", {2 * di_ + 2 * g_ * n_ + h_, d_}, {InitRule::normal, std_}, true},
        {"mixer.conv1d.weight", {conv_, 1, w_}, {InitRule::uniform, -conv_bound, conv_bound}, true},
        {"mixer.conv1d.bias", {conv_}, {InitRule::uniform, -conv_bound, conv_bound}, false},
        {"mixer.dt_bias", {h_}, {InitRule::dt_bias, cfg_.dt_min, cfg_.dt_max, cfg_.dt_init_floor}, false, true},
        {"mixer.A_log", {h_}, {InitRule::log_uniform, cfg_.A_init_min, cfg_.A_init_max}, false, true},
        {"mixer.D", {h_}, {InitRule::constant, 1.0}, false, true},
        {"mixer.norm.weight", {di_}, {InitRule::constant, 1.0}, false, true},
        {"mixer.out_proj.weight", {d_, di_}, {InitRule::normal, out_std_}, true},
    };
  }

  void forward(const Tensor& x, const Tensor& residual, Tensor& out, const Batch& batch, Arena& s, Arena& scratch,
               InferenceState::Layer* state) override {
    int64_t b = batch.b, l = batch.l;
    Tensor z = s.get("z", {b, l, di_}), xbc = s.get("xbc", {b, l, conv_}), dt = s.get("dt", {b, l, h_});
    project_in(x, z, xbc, dt);
    Tensor xbc_act = scratch.get("xbc_act", {b, l, conv_});
    Tensor conv_final = state ? state->conv_state : Tensor();
    conv1d_forward(xbc, conv_weight(params_[kConvW]), params_[kConvB], Tensor(), batch.seq_idx, xbc_act, conv_final,
                   silu());
    Tensor xs = s.get("x", {b, l, h_, p_}), B = s.get("B", {b, l, g_, n_}), C = s.get("C", {b, l, g_, n_});
    split_columns(xbc_act, {xs, B, C});
    neg_exp(params_[kALog], A_);
    Tensor y = s.get("y", {b, l, h_, p_});
    Tensor ssm_final = state ? state->ssm_state : Tensor();
    ssd_forward(xs, dt, A_, B, C, params_[kD], params_[kDtBias], Tensor(), batch.seq_idx, y, ssm_final, opt_);
    Tensor yn = s.get("yn", {b, l, di_}), rstd = s.wide("rstd", {b, l, g_});
    gated_rmsnorm_forward(y.view({b, l, di_}), z, params_[kNorm], g_, eps_, yn, rstd);
    linear_add(yn, params_[kOut], residual, out);
  }

  void backward(const Tensor& dout, const Tensor& x, Tensor& dx, const Batch& batch, Arena& s, Arena& scratch,
                Grads& grads) override {
    int64_t b = batch.b, l = batch.l;
    Tensor z = s.get("z", {b, l, di_}), xbc = s.get("xbc", {b, l, conv_}), dt = s.get("dt", {b, l, h_});
    Tensor xs = s.get("x", {b, l, h_, p_}), B = s.get("B", {b, l, g_, n_}), C = s.get("C", {b, l, g_, n_});
    Tensor y = s.get("y", {b, l, h_, p_}), yn = s.get("yn", {b, l, di_}), rstd = s.wide("rstd", {b, l, g_});

    Tensor dyn = scratch.get("d_yn", {b, l, di_});
    const bool acc = grads.accumulate();
    linear_grad_weight(dout, yn, grads[kOut], acc);
    linear_grad_input(dout, params_[kOut], dyn);
    Tensor dy = scratch.get("d_y", {b, l, h_, p_}), dz = scratch.get("d_z", {b, l, di_});
    Tensor dy3 = dy.view({b, l, di_}), dnorm = grads.out(kNorm);
    gated_rmsnorm_backward(dyn, y.view({b, l, di_}), z, params_[kNorm], rstd, g_, dy3, dz, dnorm);

    Tensor dxs = scratch.get("d_x", {b, l, h_, p_}), ddt = scratch.get("d_dt", {b, l, h_}), dA = scratch.wide("d_A", {h_});
    Tensor dB = scratch.get("d_B", {b, l, g_, n_}), dC = scratch.get("d_C", {b, l, g_, n_});
    Tensor dD = grads.out(kD), ddt_bias = grads.out(kDtBias), no_grad;
    ssd_backward(dy, Tensor(), xs, dt, A_, B, C, params_[kD], params_[kDtBias], Tensor(), batch.seq_idx, dxs, ddt,
                 dA, dB, dC, dD, ddt_bias, no_grad, opt_);
    mul_into(grads.out(kALog), dA, A_);  // A = −exp(A_log): dA_log = dA · A

    Tensor dxbc_act = scratch.get("d_xbc_act", {b, l, conv_}), dxbc = scratch.get("d_xbc", {b, l, conv_});
    join_columns({dxs, dB, dC}, dxbc_act);
    Tensor dconv_w = conv_weight(grads.out(kConvW)), dconv_b = grads.out(kConvB);
    conv1d_backward(dxbc_act, Tensor(), xbc, conv_weight(params_[kConvW]), params_[kConvB], Tensor(), batch.seq_idx,
                    dxbc, dconv_w, dconv_b, no_grad, silu());

    const Tensor& w_in = params_[kIn];
    const Tensor& dw_in = grads[kIn];
    linear_grad_weight(dz, x, rows(dw_in, 0, di_), acc);
    linear_grad_weight(dxbc, x, rows(dw_in, di_, conv_), acc);
    linear_grad_weight(ddt, x, rows(dw_in, di_ + conv_, h_), acc);
    linear_grad_input(dz, rows(w_in, 0, di_), dx);
    linear_grad_input(dxbc, rows(w_in, di_, conv_), dx, true);
    linear_grad_input(ddt, rows(w_in, di_ + conv_, h_), dx, true);
  }

  void new_state(int64_t batch, int64_t, InferenceState::Layer& st) const override {
    st.conv_state = Tensor::zeros({batch, conv_, w_ - 1}, prec_.act, prec_.device);
    st.ssm_state = Tensor::zeros({batch, h_, p_, n_}, prec_.wide, prec_.device);
  }

  void step(const Tensor& x, const Tensor& residual, Tensor& out, const Tensor&, Arena& s,
            InferenceState::Layer& st) override {
    int64_t b = x.size(0);
    Tensor z = s.get("z", {b, di_}), xbc = s.get("xbc", {b, conv_}), dt = s.get("dt", {b, h_});
    project_in(x, z, xbc, dt);
    Tensor xbc_act = s.get("xbc_act", {b, conv_});
    conv1d_step(xbc, conv_weight(params_[kConvW]), params_[kConvB], st.conv_state, xbc_act, silu());
    Tensor xs = s.get("x", {b, h_, p_}), B = s.get("B", {b, g_, n_}), C = s.get("C", {b, g_, n_});
    split_columns(xbc_act, {xs, B, C});
    neg_exp(params_[kALog], A_);
    Tensor y = s.get("y", {b, h_, p_});
    ssd_step(xs, dt, A_, B, C, params_[kD], params_[kDtBias], st.ssm_state, y, opt_);
    Tensor yn = s.get("yn", {b, di_}), rstd = s.wide("rstd", {b, g_});
    gated_rmsnorm_forward(y.view({b, di_}), z, params_[kNorm], g_, eps_, yn, rstd);
    linear_add(yn, params_[kOut], residual, out);
  }

 private:
  enum { kIn, kConvW, kConvB, kDtBias, kALog, kD, kNorm, kOut };

  static Conv1dOptions silu() {
    Conv1dOptions o;
    o.silu = true;
    return o;
  }
  Tensor conv_weight(const Tensor& w) const { return w.view({conv_, w_}); }

  void project_in(const Tensor& x, const Tensor& z, const Tensor& xbc, const Tensor& dt) const {
    const Tensor& w = params_[kIn];
    linear(x, rows(w, 0, di_), z);
    linear(x, rows(w, di_, conv_), xbc);
    linear(x, rows(w, di_ + conv_, h_), dt);
  }

  Precision prec_;
  Mamba2Options cfg_;
  int64_t d_, di_, h_, p_, n_, g_, w_, conv_;
  double eps_, std_, out_std_;
  Tensor A_;  // −exp(A_log), refreshed by every forward and step
  SsdOptions opt_;
};

}  // namespace

std::unique_ptr<Sublayer> make_mamba2(const ModelConfig& c, const Precision& p) {
  return std::make_unique<Mamba2>(c, p);
}

}  // namespace mambatron::model_detail
