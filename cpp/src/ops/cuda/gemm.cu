// gemm on CUDA through cuBLASLt: bf16/f16 or f32 operands, fp32 accumulation.
// Row-major C = op(A)·op(B) is computed as the column-major Cᵀ = op(B)ᵀ·op(A)ᵀ,
// which is the same memory, so no operand is ever transposed in memory.
#include <algorithm>
#include <map>
#include <mutex>
#include <tuple>

#include "../backend.h"
#include "common.cuh"

namespace mambatron::cuda {

namespace {

cudaDataType_t lt_type(DType dt) {
  switch (dt) {
    case DType::bf16: return CUDA_R_16BF;
    case DType::f16: return CUDA_R_16F;
    case DType::f32: return CUDA_R_32F;
    default: throw TypeError(std::string("gemm: dtype ") + dtype_name(dt) + " is not supported on CUDA");
  }
}

// Largest power of two (≤ 256) that divides the address: cuBLASLt picks kernels by it.
uint32_t alignment(const void* p) {
  uintptr_t a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 256;
  while (al > 1 && (a % al)) al /= 2;
  return al;
}

struct Layout {
  cublasLtMatrixLayout_t h = nullptr;
  Layout(cudaDataType_t t, int64_t rows, int64_t cols, int64_t ld, int32_t batch, int64_t batch_stride) {
    MT_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&h, t, uint64_t(rows), uint64_t(cols), ld));
    if (batch > 1) {
      MT_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(h, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch, sizeof(batch)));
      MT_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(h, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &batch_stride,
                                                       sizeof(batch_stride)));
    }
  }
  ~Layout() { if (h) cublasLtMatrixLayoutDestroy(h); }
};

struct MatmulDesc {
  cublasLtMatmulDesc_t h = nullptr;
  MatmulDesc(cublasOperation_t op_a, cublasOperation_t op_b) {
    MT_CUBLAS_CHECK(cublasLtMatmulDescCreate(&h, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    MT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(h, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof(op_a)));
    MT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(h, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof(op_b)));
  }
  ~MatmulDesc() { if (h) cublasLtMatmulDescDestroy(h); }
};

// The heuristic's first choice, remembered per problem.
using AlgoKey = std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, int, int, int,
                           uint32_t, uint32_t, uint32_t, uint32_t>;
std::mutex algo_mu;
std::map<AlgoKey, cublasLtMatmulAlgo_t> algo_cache;

}  // namespace

void gemm(const Tensor& a, const Tensor& b, Tensor& c, const GemmOptions& opt) {
  int dev = c.device().index;
  DeviceGuard guard(dev);
  int64_t m = c.size(-2), n = c.size(-1);
  int64_t k = opt.trans_a ? a.size(-2) : a.size(-1);
  int32_t batch = c.dim() == 3 ? int32_t(c.size(0)) : 1;
  int64_t stride_a = a.dim() == 3 ? m * k : 0, stride_b = b.dim() == 3 ? k * n : 0, stride_c = m * n;
  cudaDataType_t tin = lt_type(a.dtype()), tout = lt_type(c.dtype());

  // cuBLASLt operand "A" is our b, operand "B" is our a (see the file comment).
  cublasOperation_t op_lt_a = opt.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  cublasOperation_t op_lt_b = opt.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  int64_t rows_lt_a = opt.trans_b ? k : n, cols_lt_a = opt.trans_b ? n : k;
  int64_t rows_lt_b = opt.trans_a ? m : k, cols_lt_b = opt.trans_a ? k : m;
  MatmulDesc desc(op_lt_a, op_lt_b);
  Layout la(tin, rows_lt_a, cols_lt_a, rows_lt_a, batch, stride_b);
  Layout lb(tin, rows_lt_b, cols_lt_b, rows_lt_b, batch, stride_a);
  Layout lc(tout, n, m, n, batch, stride_c);

  size_t ws_bytes = 0;
  void* ws = cublaslt_workspace(dev, &ws_bytes);
  // The epilogue reads the beta term from `addend` when given (cuBLASLt's C) and writes c (its D).
  const void* src = opt.addend.defined() ? opt.addend.data_ptr() : c.data_ptr();
  uint32_t al_a = alignment(b.data_ptr()), al_b = alignment(a.data_ptr()), al_d = alignment(c.data_ptr());
  uint32_t al_c = std::min(alignment(src), al_d);
  AlgoKey key{dev, m, n, k, batch, stride_a, stride_b, int(a.dtype()), int(c.dtype()), int(opt.trans_a),
              int(opt.trans_b) | (opt.beta != 0.0f ? 2 : 0), al_a, al_b, al_c, al_d};
  cublasLtHandle_t handle = cublaslt(dev);
  cublasLtMatmulAlgo_t algo;
  {
    std::lock_guard<std::mutex> lock(algo_mu);
    auto it = algo_cache.find(key);
    if (it != algo_cache.end()) {
      algo = it->second;
    } else {
      cublasLtMatmulPreference_t pref;
      MT_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
      MT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes,
                                                           sizeof(ws_bytes)));
      MT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a,
                                                           sizeof(al_a)));
      MT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b,
                                                           sizeof(al_b)));
      MT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c,
                                                           sizeof(al_c)));
      MT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_d,
                                                           sizeof(al_d)));
      cublasLtMatmulHeuristicResult_t result{};
      int found = 0;
      cublasStatus_t st =
          cublasLtMatmulAlgoGetHeuristic(handle, desc.h, la.h, lb.h, lc.h, lc.h, pref, 1, &result, &found);
      cublasLtMatmulPreferenceDestroy(pref);
      MT_CHECK(st == CUBLAS_STATUS_SUCCESS && found > 0, CudaError, "gemm: cuBLASLt found no algorithm for m=", m,
               " n=", n, " k=", k, " batch=", batch, " ", dtype_name(a.dtype()), "->", dtype_name(c.dtype()),
               " (status ", int(st), ")");
      algo = result.algo;
      algo_cache.emplace(key, algo);
    }
  }
  MT_CUBLAS_CHECK(cublasLtMatmul(handle, desc.h, &opt.alpha, b.data_ptr(), la.h, a.data_ptr(), lb.h, &opt.beta,
                                 src, lc.h, c.data_ptr(), lc.h, &algo, ws, ws_bytes, stream(dev)));
}

}  // namespace mambatron::cuda
