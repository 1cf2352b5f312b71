// gemm on the CPU through Eigen (threads by OpenMP). bf16/f16 are widened to
// f32, multiplied in f32 and rounded back.
#include <Eigen/Core>

#include "../backend.h"

namespace mambatron::cpu {

namespace {
template <class T>
using RowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

template <class T>
void gemm_typed(const T* a, const T* b, const T* addend, T* c, int64_t batch, int64_t a_batch_stride, int64_t b_batch_stride,
                int64_t m, int64_t n, int64_t k, const GemmOptions& opt) {
  for (int64_t i = 0; i < batch; ++i) {
    // Stored shapes: a is [m, k] or [k, m]; b is [k, n] or [n, k].
    Eigen::Map<const RowMat<T>> A(a + i * a_batch_stride, opt.trans_a ? k : m, opt.trans_a ? m : k);
    Eigen::Map<const RowMat<T>> B(b + i * b_batch_stride, opt.trans_b ? n : k, opt.trans_b ? k : n);
    Eigen::Map<RowMat<T>> C(c + i * m * n, m, n);
    T alpha = T(opt.alpha), beta = T(opt.beta);
    if (beta == T(0)) C.setZero();  // never read c when beta is 0: it may hold anything
    else if (addend) C = beta * Eigen::Map<const RowMat<T>>(addend + i * m * n, m, n);
    else C *= beta;
    if (!opt.trans_a && !opt.trans_b) C.noalias() += alpha * A * B;
    else if (opt.trans_a && !opt.trans_b) C.noalias() += alpha * A.transpose() * B;
    else if (!opt.trans_a && opt.trans_b) C.noalias() += alpha * A * B.transpose();
    else C.noalias() += alpha * A.transpose() * B.transpose();
  }
}
}  // namespace

void gemm(const Tensor& a, const Tensor& b, Tensor& c, const GemmOptions& opt) {
  int64_t m = c.size(-2), n = c.size(-1);
  int64_t k = opt.trans_a ? a.size(-2) : a.size(-1);
  int64_t batch = c.dim() == 3 ? c.size(0) : 1;
  int64_t sa = a.dim() == 3 ? m * k : 0, sb = b.dim() == 3 ? k * n : 0;
  if (a.dtype() == DType::f32 || a.dtype() == DType::f64) {
    visit_f32_f64(a.dtype(), "gemm", [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T* addend = opt.addend.data_or_null<T>();
      gemm_typed<T>(a.data<T>(), b.data<T>(), addend, c.data<T>(), batch, sa, sb, m, n, k, opt);
    });
    return;
  }
  // 16-bit inputs: compute in f32, then round into c.
  Tensor a32 = a.to(DType::f32), b32 = b.to(DType::f32);
  const Tensor& source = opt.addend.defined() ? opt.addend : c;
  Tensor c32 = opt.beta != 0.0f ? source.to(DType::f32).clone() : Tensor::empty(c.shape(), DType::f32);
  gemm_typed<float>(a32.data<float>(), b32.data<float>(), nullptr, c32.data<float>(), batch, sa, sb, m, n, k, opt);
  c.copy_(c32);
}

}  // namespace mambatron::cpu
