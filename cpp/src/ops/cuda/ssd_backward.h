// The SSD backward's per-chunk kernels and what they read: ssd_backward_dx.cu (dx,
// ddt, the chunk shares of dA, dD, ddt_bias), ssd_backward_bc.cu (dB, dC) and, for
// bf16 with p and n multiples of 64, ssd_backward_bc_mma.cu (dB, dC on mma.sync).
#pragma once
#include "ssd_common.cuh"

namespace mambatron::cuda::ssd {

template <class T>
struct BackwardArgs {
  const T *dy, *x, *dt, *B, *C;
  const float *A, *D, *dt_bias;  // D, dt_bias may be null
  DeltaOpt o;
  const double* S;
  const float* delta;
  const int32_t* seq;
  const float *hin, *dhout;  // [b, h, nc, p, n]: the state entering / the gradient leaving each chunk
  const float* K;             // C·Bᵀ of each chunk and group (launch_chunk_cb)
  T *dx, *ddt, *dB, *dC;
  double *part_dA, *part_dD, *part_db;  // [b, h, nc]
};

// The per-token values of one (row, head, chunk) that dx, ddt and the parameter
// shares use: kQ of each in shared memory, carved by carve_token_values from
// token_values_bytes(kQ) bytes.
//   S, Δ (f64 and f32), dΔ/dv, e, f, f·Δ (f32), document ids: set by fill_token_values;
//   rowZ_t = Σ_s Z_ts·Δ_s, colZ_s = Σ_t Z_ts, q, u, Σ dy·x: summed by the kernel.
struct TokenValues {
  double *S, *d64, *slope, *e64, *fv, *rowZ, *colZ, *qacc, *uacc, *dacc;
  float *dl32, *fd32;
  int* docs;
};
constexpr size_t token_values_bytes(int kQ) { return align128(size_t(10) * kQ * 8) + align128(size_t(2) * kQ * 4) + align128(kQ * 4); }
__device__ __forceinline__ TokenValues carve_token_values(unsigned char* p, int kQ) {
  TokenValues v;
  double* f = reinterpret_cast<double*>(p);
  v.S = f, v.d64 = f + kQ, v.slope = f + 2 * kQ, v.e64 = f + 3 * kQ, v.fv = f + 4 * kQ, v.rowZ = f + 5 * kQ;
  v.colZ = f + 6 * kQ, v.qacc = f + 7 * kQ, v.uacc = f + 8 * kQ, v.dacc = f + 9 * kQ;
  v.dl32 = reinterpret_cast<float*>(p + align128(size_t(10) * kQ * 8));
  v.fd32 = v.dl32 + kQ;
  v.docs = reinterpret_cast<int*>(p + align128(size_t(10) * kQ * 8) + align128(size_t(2) * kQ * 4));
  return v;
}

// Every token's values (zeros past the chunk's L), the sums zeroed; the whole block
// takes part, and a barrier comes before their use.
template <class T>
__device__ __forceinline__ void fill_token_values(const TokenValues& v, int kQ, const Dims& d, const BackwardArgs<T>& a,
                                                  const Chunk& ch) {
  const double bias = a.dt_bias ? double(a.dt_bias[ch.j]) : 0.0;
  for (int t = threadIdx.x; t < kQ; t += blockDim.x) {
    v.S[t] = v.d64[t] = v.slope[t] = v.e64[t] = v.fv[t] = 0;
    v.dl32[t] = v.fd32[t] = 0.f;
    v.docs[t] = 0;
    if (t < ch.L) {
      const int64_t tok = ch.t0 + t;
      const DeltaSlope ds = delta_of(double(to_f32(a.dt[d.dto(ch.bi, tok, ch.j)])) + bias, a.o);
      v.S[t] = a.S[d.so(ch.bi, ch.j, tok)];
      v.d64[t] = ds.value, v.slope[t] = ds.slope;
      v.docs[t] = doc_at(a.seq, d, ch.bi, tok);
      v.e64[t] = v.docs[t] == ch.doc_in ? exp(v.S[t]) : 0.0;
      v.fv[t] = v.docs[t] == ch.doc_last ? exp(ch.S_last - v.S[t]) : 0.0;
      v.dl32[t] = float(ds.value);
      v.fd32[t] = float(v.fv[t] * ds.value);
    }
    v.rowZ[t] = v.colZ[t] = v.qacc[t] = v.uacc[t] = v.dacc[t] = 0;
  }
}

// On warp 0, once the sums are complete: the last-token term E·⟨Ĥ, H_in⟩ (hh, the
// block's total), dS, its reverse sum, ddt and the chunk's shares of dA, dD and
// ddt_bias. Lane k owns tokens [kR, kR + R); sums across lanes run in fixed shuffle
// trees. dS overwrites rowZ.
template <class T, int kQ>
__device__ __forceinline__ void finish_chunk(const TokenValues& v, double hh, const Dims& d, const BackwardArgs<T>& a,
                                             const Chunk& ch) {
  const int lane = threadIdx.x & 31, L = ch.L;
  const int64_t bi = ch.bi, j = ch.j, t0 = ch.t0;
  constexpr int R = kQ / 32;
  const double E = ch.doc_last == ch.doc_in ? exp(ch.S_last) : 0.0, A = a.A[j];
  double* dS = v.rowZ;
  double last = 0;
  for (int k = 0; k < R; ++k) {
    const int t = lane * R + k;
    if (t >= L) break;
    const double fq = v.fv[t] * v.qacc[t];
    dS[t] = v.rowZ[t] - v.d64[t] * v.colZ[t] + v.e64[t] * v.uacc[t] - v.d64[t] * fq;
    last += v.d64[t] * fq;
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) last += __shfl_xor_sync(0xffffffffu, last, o);
  __syncwarp();
  if (lane == (L - 1) / R) dS[L - 1] += E * hh + last;
  __syncwarp();
  // da_t = Σ_{u ≥ t} dS_u: the lane's own sum, then the sums of the lanes above it.
  double own = 0;
  for (int k = 0; k < R; ++k) own += lane * R + k < L ? dS[lane * R + k] : 0.0;
  double above = own;  // becomes Σ over lanes ≥ this one
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const double w = __shfl_down_sync(0xffffffffu, above, o);
    if (lane + o < 32) above += w;
  }
  const double below = __shfl_down_sync(0xffffffffu, above, 1);  // Σ over the lanes after this one
  double da = lane < 31 ? below : 0.0, dA = 0, db = 0, dD = 0;
  for (int k = R - 1; k >= 0; --k) {
    const int t = lane * R + k;
    if (t >= L) continue;
    da += dS[t];
    const double gt = (v.colZ[t] + v.fv[t] * v.qacc[t] + A * da) * v.slope[t];
    a.ddt[d.dto(bi, t0 + t, j)] = cast_value<T>(gt);
    db += gt;
    dA += v.d64[t] * da;
    dD += v.dacc[t];
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    dA += __shfl_xor_sync(0xffffffffu, dA, o);
    db += __shfl_xor_sync(0xffffffffu, db, o);
    dD += __shfl_xor_sync(0xffffffffu, dD, o);
  }
  if (lane != 0) return;
  const int64_t pi = (bi * d.h + j) * d.nc + ch.c;
  a.part_dA[pi] = dA;
  a.part_dD[pi] = dD;
  a.part_db[pi] = db;
}

template <class T>
void launch_dx(const Dims& d, const BackwardArgs<T>& a, cudaStream_t s);

// The tensor-core dx path: bf16, p 64, n 64 or 128, 16-byte aligned rows.
bool dx_mma_supported(const Dims& d, const BackwardArgs<bf16>& a);
void launch_dx_mma(const Dims& d, const BackwardArgs<bf16>& a, cudaStream_t s);
template <class T>
void launch_bc(const Dims& d, const BackwardArgs<T>& a, cudaStream_t s);

// The tensor-core dB/dC path: bf16, p and n multiples of 64 (and > 0), 16-byte aligned
// rows.
bool bc_mma_supported(const Dims& d, const BackwardArgs<bf16>& a);
void launch_bc_mma(const Dims& d, const BackwardArgs<bf16>& a, cudaStream_t s);

}  // namespace mambatron::cuda::ssd
