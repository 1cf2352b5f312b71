// ssd (Mamba-2 scan): argument checks and dispatch. CPU: ops/cpu/ssd*.cpp; CUDA:
// ops/cuda/ssd*.cu. On the CPU every float tensor has x's dtype (f32 or f64); on CUDA
// the activations share x's dtype (bf16 or f32) while A, D, dt_bias, the states and
// their gradients are f32.
#include <cmath>

#include "mambatron/check.h"
#include "mambatron/ops.h"
#include "backend.h"
#include "cpu/ssd.h"
#ifdef MAMBATRON_WITH_CUDA
#include "cuda/ssd.h"
#endif

namespace mambatron {

namespace {

// Sizes of one SSD problem, taken from x [b, l, h, p] and B [b, l, g, n].
struct Dims {
  int64_t b, l, h, p, g, n;
};

// A float tensor of the op: defined, the dtype of `ref`, its device, exactly `shape`, contiguous.
void check_float(const Tensor& t, const Tensor& ref, const char* op, const char* name, const char* ref_name,
                 const Shape& shape) {
  check_defined(t, op, name);
  check_same_dtype(t, ref, op, name, ref_name);
  check_same_device(t, ref, op, name, ref_name);
  check_shape(t, op, name, shape);
  check_contiguous(t, op, name);
}

// A per-head parameter, a state or a gradient of one: like x on the CPU, f32 on CUDA.
void check_f32_on_cuda(const Tensor& t, const Tensor& x, const char* op, const char* name, const Shape& shape) {
  if (!x.is_cuda()) return check_float(t, x, op, name, "x", shape);
  check_defined(t, op, name);
  check_same_device(t, x, op, name, "x");
  check_dtype(t, op, name, DType::f32);
  check_shape(t, op, name, shape);
  check_contiguous(t, op, name);
}

void check_optional_f32_on_cuda(const Tensor& t, const Tensor& x, const char* op, const char* name,
                                const Shape& shape) {
  if (t.defined()) check_f32_on_cuda(t, x, op, name, shape);
}

// The tensor that fixes the activation dtype: f32 or f64 on the CPU (the reference
// computes in these only), bf16 or f32 on CUDA.
void check_x(const Tensor& x, const char* op, const char* name, int dims, const char* layout) {
  check_defined(x, op, name);
  if (x.is_cuda())
    MT_CHECK(x.dtype() == DType::bf16 || x.dtype() == DType::f32, TypeError, op, ": argument '", name,
             "' has dtype ", dtype_name(x.dtype()), ", expected bf16 or f32 on CUDA");
  else
    MT_CHECK(x.dtype() == DType::f32 || x.dtype() == DType::f64, TypeError, op, ": argument '", name,
             "' has dtype ", dtype_name(x.dtype()), ", expected f32 or f64");
  MT_CHECK(x.dim() == dims, ValueError, op, ": argument '", name, "' has shape ", shape_str(x.shape()),
           ", expected ", dims, " dims ", layout);
  check_contiguous(x, op, name);
}

// B: [..., g, n] with g dividing h; returns g and n.
void check_groups(const Tensor& B, const Tensor& x, const char* op, const Shape& lead, int64_t h, int64_t* g,
                  int64_t* n) {
  check_defined(B, op, "B");
  int dims = int(lead.size()) + 2;
  MT_CHECK(B.dim() == dims, ValueError, op, ": argument 'B' has shape ", shape_str(B.shape()), ", expected ", dims,
           " dims ", dims == 4 ? "[b, l, g, n]" : "[b, g, n]");
  *g = B.size(-2);
  *n = B.size(-1);
  MT_CHECK(*g > 0 && h % *g == 0, ValueError, op, ": argument 'B' has shape ", shape_str(B.shape()), " with g = ", *g,
           " groups, which must divide the h = ", h, " heads of 'x'");
  Shape shape = lead;
  shape.push_back(*g);
  shape.push_back(*n);
  check_float(B, x, op, "B", "x", shape);
}

void check_options(const SsdOptions& opt, const char* op, bool uses_chunks) {
  if (uses_chunks)
    MT_CHECK(opt.chunk_size >= 0, ValueError, op, ": chunk_size is ", opt.chunk_size,
             ", expected 0 (sequential) or a positive chunk length");
  if (opt.dt_min)
    MT_CHECK(std::isfinite(*opt.dt_min) && *opt.dt_min >= 0, ValueError, op, ": dt_min is ", *opt.dt_min,
             ", expected a finite value >= 0");
  if (opt.dt_max)
    MT_CHECK(!std::isnan(*opt.dt_max) && *opt.dt_max > 0, ValueError, op, ": dt_max is ", *opt.dt_max,
             ", expected a value > 0");
  if (opt.dt_min && opt.dt_max)
    MT_CHECK(*opt.dt_min <= *opt.dt_max, ValueError, op, ": dt_min ", *opt.dt_min, " is larger than dt_max ",
             *opt.dt_max);
}

// seq_idx: int32 [b, l], contiguous, on x's device, non-decreasing along each row.
void check_seq_idx(const Tensor& seq_idx, const Tensor& x, const char* op, int64_t b, int64_t l) {
  if (!seq_idx.defined()) return;
  check_dtype(seq_idx, op, "seq_idx", DType::i32);
  check_same_device(seq_idx, x, op, "seq_idx", "x");
  check_shape(seq_idx, op, "seq_idx", {b, l});
  check_contiguous(seq_idx, op, "seq_idx");
  if (seq_idx.is_cuda()) return;
  const int32_t* s = seq_idx.data<int32_t>();
  for (int64_t i = 0; i < b; ++i)
    for (int64_t t = 1; t < l; ++t)
      MT_CHECK(s[i * l + t] >= s[i * l + t - 1], ValueError, op, ": argument 'seq_idx' decreases in row ", i,
               " at position ", t, " (", s[i * l + t - 1], " then ", s[i * l + t],
               "); document ids must be non-decreasing along each row");
}

// Checks the inputs that forward and backward share; returns the sizes.
Dims check_inputs(const char* op, const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B,
                  const Tensor& C, const Tensor& D, const Tensor& dt_bias, const Tensor& initial_state,
                  const Tensor& seq_idx, const SsdOptions& opt) {
  check_x(x, op, "x", 4, "[b, l, h, p]");
  Dims d{x.size(0), x.size(1), x.size(2), x.size(3), 0, 0};
  check_float(dt, x, op, "dt", "x", {d.b, d.l, d.h});
  check_f32_on_cuda(A, x, op, "A", {d.h});
  check_groups(B, x, op, {d.b, d.l}, d.h, &d.g, &d.n);
  check_float(C, x, op, "C", "x", {d.b, d.l, d.g, d.n});
  check_optional_f32_on_cuda(D, x, op, "D", {d.h});
  check_optional_f32_on_cuda(dt_bias, x, op, "dt_bias", {d.h});
  check_optional_f32_on_cuda(initial_state, x, op, "initial_state", {d.b, d.h, d.p, d.n});
  check_seq_idx(seq_idx, x, op, d.b, d.l);
  check_options(opt, op, true);
  return d;
}

}  // namespace

void ssd_forward(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B, const Tensor& C,
                 const Tensor& D, const Tensor& dt_bias, const Tensor& initial_state, const Tensor& seq_idx,
                 Tensor& y, Tensor& final_state, const SsdOptions& opt) {
  const char* op = "ssd_forward";
  Dims d = check_inputs(op, x, dt, A, B, C, D, dt_bias, initial_state, seq_idx, opt);
  check_float(y, x, op, "y", "x", {d.b, d.l, d.h, d.p});
  check_optional_f32_on_cuda(final_state, x, op, "final_state", {d.b, d.h, d.p, d.n});
  MT_DISPATCH(x, ssd_forward, x, dt, A, B, C, D, dt_bias, initial_state, seq_idx, y, final_state, opt);
}

void ssd_backward(const Tensor& dy, const Tensor& d_final_state, const Tensor& x, const Tensor& dt, const Tensor& A,
                  const Tensor& B, const Tensor& C, const Tensor& D, const Tensor& dt_bias,
                  const Tensor& initial_state, const Tensor& seq_idx, Tensor& dx, Tensor& ddt, Tensor& dA, Tensor& dB,
                  Tensor& dC, Tensor& dD, Tensor& ddt_bias, Tensor& d_initial_state, const SsdOptions& opt) {
  const char* op = "ssd_backward";
  Dims d = check_inputs(op, x, dt, A, B, C, D, dt_bias, initial_state, seq_idx, opt);
  Shape state = {d.b, d.h, d.p, d.n};
  check_float(dy, x, op, "dy", "x", {d.b, d.l, d.h, d.p});
  check_optional_f32_on_cuda(d_final_state, x, op, "d_final_state", state);
  check_float(dx, x, op, "dx", "x", x.shape());
  check_float(ddt, x, op, "ddt", "x", dt.shape());
  check_f32_on_cuda(dA, x, op, "dA", A.shape());
  check_float(dB, x, op, "dB", "x", B.shape());
  check_float(dC, x, op, "dC", "x", C.shape());
  check_optional_f32_on_cuda(dD, x, op, "dD", {d.h});
  check_optional_f32_on_cuda(ddt_bias, x, op, "ddt_bias", {d.h});
  check_optional_f32_on_cuda(d_initial_state, x, op, "d_initial_state", state);
  MT_DISPATCH(x, ssd_backward, dy, d_final_state, x, dt, A, B, C, D, dt_bias, initial_state, seq_idx, dx, ddt, dA,
              dB, dC, dD, ddt_bias, d_initial_state, opt);
}

void ssd_step(const Tensor& x, const Tensor& dt, const Tensor& A, const Tensor& B, const Tensor& C, const Tensor& D,
              const Tensor& dt_bias, Tensor& state, Tensor& y, const SsdOptions& opt) {
  const char* op = "ssd_step";
  check_x(x, op, "x", 3, "[b, h, p]");
  int64_t b = x.size(0), h = x.size(1), p = x.size(2), g = 0, n = 0;
  check_float(dt, x, op, "dt", "x", {b, h});
  check_f32_on_cuda(A, x, op, "A", {h});
  check_groups(B, x, op, {b}, h, &g, &n);
  check_float(C, x, op, "C", "x", {b, g, n});
  check_optional_f32_on_cuda(D, x, op, "D", {h});
  check_optional_f32_on_cuda(dt_bias, x, op, "dt_bias", {h});
  check_f32_on_cuda(state, x, op, "state", {b, h, p, n});
  check_float(y, x, op, "y", "x", {b, h, p});
  check_options(opt, op, false);
  MT_DISPATCH(x, ssd_step, x, dt, A, B, C, D, dt_bias, state, y, opt);
}

}  // namespace mambatron
