// SSD on the CPU, chunked form (MODELS.md §2): per chunk of Q tokens, the
// intra-chunk matrix product, the inter-chunk term from the state entering the
// chunk, and the chunk's contribution to the state passed on; and its backward.
// Chunk matrices go through Eigen; one task per (batch row, head), run by OpenMP.
//
// Notation for one chunk of L tokens (t, s local), head j, a_t = Δ_t·A_j and
// S_t = Σ_{u ≤ t} a_u (cumulative within the chunk, kept in f64):
//   K = C·Bᵀ (L×L, shared by the heads of a group, computed once)
//   W_ts = exp(S_t − S_s) for s ≤ t in the same document, else 0
//   e_t = exp(S_t)·[t is in the document of the entering state]
//   f_s = exp(S_last − S_s)·[s is in the document of the last token]
//   E = exp(S_last)·[the last token is in the document of the entering state]
//   Y = (K ⊙ W)·diag(Δ)·X + diag(e)·C·H_inᵀ + D·X
//   H_out = E·H_in + Xᵀ·diag(f ⊙ Δ)·B
#include <Eigen/Core>
#include <algorithm>
#include <vector>

#include "scratch.h"
#include "../backend.h"
#include "ssd.h"

namespace mambatron::cpu::ssd {

namespace {

template <class T>
using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using Vec = Eigen::Matrix<T, Eigen::Dynamic, 1>;
// L rows of a token-major tensor for one head or group: consecutive rows `stride` apart.
template <class T>
using ConstRows = Eigen::Map<const Mat<T>, 0, Eigen::OuterStride<>>;
template <class T>
using Rows = Eigen::Map<Mat<T>, 0, Eigen::OuterStride<>>;

// Where the chunks of a row lie, and where each chunk's K block is stored.
struct Chunking {
  int64_t Q, count, block;  // chunk length, number of chunks, K block size (min(Q, l)²)
  Chunking(int64_t l, int64_t chunk_size)
      : Q(chunk_size), count((l + chunk_size - 1) / chunk_size), block(std::min(chunk_size, l) * std::min(chunk_size, l)) {}
  int64_t start(int64_t c) const { return c * Q; }
  int64_t length(int64_t c, int64_t l) const { return std::min(Q, l - c * Q); }
};

// K = C·Bᵀ for every (batch row, group, chunk): [b, g, chunks] blocks of L×L.
template <class T>
Scratch<T> chunk_kernels(const Problem<T>& P, const Chunking& ch) {
  Scratch<T> K(P.b * P.g * ch.count * ch.block);
#pragma omp parallel for schedule(static)
  for (int64_t task = 0; task < P.b * P.g * ch.count; ++task) {
    int64_t c = task % ch.count, bg = task / ch.count, bi = bg / P.g, gi = bg % P.g;
    int64_t t0 = ch.start(c), L = ch.length(c, P.l), off = P.bc_offset(bi, t0, gi);
    ConstRows<T> Bc(P.B + off, L, P.n, Eigen::OuterStride<>(P.g * P.n));
    ConstRows<T> Cc(P.C + off, L, P.n, Eigen::OuterStride<>(P.g * P.n));
    Eigen::Map<Mat<T>> Kc(K.data() + task * ch.block, L, L);
    Kc.noalias() = Cc * Bc.transpose();
  }
  return K;
}

// The per-token scalars of one chunk of one head (see the notation above).
struct ChunkScalars {
  Scratch<double> delta, slope, S, e, f;
  std::vector<int32_t> doc;
  double E = 0;

  template <class T>
  void compute(const Problem<T>& P, int64_t bi, int64_t j, int64_t t0, int64_t L) {
    delta.resize(L), slope.resize(L), S.resize(L), e.resize(L), f.resize(L), doc.resize(L);
    int32_t doc_in = P.doc(bi, t0 > 0 ? t0 - 1 : 0);
    double A = double(P.A[j]), sum = 0;
    for (int64_t t = 0; t < L; ++t) {
      Delta d = delta_at(P, bi, t0 + t, j);
      delta[t] = d.value, slope[t] = d.slope;
      sum += d.value * A;
      S[t] = sum;
      doc[t] = P.doc(bi, t0 + t);
      e[t] = doc[t] == doc_in ? std::exp(S[t]) : 0.0;
    }
    for (int64_t s = 0; s < L; ++s) f[s] = doc[s] == doc[L - 1] ? std::exp(S[L - 1] - S[s]) : 0.0;
    E = doc[L - 1] == doc_in ? std::exp(S[L - 1]) : 0.0;
  }

  // W: the causal, document-masked decay between tokens of the chunk.
  template <class T>
  void decay_matrix(Mat<T>& W) const {
    int64_t L = int64_t(S.size());
    W.setZero(L, L);
    for (int64_t t = 0; t < L; ++t)
      for (int64_t s = 0; s <= t; ++s)
        if (doc[s] == doc[t]) W(t, s) = T(std::exp(S[t] - S[s]));
  }

  template <class T>
  static Vec<T> as_vec(const Scratch<double>& v) {
    Vec<T> r(int64_t(v.size()));
    for (size_t i = 0; i < v.size(); ++i) r[i] = T(v[i]);
    return r;
  }
  template <class T>
  Vec<T> f_delta() const {
    Vec<T> r(int64_t(f.size()));
    for (size_t i = 0; i < f.size(); ++i) r[i] = T(f[i] * delta[i]);
    return r;
  }
};

template <class T>
void initial_state(const Problem<T>& P, int64_t bi, int64_t j, Mat<T>& H) {
  H.resize(P.p, P.n);
  if (P.initial_state) H = Eigen::Map<const Mat<T>>(P.initial_state + P.state_offset(bi, j), P.p, P.n);
  else H.setZero();
}

}  // namespace

template <class T>
void chunked_forward(const Problem<T>& P, T* y, T* final_state) {
  const Chunking ch(P.l, P.opt.chunk_size);
  const Scratch<T> K = chunk_kernels(P, ch);
  const Eigen::OuterStride<> xs(P.h * P.p), bs(P.g * P.n);
#pragma omp parallel for schedule(static)
  for (int64_t task = 0; task < P.b * P.h; ++task) {
    int64_t bi = task / P.h, j = task % P.h, gi = P.group(j);
    Mat<T> H, W, M;
    initial_state(P, bi, j, H);
    ChunkScalars sc;
    for (int64_t c = 0; c < ch.count; ++c) {
      int64_t t0 = ch.start(c), L = ch.length(c, P.l), bc = P.bc_offset(bi, t0, gi);
      sc.compute(P, bi, j, t0, L);
      sc.decay_matrix(W);
      ConstRows<T> X(P.x_at(bi, t0, j), L, P.p, xs), Bc(P.B + bc, L, P.n, bs), Cc(P.C + bc, L, P.n, bs);
      Rows<T> Y(y + P.dt_index(bi, t0, j) * P.p, L, P.p, xs);
      Eigen::Map<const Mat<T>> Kc(K.data() + ((bi * P.g + gi) * ch.count + c) * ch.block, L, L);
      Vec<T> delta = ChunkScalars::as_vec<T>(sc.delta), e = ChunkScalars::as_vec<T>(sc.e);
      M.noalias() = Kc.cwiseProduct(W) * delta.asDiagonal();
      Y.noalias() = M * X;                                          // intra-chunk
      Y.noalias() += e.asDiagonal() * (Cc * H.transpose());         // inter-chunk
      if (P.D) Y += P.D[j] * X;
      H *= T(sc.E);                                                 // state passing
      H.noalias() += X.transpose() * (sc.f_delta<T>().asDiagonal() * Bc);
    }
    if (final_state) Eigen::Map<Mat<T>>(final_state + P.state_offset(bi, j), P.p, P.n) = H;
  }
}

// Backward, chunk by chunk from the last, with Ĥ_out the gradient with respect to
// the state leaving the chunk (d_final_state for the last one). With
// Pm = dY·Xᵀ, M = K ⊙ W and Z = M ⊙ Pm:
//   dX = diag(Δ)·Mᵀ·dY + diag(f ⊙ Δ)·B·Ĥ_outᵀ + D·dY
//   dC = (Pm ⊙ W)·diag(Δ)·B + diag(e)·dY·H_in
//   dB = ((Pm ⊙ W)·diag(Δ))ᵀ·C + diag(f ⊙ Δ)·X·Ĥ_out
//   dΔ_s (direct) = colsum(Z)_s + f_s·q_s,  q_s = x_sᵀ·Ĥ_out·B_s
//   dS_t = (Z·Δ)_t − Δ_t·colsum(Z)_t + e_t·⟨dY_t, H_in·C_t⟩ − Δ_t·f_t·q_t
//          (+ E·⟨Ĥ_out, H_in⟩ + Σ_s Δ_s·f_s·q_s at the last token)
//   da_u = Σ_{t ≥ u} dS_t;  dΔ_u += A·da_u;  dA += Σ_u Δ_u·da_u
//   Ĥ_in = E·Ĥ_out + dYᵀ·diag(e)·C
template <class T>
void chunked_backward(const Problem<T>& P, const Grads<T>& G) {
  const Chunking ch(P.l, P.opt.chunk_size);
  const Scratch<T> K = chunk_kernels(P, ch);
  const Eigen::OuterStride<> xs(P.h * P.p), bs(P.g * P.n), ns(P.n);
  const int64_t pn = P.p * P.n;
#pragma omp parallel for schedule(static)
  for (int64_t task = 0; task < P.b * P.h; ++task) {
    int64_t bi = task / P.h, j = task % P.h, gi = P.group(j);
    double A = double(P.A[j]), dA = 0, dD = 0, dbias = 0;
    ChunkScalars sc;
    // The state entering each chunk, from a forward pass over the chunk states.
    Scratch<T> H_in(ch.count * pn);
    Mat<T> H;
    initial_state(P, bi, j, H);
    for (int64_t c = 0; c < ch.count; ++c) {
      int64_t t0 = ch.start(c), L = ch.length(c, P.l), bc = P.bc_offset(bi, t0, gi);
      Eigen::Map<Mat<T>>(H_in.data() + c * pn, P.p, P.n) = H;
      sc.compute(P, bi, j, t0, L);
      ConstRows<T> X(P.x_at(bi, t0, j), L, P.p, xs), Bc(P.B + bc, L, P.n, bs);
      H *= T(sc.E);
      H.noalias() += X.transpose() * (sc.f_delta<T>().asDiagonal() * Bc);
    }
    Mat<T> dH(P.p, P.n), dH_in, W, M, Pm, PWd, R;
    if (G.d_final_state) dH = Eigen::Map<const Mat<T>>(G.d_final_state + P.state_offset(bi, j), P.p, P.n);
    else dH.setZero();
    for (int64_t c = ch.count - 1; c >= 0; --c) {
      int64_t t0 = ch.start(c), L = ch.length(c, P.l), bc = P.bc_offset(bi, t0, gi), row = P.dt_index(bi, t0, j);
      sc.compute(P, bi, j, t0, L);
      sc.decay_matrix(W);
      ConstRows<T> X(P.x_at(bi, t0, j), L, P.p, xs), Bc(P.B + bc, L, P.n, bs), Cc(P.C + bc, L, P.n, bs);
      ConstRows<T> dY(G.dy + row * P.p, L, P.p, xs);
      Rows<T> dX(G.dx + row * P.p, L, P.p, xs);
      Rows<T> dB(G.dB_head + ((bi * P.h + j) * P.l + t0) * P.n, L, P.n, ns);
      Rows<T> dC(G.dC_head + ((bi * P.h + j) * P.l + t0) * P.n, L, P.n, ns);
      Eigen::Map<const Mat<T>> Kc(K.data() + ((bi * P.g + gi) * ch.count + c) * ch.block, L, L);
      Eigen::Map<const Mat<T>> Hin(H_in.data() + c * pn, P.p, P.n);
      Vec<T> delta = ChunkScalars::as_vec<T>(sc.delta), e = ChunkScalars::as_vec<T>(sc.e), fd = sc.f_delta<T>();

      Pm.noalias() = dY * X.transpose();
      M = Kc.cwiseProduct(W);
      PWd.noalias() = Pm.cwiseProduct(W) * delta.asDiagonal();
      R.noalias() = X * dH;
      dX.noalias() = delta.asDiagonal() * (M.transpose() * dY);
      dX.noalias() += fd.asDiagonal() * (Bc * dH.transpose());
      if (P.D) dX += P.D[j] * dY;
      dC.noalias() = PWd * Bc;
      dC.noalias() += e.asDiagonal() * (dY * Hin);
      dB.noalias() = PWd.transpose() * Cc;
      dB.noalias() += fd.asDiagonal() * R;

      // The terms of dS cancel one another, so their sums run in f64 (O(L²) work,
      // small next to the products above).
      M.array() *= Pm.array();  // M is now Z = K ⊙ W ⊙ Pm
      Mat<double> Z = M.template cast<double>();
      Eigen::Map<const Vec<double>> delta64(sc.delta.data(), L);
      Vec<double> colZ = Z.colwise().sum().transpose(), rowZd = Z * delta64;
      Vec<double> q = R.template cast<double>().cwiseProduct(Bc.template cast<double>()).rowwise().sum();
      Vec<double> u = dY.template cast<double>().cwiseProduct((Cc * Hin.transpose()).template cast<double>()).rowwise().sum();
      Scratch<double> dS(L);
      double last = sc.E * dH.template cast<double>().cwiseProduct(Hin.template cast<double>()).sum();
      for (int64_t t = 0; t < L; ++t) {
        double fq = sc.f[t] * q[t];
        dS[t] = rowZd[t] - sc.delta[t] * colZ[t] + sc.e[t] * u[t] - sc.delta[t] * fq;
        last += sc.delta[t] * fq;
      }
      dS[L - 1] += last;
      double da = 0;
      for (int64_t t = L - 1; t >= 0; --t) {
        da += dS[t];
        double ddelta = colZ[t] + sc.f[t] * q[t] + A * da;
        double ddt = ddelta * sc.slope[t];
        G.ddt[row + t * P.h] = T(ddt);
        dbias += ddt;
        dA += sc.delta[t] * da;
      }
      dD += dY.template cast<double>().cwiseProduct(X.template cast<double>()).sum();
      dH_in.noalias() = dY.transpose() * (e.asDiagonal() * Cc);
      dH_in += T(sc.E) * dH;
      dH.swap(dH_in);
    }
    if (G.d_initial_state) Eigen::Map<Mat<T>>(G.d_initial_state + P.state_offset(bi, j), P.p, P.n) = dH;
    G.dA_part[task] = dA;
    G.dD_part[task] = dD;
    G.ddt_bias_part[task] = dbias;
  }
}

template void chunked_forward<float>(const Problem<float>&, float*, float*);
template void chunked_forward<double>(const Problem<double>&, double*, double*);
template void chunked_backward<float>(const Problem<float>&, const Grads<float>&);
template void chunked_backward<double>(const Problem<double>&, const Grads<double>&);

}  // namespace mambatron::cpu::ssd
