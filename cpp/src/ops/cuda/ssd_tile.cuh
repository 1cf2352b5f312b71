// Warp tiles of 16×16 for the SSD kernels: acc += A·B in steps of 16 along k, the
// operands in shared memory, f32 accumulation.
//
// bf16 activations run on tensor cores (wmma). An operand that is a bf16 input is
// exact; one that is an f32 intermediate (a masked decay matrix, a state, a scaled
// input) is held as a sum of bf16 parts, each the rounding of what the previous
// ones leave, and its products take one MMA per part. Two parts keep about 16
// bits, three about 24 (where it feeds an f32 output), one the 8 of a bf16 operand.
// The part counts are chosen per product against DESIGN.md's rule: one part for the
// states in terms that feed only bf16 outputs (C·H_inᵀ in y, the state terms of dB
// and dC: their rounding stays below the output's own), two for the masked decay
// matrices (one part measured at up to 0.8 of the rule's bound in y), three where an
// f32 output depends on the product (final_state, dA, dD, ddt_bias). f32 activations run the same
// tiles on the FMA units (lane l holds rows 2⌊l/4⌋ + {0, 1}, columns
// 4(l mod 4) + {0..3}).
// Accumulator layouts are opaque: elementwise work goes through shared memory
// (store, change, load), except uniform scaling and adding tiles of one kind.
#pragma once
#include <mma.h>

#include <type_traits>

#include "dense.cuh"

namespace mambatron::cuda::ssd {

using bf16 = __nv_bfloat16;

template <class T>
constexpr bool kTensorCores = std::is_same_v<T, bf16>;

// Where element (r, c) of a tile lies: row-major p[r·ld + c], column-major p[c·ld + r].
struct Row {
  using wmma_layout = nvcuda::wmma::row_major;
  static __device__ __forceinline__ int at(int r, int c, int ld) { return r * ld + c; }
};
struct Col {
  using wmma_layout = nvcuda::wmma::col_major;
  static __device__ __forceinline__ int at(int r, int c, int ld) { return c * ld + r; }
};

// A matrix in shared memory with row pitch ld; a split bf16 operand keeps its parts
// `part` elements apart (part k at p + k·part).
template <class E>
struct Smem {
  E* p;
  int ld;
  int part;
  __device__ __forceinline__ E* at(int k) const { return p + k * part; }
};

// Row pitch (elements) of an operand tile of `cols` columns: a multiple of 16 bytes,
// offset from a multiple of 128 bytes so that the rows of a 16×16 load spread over
// the banks.
template <class E>
constexpr int pitch(int cols) {
  return cols + (sizeof(E) == 2 ? 8 : 4);
}

template <class E>
struct Acc;

template <>
struct Acc<bf16> {
  nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> f;
  __device__ __forceinline__ void zero() { nvcuda::wmma::fill_fragment(f, 0.f); }
  __device__ __forceinline__ void scale(float s) {
#pragma unroll
    for (int i = 0; i < f.num_elements; ++i) f.x[i] *= s;
  }
  __device__ __forceinline__ void add(const Acc& o) {
#pragma unroll
    for (int i = 0; i < f.num_elements; ++i) f.x[i] += o.f.x[i];
  }
  // p: 32-byte aligned, ld a multiple of 4.
  __device__ __forceinline__ void store(float* p, int ld) const {
    nvcuda::wmma::store_matrix_sync(p, f, unsigned(ld), nvcuda::wmma::mem_row_major);
  }
  __device__ __forceinline__ void load(const float* p, int ld) {
    nvcuda::wmma::load_matrix_sync(f, p, unsigned(ld), nvcuda::wmma::mem_row_major);
  }
};

template <>
struct Acc<float> {
  float v[8];
  static __device__ __forceinline__ int row0() { return ((threadIdx.x & 31) >> 2) * 2; }
  static __device__ __forceinline__ int col0() { return (threadIdx.x & 3) * 4; }
  __device__ __forceinline__ void zero() {
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = 0.f;
  }
  __device__ __forceinline__ void scale(float s) {
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] *= s;
  }
  __device__ __forceinline__ void add(const Acc& o) {
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] += o.v[i];
  }
  __device__ __forceinline__ void store(float* p, int ld) const {
    const int r = row0(), c = col0();
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) p[(r + i) * ld + c + j] = v[i * 4 + j];
  }
  __device__ __forceinline__ void load(const float* p, int ld) {
    const int r = row0(), c = col0();
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) v[i * 4 + j] = p[(r + i) * ld + c + j];
  }
};

// acc += A·B for one 16×16×16 step; a and b point at the tiles' (0, 0) elements.
template <class LA, class LB>
__device__ __forceinline__ void mma16(Acc<bf16>& acc, const bf16* a, int lda, const bf16* b, int ldb) {
  namespace w = nvcuda::wmma;
  w::fragment<w::matrix_a, 16, 16, 16, bf16, typename LA::wmma_layout> fa;
  w::fragment<w::matrix_b, 16, 16, 16, bf16, typename LB::wmma_layout> fb;
  w::load_matrix_sync(fa, a, unsigned(lda));
  w::load_matrix_sync(fb, b, unsigned(ldb));
  w::mma_sync(acc.f, fa, fb, acc.f);
}

template <class LA, class LB>
__device__ __forceinline__ void mma16(Acc<float>& acc, const float* a, int lda, const float* b, int ldb) {
  const int r = Acc<float>::row0(), c = Acc<float>::col0();
#pragma unroll 4
  for (int k = 0; k < 16; ++k) {
    const float a0 = a[LA::at(r, k, lda)], a1 = a[LA::at(r + 1, k, lda)];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const float bj = b[LB::at(k, c + j, ldb)];
      acc.v[j] = fmaf(a0, bj, acc.v[j]);
      acc.v[4 + j] = fmaf(a1, bj, acc.v[4 + j]);
    }
  }
}

// acc += A[ar.., ak..]·B[ak.., bc..] (16×16 logical tiles), NA / NB the parts of
// each operand in the bf16 form (1: exact); the f32 form has one part. Only one of
// the two may be split; the exact operand's fragment is loaded once for all parts.
template <class LA, class LB, int NA, int NB, class E>
__device__ __forceinline__ void mma_tile(Acc<E>& acc, const Smem<E>& A, int ar, int ak, const Smem<E>& B, int bk,
                                         int bc) {
  static_assert(NA == 1 || NB == 1, "one split operand per product");
  const int oa = LA::at(ar, ak, A.ld), ob = LB::at(bk, bc, B.ld);
  if constexpr (kTensorCores<E>) {
    namespace w = nvcuda::wmma;
    w::fragment<w::matrix_a, 16, 16, 16, bf16, typename LA::wmma_layout> fa;
    w::fragment<w::matrix_b, 16, 16, 16, bf16, typename LB::wmma_layout> fb;
    w::load_matrix_sync(fa, A.p + oa, unsigned(A.ld));
    w::load_matrix_sync(fb, B.p + ob, unsigned(B.ld));
    w::mma_sync(acc.f, fa, fb, acc.f);
#pragma unroll
    for (int k = 1; k < NA; ++k) {
      w::load_matrix_sync(fa, A.at(k) + oa, unsigned(A.ld));
      w::mma_sync(acc.f, fa, fb, acc.f);
    }
#pragma unroll
    for (int k = 1; k < NB; ++k) {
      w::load_matrix_sync(fb, B.at(k) + ob, unsigned(B.ld));
      w::mma_sync(acc.f, fa, fb, acc.f);
    }
  } else {
    mma16<LA, LB>(acc, A.p + oa, A.ld, B.p + ob, B.ld);
  }
}

// acc[c] += A[ar.., ak..]·B[bk.., bc + 16c..] for c < kC: one strip of A (NA parts)
// against kC tiles of an exact B, A's fragments loaded once. The same sums, in the
// same order, as kC calls of mma_tile.
template <class LA, class LB, int NA, int kC, class E>
__device__ __forceinline__ void mma_strip(Acc<E> (&acc)[kC], const Smem<E>& A, int ar, int ak, const Smem<E>& B,
                                          int bk, int bc) {
  const int oa = LA::at(ar, ak, A.ld);
  if constexpr (kTensorCores<E>) {
    namespace w = nvcuda::wmma;
    w::fragment<w::matrix_a, 16, 16, 16, bf16, typename LA::wmma_layout> fa[NA];
#pragma unroll
    for (int k = 0; k < NA; ++k) w::load_matrix_sync(fa[k], A.at(k) + oa, unsigned(A.ld));
#pragma unroll
    for (int c = 0; c < kC; ++c) {
      w::fragment<w::matrix_b, 16, 16, 16, bf16, typename LB::wmma_layout> fb;
      w::load_matrix_sync(fb, B.p + LB::at(bk, bc + 16 * c, B.ld), unsigned(B.ld));
#pragma unroll
      for (int k = 0; k < NA; ++k) w::mma_sync(acc[c].f, fa[k], fb, acc[c].f);
    }
  } else {
#pragma unroll
    for (int c = 0; c < kC; ++c) mma16<LA, LB>(acc[c], A.p + oa, A.ld, B.p + LB::at(bk, bc + 16 * c, B.ld), B.ld);
  }
}

// V consecutive f32 values into an operand in N parts with one vector store per part
// (m.p + off aligned to V elements of the operand).
template <int N, int V>
__device__ __forceinline__ void put_split_vec(const Smem<float>& m, int off, const float (&v)[V]) {
  struct alignas(4 * V) Vec {
    float e[V];
  } w;
#pragma unroll
  for (int k = 0; k < V; ++k) w.e[k] = v[k];
  *reinterpret_cast<Vec*>(m.p + off) = w;
}
template <int N, int V>
__device__ __forceinline__ void put_split_vec(const Smem<bf16>& m, int off, const float (&v)[V]) {
  struct alignas(2 * V) Vec {
    bf16 e[V];
  } w[N];
#pragma unroll
  for (int k = 0; k < V; ++k) {
    float r = v[k];
#pragma unroll
    for (int i = 0; i < N; ++i) {
      const bf16 h = __float2bfloat16_rn(r);
      w[i].e[k] = h;
      r -= __bfloat162float(h);  // exact: h holds r's leading bits
    }
  }
#pragma unroll
  for (int i = 0; i < N; ++i) *reinterpret_cast<Vec*>(m.at(i) + off) = w[i];
}

// Bytes of an operand of `rows` × pitch ld with N parts (N = 1 for f32), and the part stride.
template <class E, int N>
constexpr size_t operand_bytes(int rows, int ld) {
  return (kTensorCores<E> ? N : 1) * ((size_t(rows) * ld * sizeof(E) + 127) & ~size_t(127));
}
template <class E>
constexpr int part_stride(int rows, int ld) {
  return int(((size_t(rows) * ld * sizeof(E) + 127) & ~size_t(127)) / sizeof(E));
}

// A row-major f32 matrix (row pitch ld ≥ cols + 4 floats) rewritten in place as
// split bf16 rows: row t keeps hi in its first `cols` bf16 and lo in the next
// `cols`. The f32 form keeps the values. A row must be read whole before it is
// rewritten.
template <class T>
__device__ __forceinline__ void write_split_row(float* base, int ld, int cols, int t, int s, float v) {
  if constexpr (kTensorCores<T>) {
    bf16* row = reinterpret_cast<bf16*>(base + t * ld);
    const bf16 h = __float2bfloat16_rn(v);
    row[s] = h;
    row[cols + s] = __float2bfloat16_rn(v - __bfloat162float(h));
  } else {
    base[t * ld + s] = v;
  }
}
template <class T>
__device__ __forceinline__ Smem<T> split_rows(float* base, int ld, int cols) {
  if constexpr (kTensorCores<T>) return {reinterpret_cast<bf16*>(base), 2 * ld, cols};
  else return {base, ld, 0};
}

// Tile q of the lower triangle of a T×T tile grid, row by row: (0,0), (1,0), (1,1), ...
__device__ __forceinline__ void tri_tile(int q, int* tt, int* ss) {
  int t = 0;
  while (q > t) q -= ++t;
  *tt = t;
  *ss = q;
}

// f(q, tt, ss) for each lower-triangle tile this warp owns: tiles warp, warp + kWarps, ...
// of the ntri, q counting the warp's own (its index into per-warp accumulator arrays).
template <int kTri, int kWarps, class F>
__device__ __forceinline__ void for_warp_tri_tiles(int warp, int ntri, F&& f) {
#pragma unroll
  for (int q = 0; q < kTri; ++q) {
    const int qq = warp + q * kWarps;
    if (qq >= ntri) continue;
    int tt, ss;
    tri_tile(qq, &tt, &ss);
    f(q, tt, ss);
  }
}

// Shared-memory carving: offsets rounded up to 128 bytes.
constexpr size_t align128(size_t x) { return (x + 127) & ~size_t(127); }

}  // namespace mambatron::cuda::ssd
