// selective_scan: argument checks and dispatch. CPU: ops/cpu/selective_scan.cpp (one
// dtype, f32 or f64); CUDA: ops/cuda/selective_scan.cu (u, delta, B, C, z, y and their
// gradients bf16 or f32; A, D, delta_bias, their gradients and the states f32).
#include "backend.h"
#include "cpu/selective_scan.h"
#ifdef MAMBATRON_WITH_CUDA
#include "cuda/selective_scan.h"
#endif
#include "dense_checks.h"
#include "mambatron/check.h"
#include "mambatron/ops.h"

namespace mambatron {

namespace {

// A float tensor of the op: the dtype and device of u, exactly `shape`, contiguous.
void check_float(const Tensor& t, const Tensor& u, const char* op, const char* name, const Shape& shape) {
  check_defined(t, op, name);
  check_same_dtype(t, u, op, name, "u");
  check_same_device(t, u, op, name, "u");
  check_shape(t, op, name, shape);
  check_contiguous(t, op, name);
}
void check_optional(const Tensor& t, const Tensor& u, const char* op, const char* name, const Shape& shape) {
  if (t.defined()) check_float(t, u, op, name, shape);
}
// A, D, delta_bias, their gradients and the states: like u on the CPU, f32 on CUDA.
void check_f32(const Tensor& t, const Tensor& u, const char* op, const char* name, const Shape& shape) {
  dense::check_stat(t, u, op, name, "u", shape);
}
void check_optional_f32(const Tensor& t, const Tensor& u, const char* op, const char* name, const Shape& shape) {
  if (t.defined()) check_f32(t, u, op, name, shape);
}

// Sizes read from the arguments: u [b, (l,) d], A [d, n], B [b, (l,) g, n].
struct Dims {
  int64_t b, l, d, n, g;
};

// Checks u, A and B, which set the sizes; `seq` is whether u has a token dim.
Dims check_sizes(const Tensor& u, const Tensor& A, const Tensor& B, const char* op, bool seq) {
  dense::check_float_ref(u, op, "u");
  MT_CHECK(u.dim() == (seq ? 3 : 2), ValueError, op, ": argument 'u' has shape ", shape_str(u.shape()),
           seq ? ", expected 3 dims [b, l, d]" : ", expected 2 dims [b, d]");
  Dims s{u.size(0), seq ? u.size(1) : 1, u.size(-1), 0, 0};
  check_defined(A, op, "A");
  MT_CHECK(A.dim() == 2, ValueError, op, ": argument 'A' has shape ", shape_str(A.shape()),
           ", expected 2 dims [d, n] with d = ", s.d);
  s.n = A.size(1);
  check_f32(A, u, op, "A", {s.d, s.n});
#ifdef MAMBATRON_WITH_CUDA
  MT_CHECK(!u.is_cuda() || s.n <= cuda::kSelectiveScanMaxState, ValueError, op, ": argument 'A' has shape ",
           shape_str(A.shape()), ": the state size n = ", s.n, " is above ", cuda::kSelectiveScanMaxState,
           ", the most the CUDA kernels take");
#endif
  check_defined(B, op, "B");
  MT_CHECK(B.dim() == (seq ? 4 : 3), ValueError, op, ": argument 'B' has shape ", shape_str(B.shape()),
           seq ? ", expected 4 dims [b, l, g, n]" : ", expected 3 dims [b, g, n]");
  s.g = B.size(-2);
  MT_CHECK(s.g >= 1 && s.d % s.g == 0, ValueError, op, ": argument 'B' has shape ", shape_str(B.shape()),
           ": its group count g = ", s.g, " must be at least 1 and divide d = ", s.d);
  return s;
}

// The inputs forward and backward share.
Dims check_inputs(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
                  const Tensor& D, const Tensor& z, const Tensor& delta_bias, const Tensor& initial_state,
                  const Tensor& seq_idx, const char* op) {
  Dims s = check_sizes(u, A, B, op, true);
  check_float(delta, u, op, "delta", {s.b, s.l, s.d});
  check_float(B, u, op, "B", {s.b, s.l, s.g, s.n});
  check_float(C, u, op, "C", {s.b, s.l, s.g, s.n});
  check_optional_f32(D, u, op, "D", {s.d});
  check_optional(z, u, op, "z", {s.b, s.l, s.d});
  check_optional_f32(delta_bias, u, op, "delta_bias", {s.d});
  check_optional_f32(initial_state, u, op, "initial_state", {s.b, s.d, s.n});
  if (seq_idx.defined()) {
    check_dtype(seq_idx, op, "seq_idx", DType::i32);
    check_same_device(seq_idx, u, op, "seq_idx", "u");
    check_shape(seq_idx, op, "seq_idx", {s.b, s.l});
    check_contiguous(seq_idx, op, "seq_idx");
  }
  return s;
}

}  // namespace

void selective_scan_forward(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
                            const Tensor& D, const Tensor& z, const Tensor& delta_bias, const Tensor& initial_state,
                            const Tensor& seq_idx, Tensor& y, Tensor& final_state, const SelectiveScanOptions& opt) {
  const char* op = "selective_scan_forward";
  Dims s = check_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx, op);
  check_float(y, u, op, "y", {s.b, s.l, s.d});
  check_optional_f32(final_state, u, op, "final_state", {s.b, s.d, s.n});
  MT_DISPATCH(u, selective_scan_forward, u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx, y, final_state,
              opt);
}

void selective_scan_backward(const Tensor& dy, const Tensor& d_final_state, const Tensor& u, const Tensor& delta,
                             const Tensor& A, const Tensor& B, const Tensor& C, const Tensor& D, const Tensor& z,
                             const Tensor& delta_bias, const Tensor& initial_state, const Tensor& seq_idx,
                             Tensor& du, Tensor& ddelta, Tensor& dA, Tensor& dB, Tensor& dC, Tensor& dD, Tensor& dz,
                             Tensor& ddelta_bias, Tensor& d_initial_state, const SelectiveScanOptions& opt) {
  const char* op = "selective_scan_backward";
  Dims s = check_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx, op);
  check_float(dy, u, op, "dy", {s.b, s.l, s.d});
  check_optional_f32(d_final_state, u, op, "d_final_state", {s.b, s.d, s.n});
  check_float(du, u, op, "du", {s.b, s.l, s.d});
  check_float(ddelta, u, op, "ddelta", {s.b, s.l, s.d});
  check_f32(dA, u, op, "dA", {s.d, s.n});
  check_float(dB, u, op, "dB", {s.b, s.l, s.g, s.n});
  check_float(dC, u, op, "dC", {s.b, s.l, s.g, s.n});
  check_optional_f32(dD, u, op, "dD", {s.d});
  if (z.defined()) check_float(dz, u, op, "dz", {s.b, s.l, s.d});
  else MT_CHECK(!dz.defined(), ValueError, op, ": argument 'dz' is given but 'z' is not; pass both or neither");
  check_optional_f32(ddelta_bias, u, op, "ddelta_bias", {s.d});
  check_optional_f32(d_initial_state, u, op, "d_initial_state", {s.b, s.d, s.n});
  MT_DISPATCH(u, selective_scan_backward, dy, d_final_state, u, delta, A, B, C, D, z, delta_bias, initial_state,
              seq_idx, du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, d_initial_state, opt);
}

void selective_scan_step(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
                         const Tensor& D, const Tensor& z, const Tensor& delta_bias, Tensor& state, Tensor& y,
                         const SelectiveScanOptions& opt) {
  const char* op = "selective_scan_step";
  Dims s = check_sizes(u, A, B, op, false);
  check_float(delta, u, op, "delta", {s.b, s.d});
  check_float(B, u, op, "B", {s.b, s.g, s.n});
  check_float(C, u, op, "C", {s.b, s.g, s.n});
  check_optional_f32(D, u, op, "D", {s.d});
  check_optional(z, u, op, "z", {s.b, s.d});
  check_optional_f32(delta_bias, u, op, "delta_bias", {s.d});
  check_f32(state, u, op, "state", {s.b, s.d, s.n});
  check_float(y, u, op, "y", {s.b, s.d});
  MT_DISPATCH(u, selective_scan_step, u, delta, A, B, C, D, z, delta_bias, state, y, opt);
}

}  // namespace mambatron
