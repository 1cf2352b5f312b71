// Mamba-1 mixer (MODELS.md §2): in_proj -> x | z; x = SiLU(conv1d(x));
// x_proj -> dt_low | B | C (B, C shared by every channel: one group);
// delta = dt_low · dt_projᵀ, scanned with delta_bias = dt_proj.bias and softplus;
// A = −exp(A_log); D and the SiLU(z) gate inside the scan; out_proj.
#include <cmath>

#include "internal.h"
#include "mambatron/ops.h"

namespace mambatron::model_detail {

namespace {

class Mamba1 final : public Sublayer {
 public:
  Mamba1(const ModelConfig& c, const Precision& prec)
      : prec_(prec),
        cfg_(c.mamba1),
        d_(c.d_model),
        di_(c.mamba1_d_inner()),
        n_(c.mamba1.d_state),
        r_(c.mamba1.dt_rank),
        w_(c.mamba1.d_conv),
        std_(c.init_std),
        out_std_(c.init_std / std::sqrt(2.0 * double(c.num_layers()))),
        A_(Tensor::empty({di_, n_}, prec.wide, prec.device)) {
    opt_.delta_softplus = true;
  }

  std::vector<ParamSpec> specs() const override {
    double conv_bound = 1.0 / std::sqrt(double(w_));  // kaiming uniform (a = √5) at fan-in w
    double dt_bound = 1.0 / std::sqrt(double(r_));
    return {
        {"mixer.in_proj.weight", {2 * di_, d_}, {InitRule::normal, std_}, true},
        {"mixer.conv1d.weight", {di_, 1, w_}, {InitRule::uniform, -conv_bound, conv_bound}, true},
        {"mixer.conv1d.bias", {di_}, {InitRule::uniform, -conv_bound, conv_bound}, false},
        {"mixer.x_proj.weight", {r_ + 2 * n_, di_}, {InitRule::normal, std_}, true},
        {"mixer.dt_proj.weight", {di_, r_}, {InitRule::uniform, -dt_bound, dt_bound}, true},
        {"mixer.dt_proj.bias", {di_}, {InitRule::dt_bias, cfg_.dt_min, cfg_.dt_max, cfg_.dt_init_floor}, false, true},
        {"mixer.A_log", {di_, n_}, {InitRule::s4d_real}, false, true},
        {"mixer.D", {di_}, {InitRule::constant, 1.0}, false, true},
        {"mixer.out_proj.weight", {d_, di_}, {InitRule::normal, out_std_}, true},
    };
  }

  void forward(const Tensor& x, const Tensor& residual, Tensor& out, const Batch& batch, Arena& s, Arena&,
               InferenceState::Layer* state) override {
    int64_t b = batch.b, l = batch.l;
    Tensor xin = s.get("xin", {b, l, di_}), z = s.get("z", {b, l, di_}), u = s.get("u", {b, l, di_});
    linear(x, rows(params_[kIn], 0, di_), xin);
    linear(x, rows(params_[kIn], di_, di_), z);
    Tensor conv_final = state ? state->conv_state : Tensor();
    conv1d_forward(xin, conv_weight(params_[kConvW]), params_[kConvB], Tensor(), batch.seq_idx, u, conv_final, silu());
    Tensor dtl = s.get("dt_low", {b, l, r_}), B = s.get("B", {b, l, 1, n_}), C = s.get("C", {b, l, 1, n_});
    Tensor delta = s.get("delta", {b, l, di_}), y = s.get("y", {b, l, di_});
    project_x(u, dtl, B, C, delta);
    neg_exp(params_[kALog], A_);
    Tensor ssm_final = state ? state->ssm_state : Tensor();
    selective_scan_forward(u, delta, A_, B, C, params_[kD], z, params_[kDtBias], Tensor(), batch.seq_idx, y,
                           ssm_final, opt_);
    linear_add(y, params_[kOut], residual, out);
  }

  void backward(const Tensor& dout, const Tensor& x, Tensor& dx, const Batch& batch, Arena& s, Arena& scratch,
                Grads& grads) override {
    int64_t b = batch.b, l = batch.l;
    Tensor xin = s.get("xin", {b, l, di_}), z = s.get("z", {b, l, di_}), u = s.get("u", {b, l, di_});
    Tensor dtl = s.get("dt_low", {b, l, r_}), B = s.get("B", {b, l, 1, n_}), C = s.get("C", {b, l, 1, n_});
    Tensor delta = s.get("delta", {b, l, di_}), y = s.get("y", {b, l, di_});

    Tensor dy = scratch.get("d_y", {b, l, di_});
    const bool acc = grads.accumulate();
    linear_grad_weight(dout, y, grads[kOut], acc);
    linear_grad_input(dout, params_[kOut], dy);

    Tensor du = scratch.get("d_u", {b, l, di_}), ddelta = scratch.get("d_delta", {b, l, di_}), dz = scratch.get("d_z", {b, l, di_});
    Tensor dA = scratch.wide("d_A", {di_, n_}), dB = scratch.get("d_B", {b, l, 1, n_}), dC = scratch.get("d_C", {b, l, 1, n_});
    Tensor dD = grads.out(kD), ddt_bias = grads.out(kDtBias), no_grad;
    selective_scan_backward(dy, Tensor(), u, delta, A_, B, C, params_[kD], z, params_[kDtBias], Tensor(),
                            batch.seq_idx, du, ddelta, dA, dB, dC, dD, dz, ddt_bias, no_grad, opt_);
    mul_into(grads.out(kALog), dA, A_);  // A = −exp(A_log): dA_log = dA · A

    // delta = dt_low · W_dtᵀ, then [dt_low | B | C] = u · W_xᵀ.
    Tensor ddtl = scratch.get("d_dt_low", {b, l, r_});
    linear_grad_weight(ddelta, dtl, grads[kDtW], acc);
    linear_grad_input(ddelta, params_[kDtW], ddtl);
    const Tensor &wx = params_[kX], &dwx = grads[kX];
    linear_grad_weight(ddtl, u, rows(dwx, 0, r_), acc);
    linear_grad_weight(dB, u, rows(dwx, r_, n_), acc);
    linear_grad_weight(dC, u, rows(dwx, r_ + n_, n_), acc);
    linear_grad_input(ddtl, rows(wx, 0, r_), du, true);
    linear_grad_input(dB, rows(wx, r_, n_), du, true);
    linear_grad_input(dC, rows(wx, r_ + n_, n_), du, true);

    Tensor dxin = scratch.get("d_xin", {b, l, di_});
    Tensor dconv_w = conv_weight(grads.out(kConvW)), dconv_b = grads.out(kConvB);
    conv1d_backward(du, Tensor(), xin, conv_weight(params_[kConvW]), params_[kConvB], Tensor(), batch.seq_idx, dxin,
                    dconv_w, dconv_b, no_grad, silu());

    const Tensor &w_in = params_[kIn], &dw_in = grads[kIn];
    linear_grad_weight(dxin, x, rows(dw_in, 0, di_), acc);
    linear_grad_weight(dz, x, rows(dw_in, di_, di_), acc);
    linear_grad_input(dxin, rows(w_in, 0, di_), dx);
    linear_grad_input(dz, rows(w_in, di_, di_), dx, true);
  }

  void new_state(int64_t batch, int64_t, InferenceState::Layer& st) const override {
    st.conv_state = Tensor::zeros({batch, di_, w_ - 1}, prec_.act, prec_.device);
    st.ssm_state = Tensor::zeros({batch, di_, n_}, prec_.wide, prec_.device);
  }

  void step(const Tensor& x, const Tensor& residual, Tensor& out, const Tensor&, Arena& s,
            InferenceState::Layer& st) override {
    int64_t b = x.size(0);
    Tensor xin = s.get("xin", {b, di_}), z = s.get("z", {b, di_}), u = s.get("u", {b, di_});
    linear(x, rows(params_[kIn], 0, di_), xin);
    linear(x, rows(params_[kIn], di_, di_), z);
    conv1d_step(xin, conv_weight(params_[kConvW]), params_[kConvB], st.conv_state, u, silu());
    Tensor dtl = s.get("dt_low", {b, r_}), B = s.get("B", {b, 1, n_}), C = s.get("C", {b, 1, n_});
    Tensor delta = s.get("delta", {b, di_}), y = s.get("y", {b, di_});
    project_x(u, dtl, B, C, delta);
    neg_exp(params_[kALog], A_);
    selective_scan_step(u, delta, A_, B, C, params_[kD], z, params_[kDtBias], st.ssm_state, y, opt_);
    linear_add(y, params_[kOut], residual, out);
  }

 private:
  enum { kIn, kConvW, kConvB, kX, kDtW, kDtBias, kALog, kD, kOut };

  static Conv1dOptions silu() {
    Conv1dOptions o;
    o.silu = true;
    return o;
  }
  Tensor conv_weight(const Tensor& w) const { return w.view({di_, w_}); }

  // [dt_low | B | C] = u · W_xᵀ (three row blocks), delta = dt_low · W_dtᵀ.
  void project_x(const Tensor& u, const Tensor& dtl, const Tensor& B, const Tensor& C, const Tensor& delta) const {
    const Tensor& wx = params_[kX];
    linear(u, rows(wx, 0, r_), dtl);
    linear(u, rows(wx, r_, n_), B);
    linear(u, rows(wx, r_ + n_, n_), C);
    linear(dtl, params_[kDtW], delta);
  }

  Precision prec_;
  Mamba1Options cfg_;
  int64_t d_, di_, n_, r_, w_;
  double std_, out_std_;
  Tensor A_;  // −exp(A_log), refreshed by every forward and step
  SelectiveScanOptions opt_;
};

}  // namespace

std::unique_ptr<Sublayer> make_mamba1(const ModelConfig& c, const Precision& p) {
  return std::make_unique<Mamba1>(c, p);
}

}  // namespace mambatron::model_detail
