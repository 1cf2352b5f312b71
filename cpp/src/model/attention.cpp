// Self-attention (MODELS.md §2): one qkv projection packed per kv group as
// [q heads of the group | k | v] (each head p wide), optional RoPE on the first
// rotary_fraction·p dims of q and k, causal grouped-query attention, o_proj.
#include <cmath>

#include "internal.h"
#include "mambatron/ops.h"

namespace mambatron::model_detail {

namespace {

class Attention final : public Sublayer {
 public:
  Attention(const ModelConfig& c, const Precision& prec)
      : d_(c.d_model),
        hq_(c.attention.num_heads),
        hkv_(c.attention.num_kv_heads),
        p_(c.attention.head_dim),
        per_group_(hq_ / hkv_),
        std_(c.init_std),
        out_std_(c.init_std / std::sqrt(2.0 * double(c.num_layers()))),
        prec_(prec) {
    rope_.rotary_fraction = c.attention.rotary_fraction;
    rope_.base = c.attention.rope_base;
  }

  std::vector<ParamSpec> specs() const override {
    return {
        {"mixer.qkv_proj.weight", {(hq_ + 2 * hkv_) * p_, d_}, {InitRule::normal, std_}, true},
        {"mixer.o_proj.weight", {d_, hq_ * p_}, {InitRule::normal, out_std_}, true},
    };
  }

  void forward(const Tensor& x, const Tensor& residual, Tensor& out, const Batch& batch, Arena& s, Arena& scratch,
               InferenceState::Layer* state) override {
    int64_t b = batch.b, l = batch.l;
    Tensor qkv = scratch.get("qkv", {b, l, (hq_ + 2 * hkv_) * p_});
    Tensor q = s.get("q", {b, l, hq_, p_}), k = s.get("k", {b, l, hkv_, p_}), v = s.get("v", {b, l, hkv_, p_});
    project_qkv(x, qkv, q, k, v, b, l, batch.positions);
    Tensor o = s.get("o", {b, l, hq_, p_}), lse = s.wide("lse", {b, hq_, l});
    attention_forward(q, k, v, o, lse, batch.seq_idx);
    if (state) {
      state->k_cache.narrow(1, 0, l).copy_(k);
      state->v_cache.narrow(1, 0, l).copy_(v);
      state->cache_lens.fill_(double(l));
    }
    linear_add(o, params_[kO], residual, out);
  }

  void backward(const Tensor& dout, const Tensor& x, Tensor& dx, const Batch& batch, Arena& s, Arena& scratch,
                Grads& grads) override {
    int64_t b = batch.b, l = batch.l;
    Tensor q = s.get("q", {b, l, hq_, p_}), k = s.get("k", {b, l, hkv_, p_}), v = s.get("v", {b, l, hkv_, p_});
    Tensor o = s.get("o", {b, l, hq_, p_}), lse = s.wide("lse", {b, hq_, l});
    Tensor d_o = scratch.get("d_o", {b, l, hq_, p_});
    linear_grad_weight(dout, o, grads[kO], grads.accumulate());
    linear_grad_input(dout, params_[kO], d_o);
    Tensor dq = scratch.get("d_q", {b, l, hq_, p_}), dk = scratch.get("d_k", {b, l, hkv_, p_}), dv = scratch.get("d_v", {b, l, hkv_, p_});
    attention_backward(d_o, q, k, v, o, lse, dq, dk, dv, batch.seq_idx);
    if (rope_.rotary_fraction > 0) {
      rope_backward(dq, dq, batch.positions, rope_);
      rope_backward(dk, dk, batch.positions, rope_);
    }
    Tensor dqkv = scratch.get("d_qkv", {b, l, (hq_ + 2 * hkv_) * p_});
    Tensor packed = grouped(dqkv, b, l);
    packed.narrow(3, 0, per_group_).copy_(dq.view({b, l, hkv_, per_group_, p_}));
    packed.narrow(3, per_group_, 1).copy_(dk.view({b, l, hkv_, 1, p_}));
    packed.narrow(3, per_group_ + 1, 1).copy_(dv.view({b, l, hkv_, 1, p_}));
    linear_grad_weight(dqkv, x, grads[kQkv], grads.accumulate());
    linear_grad_input(dqkv, params_[kQkv], dx);
  }

  void new_state(int64_t batch, int64_t max_len, InferenceState::Layer& st) const override {
    st.k_cache = Tensor::zeros({batch, max_len, hkv_, p_}, prec_.act, prec_.device);
    st.v_cache = Tensor::zeros({batch, max_len, hkv_, p_}, prec_.act, prec_.device);
    st.cache_lens = Tensor::zeros({batch}, DType::i32, prec_.device);
  }

  void step(const Tensor& x, const Tensor& residual, Tensor& out, const Tensor& positions, Arena& s,
            InferenceState::Layer& st) override {
    int64_t b = x.size(0);
    Tensor qkv = s.get("qkv", {b, 1, (hq_ + 2 * hkv_) * p_});
    Tensor q = s.get("q", {b, 1, hq_, p_}), k = s.get("k", {b, 1, hkv_, p_}), v = s.get("v", {b, 1, hkv_, p_});
    project_qkv(x, qkv, q, k, v, b, 1, positions);
    // Model::step checked every length against max_len on the host: no wait here.
    kv_cache_append(k.view({b, hkv_, p_}), v.view({b, hkv_, p_}), st.k_cache, st.v_cache, st.cache_lens,
                    /*check_lengths=*/false);
    Tensor o = s.get("o", {b, hq_, p_});
    attention_decode(q.view({b, hq_, p_}), st.k_cache, st.v_cache, st.cache_lens, o);
    linear_add(o, params_[kO], residual, out);
  }

 private:
  enum { kQkv, kO };

  // qkv [b, l, (hq + 2·hkv)·p] seen as [b, l, hkv, hq/hkv + 2, p]: per kv group its
  // query heads, then k, then v.
  Tensor grouped(const Tensor& qkv, int64_t b, int64_t l) const {
    return qkv.view({b, l, hkv_, per_group_ + 2, p_});
  }

  void project_qkv(const Tensor& x, const Tensor& qkv, Tensor& q, Tensor& k, Tensor& v, int64_t b, int64_t l,
                   const Tensor& positions) const {
    linear(x, params_[kQkv], qkv);
    Tensor packed = grouped(qkv, b, l);
    q.view({b, l, hkv_, per_group_, p_}).copy_(packed.narrow(3, 0, per_group_));
    k.view({b, l, hkv_, 1, p_}).copy_(packed.narrow(3, per_group_, 1));
    v.view({b, l, hkv_, 1, p_}).copy_(packed.narrow(3, per_group_ + 1, 1));
    if (rope_.rotary_fraction > 0) {
      rope_forward(q, q, positions, rope_);
      rope_forward(k, k, positions, rope_);
    }
  }

  int64_t d_, hq_, hkv_, p_, per_group_;
  double std_, out_std_;
  Precision prec_;
  RopeOptions rope_;
};

}  // namespace

std::unique_ptr<Sublayer> make_attention(const ModelConfig& c, const Precision& p) {
  return std::make_unique<Attention>(c, p);
}

}  // namespace mambatron::model_detail
