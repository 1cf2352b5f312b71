// Every op of the engine, declared once. Each dispatches on its tensors' device
// to the CPU reference (cpp/src/ops/cpu/NAME.cpp) or the CUDA version
// (cpp/src/ops/cuda/NAME.cu). Ops write into outputs the caller allocated; the
// forms that return a tensor allocate it.
#pragma once
#include <optional>
#include <string>

#include "mambatron/tensor.h"

namespace mambatron {

// ---------------------------------------------------------------- gemm
// c = alpha · op(a) @ op(b) + beta · c, op(x) = x or xᵀ over the last two dims.
// a: [m, k] (or [k, m] when trans_a), optionally with a leading batch dim;
// b likewise [k, n]; a 2-D operand is broadcast over the other's batch.
// CPU: f32 and f64, bf16/f16 computed in f32. CUDA: bf16 or f16 inputs with
// bf16, f16 or f32 output, or f32 throughout; fp32 accumulation always.
struct GemmOptions {
  bool trans_a = false;
  bool trans_b = false;
  float alpha = 1.0f;
  float beta = 0.0f;
  // When defined (c's shape and dtype, contiguous): c = alpha · op(a) @ op(b) + beta ·
  // addend, and c's old contents are not read. A projection followed by a residual add
  // is then one pass (the epilogue adds; addend may be c itself).
  Tensor addend;
};
void gemm(const Tensor& a, const Tensor& b, Tensor& c, const GemmOptions& opt = {});
Tensor gemm(const Tensor& a, const Tensor& b, const GemmOptions& opt = {},
            std::optional<DType> out_dtype = std::nullopt);

}  // namespace mambatron

namespace mambatron {

// ---------------------------------------------------------------- embedding
// Token embedding. weight [V, d] (f32/f64; on CUDA f32/bf16, with out and dweight each
// bf16/f32 of their own), tokens [b, l] (i32 or i64), out [b, l, d]:
// out[i, t] = weight[tokens[i, t]]. An id outside [0, V) is a ValueError naming it.
// No decode step: every token is looked up on its own (a step is l = 1).
void embedding_forward(const Tensor& weight, const Tensor& tokens, Tensor& out);
// dweight [V, d] (overwritten) = the rows of dout [b, l, d] added into the rows their
// tokens name; rows no token names are 0. With accumulate, each named row's sum is
// added to what dweight holds and the other rows are not touched (gradient
// accumulation over micro-batches). Deterministic: each row adds its positions in
// position order, so the bits do not depend on the thread count.
void embedding_backward(const Tensor& dout, const Tensor& tokens, Tensor& dweight, bool accumulate = false);

// ---------------------------------------------------------------- norms
// All norms: x is [..., d] (its leading dims are the rows), parameters are [d], one
// dtype (f32/f64) throughout; the saved statistics (mean, rstd) have x's dtype and
// one value per row ([...] = x's shape without d), computed with f64 sums. Backwards
// overwrite their gradients. No decode step: rows are independent (a step is l = 1).
// On CUDA: activations bf16 or f32, parameters and their gradients f32 or bf16 (their
// own dtype), statistics f32; statistics are f32 sums and parameter gradients f64
// column sums, both in a fixed order.
//
// RMSNorm: out = x · rstd · weight, rstd = 1 / sqrt(mean(x²) + eps).
void rmsnorm_forward(const Tensor& x, const Tensor& weight, double eps, Tensor& out, Tensor& rstd);
// dout, dx: like x; dweight: [d]. dresidual (optional, like x): the gradient that
// reaches x along the residual stream; then dx = dresidual + the norm's own input
// gradient, in the same pass (dresidual may be dx itself).
void rmsnorm_backward(const Tensor& dout, const Tensor& x, const Tensor& weight, const Tensor& rstd, Tensor& dx,
                      Tensor& dweight, const Tensor& dresidual = Tensor());
// LayerNorm with zero-centred gain: out = (x − mean) · rstd · (1 + gamma) + beta,
// rstd = 1 / sqrt(var + eps) with the biased variance.
void layernorm1p_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps, Tensor& out,
                         Tensor& mean, Tensor& rstd);
// dresidual as in rmsnorm_backward.
void layernorm1p_backward(const Tensor& dout, const Tensor& x, const Tensor& gamma, const Tensor& mean,
                          const Tensor& rstd, Tensor& dx, Tensor& dgamma, Tensor& dbeta,
                          const Tensor& dresidual = Tensor());
// Gated grouped RMSNorm (Mamba-2, norm after the gate): u = y · silu(z); the d
// channels form `groups` groups of d / groups consecutive channels, each normalised
// on its own: out = u · rstd[..., k] · weight, rstd[..., k] = 1 / sqrt(mean_k(u²) + eps).
// y, z, out: [..., d]; weight: [d]; rstd: [..., groups]; groups must divide d.
void gated_rmsnorm_forward(const Tensor& y, const Tensor& z, const Tensor& weight, int64_t groups, double eps,
                           Tensor& out, Tensor& rstd);
// dy, dz: like y; dweight: [d].
void gated_rmsnorm_backward(const Tensor& dout, const Tensor& y, const Tensor& z, const Tensor& weight,
                            const Tensor& rstd, int64_t groups, Tensor& dy, Tensor& dz, Tensor& dweight);

// ---------------------------------------------------------------- activations
// Elementwise, any shape, f32/f64 (bf16/f32 on CUDA, f32 math): out (forward) and dout, dx (backward) have x's
// shape; dx = dout · act'(x) (overwritten). GeLU, squared ReLU and SiLU may write
// out into x itself and dx into dout. No decode step: elementwise ops have no state.
// GeLU, erf form: x · Φ(x) = ½ x (1 + erf(x / √2)).
void gelu_forward(const Tensor& x, Tensor& out);
void gelu_backward(const Tensor& dout, const Tensor& x, Tensor& dx);
// Squared ReLU: max(x, 0)².
void squared_relu_forward(const Tensor& x, Tensor& out);
void squared_relu_backward(const Tensor& dout, const Tensor& x, Tensor& dx);
// SiLU: x · sigmoid(x).
void silu_forward(const Tensor& x, Tensor& out);
void silu_backward(const Tensor& dout, const Tensor& x, Tensor& dx);
// SwiGLU: x [..., 2f] holds a = x[..., :f] then b = x[..., f:]; out [..., f] = silu(a) · b.
// Backward: dout [..., f] -> dx [..., 2f] = [dout · b · silu'(a) | dout · silu(a)].
void swiglu_forward(const Tensor& x, Tensor& out);
void swiglu_backward(const Tensor& dout, const Tensor& x, Tensor& dx);

// ---------------------------------------------------------------- loss (linear + cross-entropy)
// Output projection fused with softmax cross-entropy; the [n, V] logits are never held
// at once. h: [n, d], w: [V, d], targets: [n] i32 or i64. Per position i:
//   logits_i = w · h_i,   ℓ_i = logsumexp(logits_i) − logits_i[targets_i],
//   loss = Σ_i m_i·ℓ_i / Σ_i m_i   over the included positions,
// where i is included when targets_i ≠ ignore_index and m_i > 0. mask: undefined
// (every m_i = 1), u8 [n] (m_i = 1 where nonzero, else 0) or f32/f64 [n] weights
// (finite, >= 0; 0 excludes). Every target other than ignore_index must lie in [0, V)
// (else ValueError, even where masked). No included position: loss 0 and zero gradients.
// Rows are processed chunk_size at a time and the vocabulary vocab_chunk_size rows of
// w at a time (0: all of V), so the scratch is chunk_size × vocab_chunk_size values;
// with several vocabulary chunks the backward computes each logits block twice. The
// results do not depend on the chunk sizes beyond rounding.
// On CUDA: h and dh bf16 or f32 (one dtype), w and dw bf16 or f32 (each its own
// dtype), mask u8 or f32, losses f32; logits in f32 from bf16 gemms when h and w are
// bf16 (f32 gemms otherwise), the softmax gradient in the gemm dtype.
struct LinearCrossEntropyOptions {
  int64_t ignore_index = -100;
  int64_t chunk_size = 4096;
  int64_t vocab_chunk_size = 32768;
  double grad_scale = 1.0;  // backward writes the gradients of grad_scale · loss
  // Backward adds the weight gradient to dw instead of overwriting it (gradient
  // accumulation, tied embeddings); dh is overwritten either way. dw must be f32 on CUDA.
  bool accumulate_dw = false;
};
// Returns the loss. losses (optional, [n], dtype of h; f32 on CUDA) receives ℓ_i at the
// included positions and 0 elsewhere (unweighted: the per-token loss for perplexity).
double linear_cross_entropy_forward(const Tensor& h, const Tensor& w, const Tensor& targets,
                                    const Tensor& mask = Tensor(), const LinearCrossEntropyOptions& opt = {},
                                    Tensor* losses = nullptr);
// The same loss (returned), and overwrites dh [n, d] and dw [V, d] (or adds to dw, see
// accumulate_dw) with the gradients of grad_scale · loss (rows of dh at excluded
// positions are 0).
double linear_cross_entropy_backward(const Tensor& h, const Tensor& w, const Tensor& targets, const Tensor& mask,
                                     Tensor& dh, Tensor& dw, const LinearCrossEntropyOptions& opt = {},
                                     Tensor* losses = nullptr);


// ---------------------------------------------------------------- arithmetic
// Whole-tensor maps for the model's residual adds and small parameter transforms.
// Every tensor of one call: same shape, dtype and device, contiguous (f32/f64 on
// the CPU, bf16/f32 on CUDA; math in f32 or better). out may alias an input.
void add(const Tensor& a, const Tensor& b, Tensor& out);  // out = a + b
void mul(const Tensor& a, const Tensor& b, Tensor& out);  // out = a ⊙ b
void neg_exp(const Tensor& x, Tensor& out);               // out = −exp(x)  (A = −exp(A_log))


// ---------------------------------------------------------------- optimizer (AdamW, gradient norm)
// AdamW on flat buffers, in place. params, grads, exp_avg (m), exp_avg_sq (v): [N], one
// dtype (f32 or f64); decay_mask: u8 [N] (nonzero: the element decays), or undefined
// (every element decays). With t = step (1-based), per element:
//   m ← β1·m + (1 − β1)·g,   v ← β2·v + (1 − β2)·g²,
//   m̂ = m / (1 − β1^t),      v̂ = v / (1 − β2^t),
//   p ← p − lr·wd·p          (where the mask is set; decoupled weight decay),
//   p ← p − lr·m̂ / (sqrt(v̂) + eps).
// Scalars are formed in f64 and rounded once to the dtype; the update runs in the dtype.
struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  int64_t step = 1;
};
void adamw_update(Tensor& params, const Tensor& grads, Tensor& exp_avg, Tensor& exp_avg_sq,
                  const Tensor& decay_mask, const AdamWOptions& opt);
// The same step, also writing params_copy [N] (on params' device) = the new params in
// its dtype (a bf16 working copy for the forward); fused into the same pass on CUDA.
// On CUDA params, grads and the state are f32 and params_copy is bf16 or f32; on the
// CPU params_copy is f32 or f64.
void adamw_update(Tensor& params, const Tensor& grads, Tensor& exp_avg, Tensor& exp_avg_sq,
                  const Tensor& decay_mask, const AdamWOptions& opt, Tensor& params_copy);
// Global L2 norm sqrt(Σ g²) over every element of every tensor (any shapes, contiguous,
// one dtype: f32 or f64 on the CPU, f32 or bf16 on CUDA). Deterministic: f64
// accumulation in a fixed order that does not depend on the thread count; overflow of the squares of huge f64 values is avoided by
// rescaling. Returns NaN if any element is NaN, else inf if any is infinite.
double grad_norm(const std::vector<Tensor>& grads);
// Clipping: norm = grad_norm(grads); when norm is finite and norm > max_norm, every
// element is scaled in place by max_norm / (norm + 1e-6). A non-finite norm leaves the
// gradients untouched (the caller should skip the step). Returns the norm before clipping.
double clip_grad_norm(const std::vector<Tensor>& grads, double max_norm);


// ---------------------------------------------------------------- conv1d
// Causal depthwise conv1d over tokens (MODELS.md §2), channel ch, width w (2..4):
//   pre[t, ch] = bias[ch] + Σ_{k<w} weight[ch, k] · x[t − (w−1) + k, ch]
//   out = SiLU(pre) when opt.silu, else pre
// Positions before 0 read initial_state [b, c, w−1] (oldest first) or zeros. With
// seq_idx (int32 [b, l], document ids non-decreasing along each row) taps never
// cross a document boundary: each document starts on zero padding, except the row's
// first, which starts on initial_state. final_state [b, c, w−1] receives the last
// w−1 inputs of the last document (zeros where it is shorter), the conv_state that
// decoding continues from. Shapes: x, out [b, l, c]; weight [c, w]; bias [c].
// Optional tensors (bias, initial_state, seq_idx, final_state, the optional
// gradients) are passed undefined (Tensor()) when absent; absent inputs act as zeros.
// All float tensors share one dtype (f32 or f64 on the CPU). On CUDA: x, out, the
// states and their gradients bf16 or f32 (one dtype); weight and bias bf16 or f32 of
// their own; dweight and dbias bf16 or f32 of their own again; seq_idx is not checked
// for order there (a tap counts when its id equals the token's).
struct Conv1dOptions {
  bool silu = false;
};
void conv1d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& initial_state,
                    const Tensor& seq_idx, Tensor& out, Tensor& final_state, const Conv1dOptions& opt = {});
// Gradients of conv1d_forward (the same inputs and options) given dout [b, l, c] and,
// optionally, d_final_state [b, c, w−1]. Overwrites dx [b, l, c] and dweight [c, w];
// dbias [c] and d_initial_state [b, c, w−1] are written when defined (the gradient at
// zero when the input is absent). The SiLU input is recomputed.
void conv1d_backward(const Tensor& dout, const Tensor& d_final_state, const Tensor& x, const Tensor& weight,
                     const Tensor& bias, const Tensor& initial_state, const Tensor& seq_idx, Tensor& dx,
                     Tensor& dweight, Tensor& dbias, Tensor& d_initial_state, const Conv1dOptions& opt = {});
// One decode token: x [b, c]; conv_state [b, c, w−1] (the last w−1 inputs, oldest
// first) is read, then shifted in place to take x; out [b, c] = (SiLU of) the conv at
// this token. Matches conv1d_forward continued from conv_state.
void conv1d_step(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& conv_state, Tensor& out,
                 const Conv1dOptions& opt = {});

// ---------------------------------------------------------------- selective scan (Mamba-1)
// Mamba-1 selective scan (MODELS.md §2), per batch row and channel c, whose group is
// γ = c / (d/g):
//   Δ_t = softplus?(delta_t[c] + delta_bias[c])
//   h_t = exp(Δ_t·A[c, :]) ⊙ h_{t−1} + Δ_t·u_t[c]·B_t[γ]     h: [n], h_{−1} = initial_state or 0
//   y_t[c] = (h_t·C_t[γ] + D[c]·u_t[c]) · SiLU(z_t[c])       (the gate only when z is given)
// Shapes: u, delta, z, y [b, l, d]; A [d, n]; B, C [b, l, g, n] with g dividing d;
// D, delta_bias [d]; initial_state, final_state [b, d, n]; seq_idx int32 [b, l].
// All float tensors share one dtype (f32 or f64 on the CPU). On CUDA: u, delta, B,
// C, z, y and their gradients bf16 or f32 (one dtype); A, D, delta_bias, their
// gradients and every state f32; n <= 64; seq_idx is not checked for order there
// (the state resets wherever the id changes). Optional tensors (D, z,
// delta_bias, initial_state, seq_idx, final_state and the optional gradients) are
// passed undefined (Tensor()) when absent; an absent D, delta_bias or initial_state
// acts as zeros. seq_idx: a document id per token, non-decreasing along each row; the
// state resets to 0 where it changes (initial_state feeds the first document of each
// row only; final_state is the state after the last token).
struct SelectiveScanOptions {
  bool delta_softplus = false;  // softplus(v) = log1p(exp(v)), v > 20 → v
};
void selective_scan_forward(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
                            const Tensor& D, const Tensor& z, const Tensor& delta_bias, const Tensor& initial_state,
                            const Tensor& seq_idx, Tensor& y, Tensor& final_state,
                            const SelectiveScanOptions& opt = {});
// Gradients of selective_scan_forward (the same inputs and options) given dy [b, l, d]
// and, optionally, d_final_state [b, d, n]. Overwrites du, ddelta, dA, dB, dC (shapes
// of their inputs) and dz (required exactly when z is given); dD [d], ddelta_bias [d]
// and d_initial_state [b, d, n] are written when defined (the gradient at zero when
// the input is absent). ddelta is the gradient with respect to delta itself (through
// bias and softplus). States are recomputed from checkpoints every 64 tokens, so
// forward saves nothing; backward's extra memory is O(b·d·n) plus, when a group has
// more than 32 channels, partial sums of dB and dC of about b·l·d·n/32 elements each
// (on CUDA: checkpoints of b·l·d·n/64 floats, and dB/dC partials of 2·b·l·d·n/64
// floats when a group has more than 64 channels; cuda/selective_scan.h has the rest).
void selective_scan_backward(const Tensor& dy, const Tensor& d_final_state, const Tensor& u, const Tensor& delta,
                             const Tensor& A, const Tensor& B, const Tensor& C, const Tensor& D, const Tensor& z,
                             const Tensor& delta_bias, const Tensor& initial_state, const Tensor& seq_idx,
                             Tensor& du, Tensor& ddelta, Tensor& dA, Tensor& dB, Tensor& dC, Tensor& dD, Tensor& dz,
                             Tensor& ddelta_bias, Tensor& d_initial_state, const SelectiveScanOptions& opt = {});
// One decode token: u, delta, z [b, d]; A [d, n]; B, C [b, g, n]; D, delta_bias [d]
// (optional; z too); state [b, d, n] is advanced in place (h_{t−1} → h_t) and y [b, d]
// written.
void selective_scan_step(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
                         const Tensor& D, const Tensor& z, const Tensor& delta_bias, Tensor& state, Tensor& y,
                         const SelectiveScanOptions& opt = {});

// ---------------------------------------------------------------- ssd (Mamba-2)
// Mamba-2 state-space scan (MODELS.md §2), per batch row and head j, whose group
// is γ = j / (h/g):
//   Δ_t = clamp(softplus?(dt_t + dt_bias_j), dt_min, dt_max)
//   H_t = exp(Δ_t·A_j)·H_{t−1} + Δ_t·x_t ⊗ B_t[γ]     H: [p, n], H_{−1} = initial_state or 0
//   y_t = H_t·C_t[γ] + D_j·x_t
// Shapes: x, y [b, l, h, p]; dt [b, l, h]; A [h] (negative; callers pass −exp(A_log));
// B, C [b, l, g, n] with g dividing h; D, dt_bias [h]; initial_state, final_state
// [b, h, p, n]; seq_idx int32 [b, l]. All float tensors share one dtype (f32 or f64)
// on the CPU. On CUDA x, dt, B, C, y and their gradients are bf16 or f32 (one dtype),
// and A, D, dt_bias, the states and their gradients f32; seq_idx's order is not
// checked there. Optional tensors (D, dt_bias, initial_state, seq_idx, final_state and
// the optional gradients) are passed undefined (Tensor()) when absent; an absent D,
// dt_bias or initial_state acts as zeros.
// seq_idx: a document id per token, non-decreasing along each row; the state resets
// to 0 where it changes (initial_state feeds the first document of each row only,
// final_state is the state after the last token).
struct SsdOptions {
  // 0: the sequential recurrence. Q > 0: the chunked SSD form (intra-chunk matrices,
  // chunk states, state passing, inter-chunk) with chunks of Q tokens; any l.
  // CUDA always runs the chunked form: 0 picks its default length (128) and longer
  // chunks run as 128 tokens, the same numbers up to rounding.
  int64_t chunk_size = 0;
  bool dt_softplus = false;  // softplus(v) = log1p(exp(v)), v > 20 → v
  // When set, Δ (after softplus) is clamped from below / above; its gradient is 0
  // where clamped. Unset (the default): no clamp.
  std::optional<double> dt_min;
  std::optional<double> dt_max;
};
void ssd_forward(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B, const Tensor& C,
                 const Tensor& D, const Tensor& dt_bias, const Tensor& initial_state, const Tensor& seq_idx,
                 Tensor& y, Tensor& final_state, const SsdOptions& opt = {});
// Gradients of ssd_forward (the same inputs and options) given dy [b, l, h, p] and,
// optionally, d_final_state [b, h, p, n]. Overwrites dx, ddt, dA, dB, dC (shapes of
// their inputs); dD [h], ddt_bias [h] and d_initial_state [b, h, p, n] are written when
// defined (the gradient at zero when the input is absent). ddt is the gradient with
// respect to dt itself (through bias, softplus and clamp). chunk_size picks the
// sequential or the chunked computation, as in forward; both give the same numbers
// up to rounding. States are recomputed, so forward need not save anything.
void ssd_backward(const Tensor& dy, const Tensor& d_final_state, const Tensor& x, const Tensor& dt, const Tensor& A,
                  const Tensor& B, const Tensor& C, const Tensor& D, const Tensor& dt_bias,
                  const Tensor& initial_state, const Tensor& seq_idx, Tensor& dx, Tensor& ddt, Tensor& dA, Tensor& dB,
                  Tensor& dC, Tensor& dD, Tensor& ddt_bias, Tensor& d_initial_state, const SsdOptions& opt = {});
// One decode token: x [b, h, p], dt [b, h], A [h], B, C [b, g, n], D and dt_bias [h]
// (optional); state [b, h, p, n] is advanced in place (H_{t−1} → H_t) and y [b, h, p]
// written. opt.chunk_size is ignored.
void ssd_step(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B, const Tensor& C, const Tensor& D,
              const Tensor& dt_bias, Tensor& state, Tensor& y, const SsdOptions& opt = {});

// ---------------------------------------------------------------- attention
// Causal softmax attention with grouped-query sharing and optional packed documents.
// q: [b, l, hq, p]; k, v: [b, l, hkv, p] with hq a multiple of hkv (query head j
// uses kv head j / (hq / hkv)); any head dim p. seq_idx: optional int32 [b, l]
// document ids, non-decreasing within a row: token i attends to tokens j <= i
// with seq_idx[j] == seq_idx[i]. softmax_scale defaults to 1/sqrt(p).
// Writes out [b, l, hq, p] and lse [b, hq, l] = log Σ_j exp(scale·q_i·k_j),
// the log-sum-exp that backward uses. f32 or f64, all the same dtype; on CUDA the
// activations are bf16 or f32 (one dtype) and lse is f32, and seq_idx is not checked
// for order there (it would cost a wait): ids are compared for equality.
void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, Tensor& lse,
                       const Tensor& seq_idx = Tensor(), std::optional<double> softmax_scale = std::nullopt);
// Gradients of attention_forward: dout, q, k, v, out, lse as above (out and lse from
// the forward) -> dq [b, l, hq, p], dk and dv [b, l, hkv, p] (overwritten; for GQA
// each kv head's gradient sums its query heads in a fixed order).
void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& seq_idx = Tensor(),
                        std::optional<double> softmax_scale = std::nullopt);

// Which implementation runs attention_forward/attention_backward on CUDA:
//   Auto     cuDNN's fused attention where it loads and takes the call (bf16, no
//            seq_idx, head dim a multiple of 8 up to 256), else the built-in kernels;
//   Cudnn    cuDNN only: a call it cannot take raises, naming the reason;
//   Builtin  the built-in kernels only.
// Process-wide; starts from the environment variable MAMBATRON_ATTENTION_ENGINE
// (auto, cudnn or builtin; default auto). Choosing Cudnn where cuDNN is not usable
// raises at once. Either engine's forward feeds either backward (the same lse), and
// both give the same bits on every run.
enum class AttentionEngine { Auto, Cudnn, Builtin };
void set_attention_engine(AttentionEngine engine);
AttentionEngine attention_engine();
// The cuDNN version attention can use (e.g. 91900 for 9.19.0), or 0: no CUDA, built
// without cudnn_frontend, or no libcudnn 9 to load. *why_not (optional) says which.
int64_t cudnn_version(std::string* why_not = nullptr);

// Rotary position embedding, rotate-half convention, on the first
// rotary_dim = rotary_fraction · p dims of every head (rotary_dim must be an even
// integer); the other dims pass through. With r = rotary_dim, for i < r/2:
//   θ = pos · base^(−2i/r), out[i] = x[i]·cos θ − x[i+r/2]·sin θ,
//   out[i+r/2] = x[i+r/2]·cos θ + x[i]·sin θ.
// x, out: [b, l, h, p] (out may be x itself; bf16 or f32 on CUDA). positions:
// optional int32 [b, l], default 0..l−1 in every row (packed documents pass
// positions restarting at 0).
struct RopeOptions {
  double rotary_fraction = 1.0;
  double base = 10000.0;
};
void rope_forward(const Tensor& x, Tensor& out, const Tensor& positions = Tensor(), const RopeOptions& opt = {});
// The gradient of rope_forward: the inverse rotation of dout into dx (dx may be dout).
void rope_backward(const Tensor& dout, Tensor& dx, const Tensor& positions = Tensor(), const RopeOptions& opt = {});

// KV cache for decoding: k_cache, v_cache [b, max_len, hkv, p]; cache_lens int32 [b]
// holds the number of valid entries of each sequence (prompts of different lengths
// share one cache). Writes one token's k, v [b, hkv, p] at position cache_lens[i]
// of each sequence i and adds 1 to cache_lens[i]; a full cache is an error (on
// CUDA, cache_lens is copied to the host for that check). With check_lengths false the
// caller vouches for the lengths (a model keeps its own copy on the host): CUDA then
// skips the copy and its wait, and a sequence whose length is out of range is left
// unchanged instead of raising; the CPU checks either way.
void kv_cache_append(const Tensor& k, const Tensor& v, Tensor& k_cache, Tensor& v_cache, Tensor& cache_lens,
                     bool check_lengths = true);
// One decode token: q [b, hq, p] attends to the first cache_lens[i] (>= 1) entries of
// its sequence's cache (grouped-query as in attention_forward) -> out [b, hq, p].
// After kv_cache_append the new token attends to itself. On CUDA cache_lens is
// not checked (no wait in the decode loop): lengths are clamped to [0, max_len] and
// a sequence with none gets zeros.
void attention_decode(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& cache_lens,
                      Tensor& out, std::optional<double> softmax_scale = std::nullopt);


}  // namespace mambatron
