// Attention family (attention, RoPE, KV cache): argument checks and dispatch.
// CPU: ops/cpu/attention.cpp and ops/cpu/rope.cpp (f32 or f64); CUDA:
// ops/cuda/attention.cu, attention_backward.cu, attention_decode.cu and rope.cu
// (activations bf16 or f32, lse f32).
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <string>

#include "backend.h"
#include "cpu/attention.h"
#ifdef MAMBATRON_WITH_CUDA
#include "cuda/attention.h"
#include "cuda/attention_cudnn.h"
#endif
#include "mambatron/check.h"
#include "mambatron/cuda.h"
#include "mambatron/ops.h"

namespace mambatron {

namespace {

// The first tensor of an op: defined, f32 or f64 on the CPU (bf16 or f32 on CUDA),
// `dims` dims laid out as `layout`, contiguous.
void check_leading(const Tensor& t, const char* op, const char* name, int dims, const char* layout) {
  check_defined(t, op, name);
  if (t.is_cuda())
    MT_CHECK(t.dtype() == DType::bf16 || t.dtype() == DType::f32, TypeError, op, ": argument '", name,
             "' has dtype ", dtype_name(t.dtype()), ", expected bf16 or f32 on CUDA");
  else
    MT_CHECK(t.dtype() == DType::f32 || t.dtype() == DType::f64, TypeError, op, ": argument '", name,
             "' has dtype ", dtype_name(t.dtype()), ", expected f32 or f64");
  MT_CHECK(t.dim() == dims, ValueError, op, ": argument '", name, "' has shape ", shape_str(t.shape()),
           ", expected ", dims, " dims ", layout);
  check_contiguous(t, op, name);
}

// Another floating tensor of the op: like `ref` in dtype and device, exactly `shape`, contiguous.
void check_like(const Tensor& t, const Tensor& ref, const char* op, const char* name, const char* ref_name,
                const Shape& shape) {
  check_defined(t, op, name);
  check_same_device(t, ref, op, name, ref_name);
  check_same_dtype(t, ref, op, name, ref_name);
  check_shape(t, op, name, shape);
  check_contiguous(t, op, name);
}

// lse: like `ref` on the CPU, f32 on CUDA.
void check_lse(const Tensor& t, const Tensor& ref, const char* op, const Shape& shape) {
  if (!ref.is_cuda()) return check_like(t, ref, op, "lse", "q", shape);
  check_defined(t, op, "lse");
  check_same_device(t, ref, op, "lse", "q");
  check_dtype(t, op, "lse", DType::f32);
  check_shape(t, op, "lse", shape);
  check_contiguous(t, op, "lse");
}

// An int32 index tensor (seq_idx, positions, cache_lens) on `ref`'s device.
void check_index(const Tensor& t, const Tensor& ref, const char* op, const char* name, const char* ref_name,
                 const Shape& shape) {
  check_defined(t, op, name);
  check_same_device(t, ref, op, name, ref_name);
  check_dtype(t, op, name, DType::i32);
  check_shape(t, op, name, shape);
  check_contiguous(t, op, name);
}

// The kv heads of `kv` (dim `dim`) must divide the hq query heads.
int64_t kv_heads(const Tensor& kv, int dim, int64_t hq, const char* op, const char* name) {
  const int64_t hkv = kv.size(dim);
  MT_CHECK(hkv >= 1 && hq % hkv == 0, ValueError, op, ": argument '", name, "' has shape ", shape_str(kv.shape()),
           " with ", hkv, " kv heads, expected a divisor of the ", hq, " query heads of 'q'");
  return hkv;
}

double resolve_scale(std::optional<double> scale, int64_t p, const char* op) {
  MT_CHECK(p >= 1, ValueError, op, ": argument 'q' has head dim ", p, ", expected at least 1");
  MT_CHECK(!scale || std::isfinite(*scale), ValueError, op, ": softmax_scale is ", scale.value_or(0),
           ", expected a finite number");
  return scale ? *scale : 1.0 / std::sqrt(double(p));
}

// Documents of a packed row must be contiguous runs: ids non-decreasing along the row.
// Checked on the CPU only: on CUDA it would cost a copy to the host and a wait on
// every call; the CUDA kernels mask by id equality, which is the same for valid ids.
void check_documents(const Tensor& seq_idx, const char* op) {
  const int32_t* s = seq_idx.data<int32_t>();
  const int64_t b = seq_idx.size(0), l = seq_idx.size(1);
  for (int64_t bi = 0; bi < b; ++bi)
    for (int64_t i = 1; i < l; ++i)
      MT_CHECK(s[bi * l + i] >= s[bi * l + i - 1], ValueError, op, ": argument 'seq_idx' must be non-decreasing ",
               "within each row (packed documents); row ", bi, " has ", s[bi * l + i], " at position ", i,
               " after ", s[bi * l + i - 1]);
}

// Shared checks of q, k, v (and the seq_idx, when given) of forward and backward.
void check_qkv(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& seq_idx, const char* op) {
  check_leading(q, op, "q", 4, "[b, l, hq, p]");
  const int64_t b = q.size(0), l = q.size(1), hq = q.size(2), p = q.size(3);
  check_defined(k, op, "k");
  check_same_device(k, q, op, "k", "q");
  check_same_dtype(k, q, op, "k", "q");
  MT_CHECK(k.dim() == 4, ValueError, op, ": argument 'k' has shape ", shape_str(k.shape()),
           ", expected 4 dims [b, l, hkv, p]");
  const int64_t hkv = kv_heads(k, 2, hq, op, "k");
  check_like(k, q, op, "k", "q", {b, l, hkv, p});
  check_like(v, q, op, "v", "q", {b, l, hkv, p});
  if (seq_idx.defined()) check_index(seq_idx, q, op, "seq_idx", "q", {b, l});
}

int64_t rotary_dim_of(const Tensor& x, const RopeOptions& opt, const char* op) {
  const int64_t p = x.size(3);
  MT_CHECK(opt.rotary_fraction >= 0 && opt.rotary_fraction <= 1, ValueError, op, ": rotary_fraction is ",
           opt.rotary_fraction, ", expected a number in [0, 1]");
  MT_CHECK(std::isfinite(opt.base) && opt.base > 0, ValueError, op, ": base is ", opt.base,
           ", expected a positive number");
  const double r = opt.rotary_fraction * double(p);
  const int64_t rd = std::llround(r);
  MT_CHECK(std::fabs(r - double(rd)) < 1e-9 && rd % 2 == 0, ValueError, op, ": rotary_fraction ",
           opt.rotary_fraction, " of head dim ", p, " gives rotary_dim ", r, ", expected an even integer");
  return rd;
}

void rope(const Tensor& x, Tensor& out, const Tensor& positions, const RopeOptions& opt, const char* op,
          const char* x_name, const char* out_name, bool inverse) {
  check_leading(x, op, x_name, 4, "[b, l, h, p]");
  check_like(out, x, op, out_name, x_name, x.shape());
  if (positions.defined()) check_index(positions, x, op, "positions", x_name, {x.size(0), x.size(1)});
  const int64_t rd = rotary_dim_of(x, opt, op);
  if (x.numel() == 0) return;
  MT_DISPATCH(x, rope_apply, x, out, positions, rd, opt.base, inverse);
}

AttentionEngine parse_engine(const std::string& name, const char* where) {
  if (name == "auto") return AttentionEngine::Auto;
  if (name == "cudnn") return AttentionEngine::Cudnn;
  if (name == "builtin") return AttentionEngine::Builtin;
  throw ValueError(detail::cat(where, " is '", name, "', expected auto, cudnn or builtin"));
}

std::atomic<int>& engine_slot() {
  static std::atomic<int> slot{[] {
    const char* env = std::getenv("MAMBATRON_ATTENTION_ENGINE");
    return int(env && *env ? parse_engine(env, "MAMBATRON_ATTENTION_ENGINE") : AttentionEngine::Auto);
  }()};
  return slot;
}

}  // namespace

int64_t cudnn_version(std::string* why_not) {
#ifdef MAMBATRON_WITH_CUDA
  if (!cuda_available()) {
    if (why_not) *why_not = "no usable CUDA device";
    return 0;
  }
  return cuda::cudnn_attention_version(why_not);
#else
  if (why_not) *why_not = "this build has no CUDA backend";
  return 0;
#endif
}

void set_attention_engine(AttentionEngine engine) {
  if (engine == AttentionEngine::Cudnn) {
    std::string why;
    MT_CHECK(cudnn_version(&why) != 0, Error, "set_attention_engine: cuDNN is not usable here: ", why);
  }
  engine_slot().store(int(engine));
}

AttentionEngine attention_engine() { return AttentionEngine(engine_slot().load()); }

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, Tensor& lse,
                       const Tensor& seq_idx, std::optional<double> softmax_scale) {
  const char* op = "attention_forward";
  check_qkv(q, k, v, seq_idx, op);
  const int64_t b = q.size(0), l = q.size(1), hq = q.size(2);
  check_like(out, q, op, "out", "q", q.shape());
  check_lse(lse, q, op, {b, hq, l});
  const double scale = resolve_scale(softmax_scale, q.size(3), op);
  if (out.numel() == 0) return;
  if (seq_idx.defined() && !q.is_cuda()) check_documents(seq_idx, op);
  MT_DISPATCH(q, attention_forward, q, k, v, out, lse, seq_idx, scale);
}

void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                        const Tensor& lse, Tensor& dq, Tensor& dk, Tensor& dv, const Tensor& seq_idx,
                        std::optional<double> softmax_scale) {
  const char* op = "attention_backward";
  check_qkv(q, k, v, seq_idx, op);
  const int64_t b = q.size(0), l = q.size(1), hq = q.size(2);
  check_like(dout, q, op, "dout", "q", q.shape());
  check_like(out, q, op, "out", "q", q.shape());
  check_lse(lse, q, op, {b, hq, l});
  check_like(dq, q, op, "dq", "q", q.shape());
  check_like(dk, q, op, "dk", "q", k.shape());
  check_like(dv, q, op, "dv", "q", v.shape());
  const double scale = resolve_scale(softmax_scale, q.size(3), op);
  if (dq.numel() == 0 && dk.numel() == 0) return;
  if (seq_idx.defined() && !q.is_cuda()) check_documents(seq_idx, op);
  MT_DISPATCH(q, attention_backward, dout, q, k, v, out, lse, dq, dk, dv, seq_idx, scale);
}

void rope_forward(const Tensor& x, Tensor& out, const Tensor& positions, const RopeOptions& opt) {
  rope(x, out, positions, opt, "rope_forward", "x", "out", false);
}

void rope_backward(const Tensor& dout, Tensor& dx, const Tensor& positions, const RopeOptions& opt) {
  rope(dout, dx, positions, opt, "rope_backward", "dout", "dx", true);
}

void kv_cache_append(const Tensor& k, const Tensor& v, Tensor& k_cache, Tensor& v_cache, Tensor& cache_lens,
                     bool check_lengths) {
  const char* op = "kv_cache_append";
  check_leading(k, op, "k", 3, "[b, hkv, p]");
  const int64_t b = k.size(0), hkv = k.size(1), p = k.size(2);
  check_like(v, k, op, "v", "k", k.shape());
  check_defined(k_cache, op, "k_cache");
  MT_CHECK(k_cache.dim() == 4, ValueError, op, ": argument 'k_cache' has shape ", shape_str(k_cache.shape()),
           ", expected 4 dims [b, max_len, hkv, p] = [", b, ", max_len, ", hkv, ", ", p, "]");
  const int64_t max_len = k_cache.size(1);
  check_like(k_cache, k, op, "k_cache", "k", {b, max_len, hkv, p});
  check_like(v_cache, k, op, "v_cache", "k", {b, max_len, hkv, p});
  check_index(cache_lens, k, op, "cache_lens", "k", {b});
  // Check every sequence before writing any, so that an error leaves the cache as it was.
  // On CUDA the lengths come to the host for this (a small copy and a wait), unless the
  // caller vouches for them.
  if (check_lengths || !cache_lens.is_cuda()) {
    const Tensor host_lens = cache_lens.is_cuda() ? cache_lens.to(Device::cpu()) : cache_lens;
    const int32_t* lens = host_lens.data<int32_t>();
    for (int64_t bi = 0; bi < b; ++bi)
      MT_CHECK(lens[bi] >= 0 && lens[bi] < max_len, ValueError, op, ": argument 'cache_lens' has ", lens[bi],
               " at sequence ", bi, ", expected 0 <= cache_lens < max_len = ", max_len,
               lens[bi] >= max_len ? " (the cache is full)" : "");
  }
  MT_DISPATCH(k, kv_cache_append, k, v, k_cache, v_cache, cache_lens);
}

void attention_decode(const Tensor& q, const Tensor& k_cache, const Tensor& v_cache, const Tensor& cache_lens,
                      Tensor& out, std::optional<double> softmax_scale) {
  const char* op = "attention_decode";
  check_leading(q, op, "q", 3, "[b, hq, p]");
  const int64_t b = q.size(0), hq = q.size(1), p = q.size(2);
  check_defined(k_cache, op, "k_cache");
  check_same_device(k_cache, q, op, "k_cache", "q");
  check_same_dtype(k_cache, q, op, "k_cache", "q");
  MT_CHECK(k_cache.dim() == 4, ValueError, op, ": argument 'k_cache' has shape ", shape_str(k_cache.shape()),
           ", expected 4 dims [b, max_len, hkv, p]");
  const int64_t max_len = k_cache.size(1), hkv = kv_heads(k_cache, 2, hq, op, "k_cache");
  check_like(k_cache, q, op, "k_cache", "q", {b, max_len, hkv, p});
  check_like(v_cache, q, op, "v_cache", "q", {b, max_len, hkv, p});
  check_index(cache_lens, q, op, "cache_lens", "q", {b});
  check_like(out, q, op, "out", "q", q.shape());
  const double scale = resolve_scale(softmax_scale, p, op);
  // On CUDA the lengths stay on the device (no wait in the decode loop); the kernel
  // clamps them to [0, max_len] and gives zeros for an empty sequence.
  if (!q.is_cuda()) {
    const int32_t* lens = cache_lens.data<int32_t>();
    for (int64_t bi = 0; bi < b; ++bi)
      MT_CHECK(lens[bi] >= 1 && lens[bi] <= max_len, ValueError, op, ": argument 'cache_lens' has ", lens[bi],
               " at sequence ", bi, ", expected 1 <= cache_lens <= max_len = ", max_len,
               " (append the token's k and v before attending)");
  }
  if (out.numel() == 0) return;
  MT_DISPATCH(q, attention_decode, q, k_cache, v_cache, cache_lens, out, scale);
}

}  // namespace mambatron
