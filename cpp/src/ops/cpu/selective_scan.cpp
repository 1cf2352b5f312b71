// Mamba-1 selective scan on the CPU, f32 and f64.
//
// A task owns one batch row and a block of at most kBlock channels of one group, so
// its state is a [block, n] array and the exponentials of a token, exp(Δ·A) over the
// whole block, go through Eigen's vectorised exp at once. Backward walks the tokens
// in reverse: it keeps the states entering every kChunk-th token, and recomputes the
// states of one chunk at a time. Sums over channels (dB, dC) are made per block and
// those over batch rows (dA, dD, ddelta_bias) per row, then reduced in a fixed
// order, so results do not depend on the number of threads.
#include "selective_scan.h"

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <vector>

#include "scratch.h"

namespace mambatron::cpu {

namespace {

constexpr int64_t kBlock = 32;  // channels per task
constexpr int64_t kChunk = 64;  // tokens between the states backward keeps
// Below this many (token, channel, state) updates a call runs on one thread: starting
// threads costs more than the work.
constexpr int64_t kParallelWork = 1 << 16;

template <class T>
void exp_inplace(T* p, int64_t len) {
  Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> a(p, len);
  a = a.exp();
}

// Arrays of one block's channels (at most kBlock), on the stack.
template <class T>
using BlockArray = Eigen::Array<T, Eigen::Dynamic, 1, 0, kBlock, 1>;

// softplus(v) = log1p(exp(v)), and v itself past 20. The exponentials and logarithms
// run vectorised in Eigen (its log1p and select run one element at a time); log1p(e)
// is log(1 + e) · e / ((1 + e) − 1), which cancels the rounding of 1 + e and keeps
// full relative precision for small e.
template <class T>
void softplus_inplace(T* p, int64_t len) {  // len <= kBlock
  Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> v(p, len);
  const BlockArray<T> e = v.min(T(20)).exp(), one_plus = T(1) + e, lg = one_plus.log();
  for (int64_t k = 0; k < len; ++k)
    p[k] = p[k] > T(20) ? p[k] : one_plus[k] == T(1) ? e[k] : lg[k] * e[k] / (one_plus[k] - T(1));
}

template <class T>
void sigmoid_inplace(T* p, int64_t len) {
  Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> a(p, len);
  a = T(1) / (T(1) + (-a).exp());
}

template <class T>
struct Scan {
  const T *u, *delta, *A, *B, *C, *D, *z, *delta_bias, *h0;  // D, z, delta_bias, h0 may be null
  const int32_t* seq;                                        // may be null
  int64_t b, l, d, g, n;
  bool softplus;

  // The state restarts from zero at token t of row i: a new document begins there.
  bool reset(int64_t i, int64_t t) const { return seq && t > 0 && seq[i * l + t] != seq[i * l + t - 1]; }
  T delta_in(int64_t idx, int64_t c) const { return delta[idx] + (delta_bias ? delta_bias[c] : T(0)); }
};

template <class T>
Scan<T> make_scan(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
                  const Tensor& D, const Tensor& z, const Tensor& delta_bias, const Tensor& h0,
                  const Tensor& seq_idx, int64_t b, int64_t l, bool softplus) {
  return Scan<T>{u.data<T>(), delta.data<T>(), A.data<T>(), B.data<T>(), C.data<T>(), D.data_or_null<T>(),
                 z.data_or_null<T>(), delta_bias.data_or_null<T>(), h0.data_or_null<T>(),
                 seq_idx.data_or_null<int32_t>(), b, l, A.size(0), B.size(-2), A.size(1),
                 softplus};
}

// Task k covers row i, group gr, block p: channels [c0, c1).
struct Task {
  int64_t i, gr, p, c0, c1;
};
struct Blocking {
  int64_t per_group, nblk;
  Blocking(int64_t d, int64_t g) : per_group(d / g), nblk((d / g + kBlock - 1) / kBlock) {}
  int64_t count(int64_t b, int64_t g) const { return b * g * nblk; }
  Task task(int64_t k, int64_t g) const {
    int64_t p = k % nblk, gr = (k / nblk) % g, i = k / (nblk * g);
    int64_t c0 = gr * per_group + p * kBlock;
    return {i, gr, p, c0, std::min(c0 + kBlock, (gr + 1) * per_group)};
  }
};

// Advances the block's state H [cb, n] over token t: dt = Δ, E = exp(Δ·A),
// H = E ⊙ H + Δ·u·B_t (H starts from zero at a document boundary).
template <class T>
void advance(const Scan<T>& s, const Task& tk, int64_t t, T* H, T* E, T* dt) {
  const int64_t n = s.n, cb = tk.c1 - tk.c0, row = (tk.i * s.l + t) * s.d;
  const T* Bt = s.B + ((tk.i * s.l + t) * s.g + tk.gr) * n;
  for (int64_t k = 0; k < cb; ++k) dt[k] = s.delta_in(row + tk.c0 + k, tk.c0 + k);
  if (s.softplus) softplus_inplace(dt, cb);
  for (int64_t k = 0; k < cb; ++k)
    for (int64_t j = 0; j < n; ++j) E[k * n + j] = dt[k] * s.A[(tk.c0 + k) * n + j];
  exp_inplace(E, cb * n);
  if (s.reset(tk.i, t)) std::fill(H, H + cb * n, T(0));
  for (int64_t k = 0; k < cb; ++k) {
    T du = dt[k] * s.u[row + tk.c0 + k];
    T* Hk = H + k * n;
    const T* Ek = E + k * n;
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) Hk[j] = Ek[j] * Hk[j] + du * Bt[j];
  }
}

template <class T>
void load_initial(const Scan<T>& s, const Task& tk, T* H) {
  const int64_t cb = tk.c1 - tk.c0, n = s.n;
  if (s.h0) std::copy(s.h0 + (tk.i * s.d + tk.c0) * n, s.h0 + (tk.i * s.d + tk.c0 + cb) * n, H);
  else std::fill(H, H + cb * n, T(0));
}

// y_t[c] before the gate: h_t · C_t + D·u_t.
template <class T>
inline T output(const Scan<T>& s, const T* Hk, const T* Ct, int64_t idx, int64_t c) {
  T acc = T(0);
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < s.n; ++j) acc += Hk[j] * Ct[j];
  return acc + (s.D ? s.D[c] * s.u[idx] : T(0));
}

template <class T>
void forward_typed(const Scan<T>& s, T* y, T* final_state) {
  const Blocking bl(s.d, s.g);
  const int64_t n = s.n, ntasks = bl.count(s.b, s.g);
  const bool parallel = s.b * s.l * s.d * n >= kParallelWork;
#pragma omp parallel if (parallel)
  {
    Scratch<T> H(size_t(kBlock * n)), E(size_t(kBlock * n)), dt(static_cast<size_t>(kBlock)),
        yb(static_cast<size_t>(kBlock)), gate(static_cast<size_t>(kBlock));
#pragma omp for schedule(static)
    for (int64_t k = 0; k < ntasks; ++k) {
      const Task tk = bl.task(k, s.g);
      const int64_t cb = tk.c1 - tk.c0;
      load_initial(s, tk, H.data());
      for (int64_t t = 0; t < s.l; ++t) {
        advance(s, tk, t, H.data(), E.data(), dt.data());
        const T* Ct = s.C + ((tk.i * s.l + t) * s.g + tk.gr) * n;
        const int64_t row = (tk.i * s.l + t) * s.d + tk.c0;
        for (int64_t kk = 0; kk < cb; ++kk) yb[kk] = output(s, H.data() + kk * n, Ct, row + kk, tk.c0 + kk);
        if (s.z) {  // y ⊙ SiLU(z), vectorised over the block
          Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> zb(gate.data(), cb), ya(yb.data(), cb);
          for (int64_t kk = 0; kk < cb; ++kk) gate[kk] = s.z[row + kk];
          ya *= zb / (T(1) + (-zb).exp());
        }
        for (int64_t kk = 0; kk < cb; ++kk) y[row + kk] = yb[kk];
      }
      if (final_state) std::copy(H.begin(), H.begin() + cb * n, final_state + (tk.i * s.d + tk.c0) * n);
    }
  }
}

template <class T>
struct Grads {
  const T* dy;
  const T* dfinal;  // may be null
  T *du, *ddelta, *dz, *dinit;  // dz, dinit may be null
};

// Per thread buffers of backward, sized for a full block.
template <class T>
struct Work {
  Scratch<T> ckpt, Hs, Es, dts, G, zeros, dA_chunk, dBt, dCt, gate, ddt_dv;
  Work(int64_t n, int64_t nchunks)
      : ckpt(size_t(nchunks * kBlock * n)), Hs(size_t(kChunk * kBlock * n)), Es(size_t(kChunk * kBlock * n)),
        dts(size_t(kChunk * kBlock)), G(size_t(kBlock * n)), zeros(size_t(kBlock * n), T(0)),
        dA_chunk(size_t(kBlock * n)), dBt(size_t(n)), dCt(size_t(n)), gate(size_t(kBlock)), ddt_dv(size_t(kBlock)) {}
};

// Backward of one task. dB_out/dC_out receive this block's share of dB, dC at each
// token (row stride `stride` elements per token); dA_row, dD_row, dbias_row its
// sums over tokens.
template <class T>
void backward_task(const Scan<T>& s, const Grads<T>& gd, const Task& tk, Work<T>& w, T* dB_out, T* dC_out,
                   int64_t stride, double* dA_row, double* dD_row, double* dbias_row) {
  const int64_t n = s.n, cb = tk.c1 - tk.c0, bn = cb * n;
  const int64_t nchunks = (s.l + kChunk - 1) / kChunk;
  // The states entering each chunk (only the exponentials of the chunks before the last).
  load_initial(s, tk, w.ckpt.data());
  {
    Scratch<T> H(w.ckpt.begin(), w.ckpt.begin() + bn);
    for (int64_t t = 0; t < (nchunks - 1) * kChunk; ++t) {
      advance(s, tk, t, H.data(), w.Es.data(), w.dts.data());
      if ((t + 1) % kChunk == 0) std::copy(H.begin(), H.end(), w.ckpt.begin() + ((t + 1) / kChunk) * bn);
    }
  }
  // G: the gradient with respect to the state after the token being processed.
  if (gd.dfinal) std::copy(gd.dfinal + (tk.i * s.d + tk.c0) * n, gd.dfinal + (tk.i * s.d + tk.c1) * n, w.G.begin());
  else std::fill(w.G.begin(), w.G.end(), T(0));
  for (int64_t ch = nchunks - 1; ch >= 0; --ch) {
    const int64_t t0 = ch * kChunk, t1 = std::min(s.l, t0 + kChunk);
    const T* ckpt = w.ckpt.data() + ch * bn;
    // Recompute the chunk's states, exponentials and steps.
    std::copy(ckpt, ckpt + bn, w.Hs.begin());
    for (int64_t t = t0; t < t1; ++t) {
      T* H = w.Hs.data() + (t - t0) * bn;
      if (t > t0) std::copy(H - bn, H, H);
      advance(s, tk, t, H, w.Es.data() + (t - t0) * bn, w.dts.data() + (t - t0) * cb);
    }
    std::fill(w.dA_chunk.begin(), w.dA_chunk.begin() + bn, T(0));
    for (int64_t t = t1 - 1; t >= t0; --t) {
      const int64_t r = t - t0, tok = tk.i * s.l + t;
      const T* Ht = w.Hs.data() + r * bn;
      const T* Et = w.Es.data() + r * bn;
      const T* dt = w.dts.data() + r * cb;
      const bool reset = s.reset(tk.i, t);
      const T* Hp = reset ? w.zeros.data() : r > 0 ? Ht - bn : ckpt;  // the state before token t
      const T* Bt = s.B + (tok * s.g + tk.gr) * n;
      const T* Ct = s.C + (tok * s.g + tk.gr) * n;
      T* dBt = w.dBt.data();
      T* dCt = w.dCt.data();
      std::fill(dBt, dBt + n, T(0));
      std::fill(dCt, dCt + n, T(0));
      // Per channel, vectorised over the block: sigmoid(z) and dΔ/dv (v = delta + bias).
      const int64_t row = tok * s.d + tk.c0;
      T* sg = w.gate.data();
      T* dtdv = w.ddt_dv.data();
      if (s.z) {
        std::copy(s.z + row, s.z + row + cb, sg);
        sigmoid_inplace(sg, cb);
      }
      if (s.softplus) {  // sigmoid(v), and 1 where softplus is v itself
        for (int64_t k = 0; k < cb; ++k) dtdv[k] = s.delta_in(row + k, tk.c0 + k);
        const BlockArray<T> v = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>(dtdv, cb);
        sigmoid_inplace(dtdv, cb);
        for (int64_t k = 0; k < cb; ++k) dtdv[k] = v[k] > T(20) ? T(1) : dtdv[k];
      }
      for (int64_t k = 0; k < cb; ++k) {
        const int64_t c = tk.c0 + k, idx = tok * s.d + c;
        const T uc = s.u[idx], dtc = dt[k], dtu = dtc * uc;
        const T* Hk = Ht + k * n;
        const T* Ek = Et + k * n;
        const T* Hpk = Hp + k * n;
        const T* Ac = s.A + c * n;
        T* Gk = w.G.data() + k * n;
        T* dAk = w.dA_chunk.data() + k * n;
        T dyc = gd.dy[idx];  // gradient of the output before the gate
        if (s.z) {
          const T zc = s.z[idx];
          gd.dz[idx] = dyc * output(s, Hk, Ct, idx, c) * sg[k] * (T(1) + zc * (T(1) - sg[k]));
          dyc *= zc * sg[k];
        }
        if (dD_row) dD_row[c] += double(dyc) * double(uc);
        T gB = T(0), gEHA = T(0);
#pragma omp simd reduction(+ : gB, gEHA)
        for (int64_t j = 0; j < n; ++j) {
          const T gj = Gk[j] + dyc * Ct[j];  // total gradient of h_t
          dCt[j] += dyc * Hk[j];
          dBt[j] += dtu * gj;
          gB += gj * Bt[j];
          const T geh = gj * Ek[j] * Hpk[j];
          dAk[j] += dtc * geh;
          gEHA += geh * Ac[j];
          Gk[j] = gj * Ek[j];  // carried to h_{t-1}
        }
        gd.du[idx] = dtc * gB + (s.D ? s.D[c] * dyc : T(0));
        const T ddt = gEHA + uc * gB;
        const T dd = s.softplus ? ddt * dtdv[k] : ddt;
        gd.ddelta[idx] = dd;
        if (dbias_row) dbias_row[c] += double(dd);
      }
      if (reset) std::fill(w.G.begin(), w.G.begin() + bn, T(0));  // nothing flows into the previous document
      std::copy(dBt, dBt + n, dB_out + t * stride);
      std::copy(dCt, dCt + n, dC_out + t * stride);
    }
    for (int64_t e = 0; e < bn; ++e) dA_row[tk.c0 * n + e] += double(w.dA_chunk[e]);
  }
  // After token 0 (never a reset), G is the gradient of the initial state.
  if (gd.dinit) std::copy(w.G.begin(), w.G.begin() + bn, gd.dinit + (tk.i * s.d + tk.c0) * n);
}

template <class T>
void backward_typed(const Scan<T>& s, const Grads<T>& gd, T* dA, T* dB, T* dC, T* dD, T* dbias) {
  const Blocking bl(s.d, s.g);
  const int64_t b = s.b, l = s.l, d = s.d, g = s.g, n = s.n, ntasks = bl.count(b, g);
  const int64_t nchunks = (l + kChunk - 1) / kChunk;
  Scratch<double> dA_rows(size_t(b * d * n), 0.0), dD_rows(dD ? size_t(b * d) : 0, 0.0),
      dbias_rows(dbias ? size_t(b * d) : 0, 0.0);
  // With several blocks per group, each block's dB, dC go to [b, g, nblk, l, n] first.
  const bool direct = bl.nblk <= 1;
  Scratch<T> dB_part(direct ? 0 : size_t(b * g * bl.nblk * l * n)), dC_part(dB_part.size());
  const bool parallel = b * l * d * n >= kParallelWork;
#pragma omp parallel if (parallel)
  {
    Work<T> w(n, std::max<int64_t>(nchunks, 1));  // l = 0 still loads the initial state
#pragma omp for schedule(static)
    for (int64_t k = 0; k < ntasks; ++k) {
      const Task tk = bl.task(k, g);
      T *dB_out, *dC_out;
      int64_t stride;
      if (direct) {
        dB_out = dB + (tk.i * l * g + tk.gr) * n;
        dC_out = dC + (tk.i * l * g + tk.gr) * n;
        stride = g * n;
      } else {
        int64_t off = ((tk.i * g + tk.gr) * bl.nblk + tk.p) * l * n;
        dB_out = dB_part.data() + off;
        dC_out = dC_part.data() + off;
        stride = n;
      }
      backward_task(s, gd, tk, w, dB_out, dC_out, stride, dA_rows.data() + tk.i * d * n,
                    dD ? dD_rows.data() + tk.i * d : nullptr, dbias ? dbias_rows.data() + tk.i * d : nullptr);
    }
  }
  if (bl.nblk == 0) {  // d = 0: no channel contributes
    std::fill(dB, dB + b * l * g * n, T(0));
    std::fill(dC, dC + b * l * g * n, T(0));
  } else if (!direct) {
#pragma omp parallel for collapse(2) schedule(static) if (parallel)
    for (int64_t i = 0; i < b; ++i)
      for (int64_t gr = 0; gr < g; ++gr)
        for (int64_t t = 0; t < l; ++t)
          for (int64_t j = 0; j < n; ++j) {
            T sb = T(0), sc = T(0);
            for (int64_t p = 0; p < bl.nblk; ++p) {
              int64_t off = (((i * g + gr) * bl.nblk + p) * l + t) * n + j;
              sb += dB_part[off];
              sc += dC_part[off];
            }
            dB[((i * l + t) * g + gr) * n + j] = sb;
            dC[((i * l + t) * g + gr) * n + j] = sc;
          }
  }
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t c = 0; c < d; ++c) {
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0;
      for (int64_t i = 0; i < b; ++i) acc += dA_rows[(i * d + c) * n + j];
      dA[c * n + j] = T(acc);
    }
    double accD = 0, accb = 0;
    for (int64_t i = 0; i < b; ++i) {
      if (dD) accD += dD_rows[i * d + c];
      if (dbias) accb += dbias_rows[i * d + c];
    }
    if (dD) dD[c] = T(accD);
    if (dbias) dbias[c] = T(accb);
  }
}

}  // namespace

void selective_scan_forward(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
                            const Tensor& D, const Tensor& z, const Tensor& delta_bias, const Tensor& initial_state,
                            const Tensor& seq_idx, Tensor& y, Tensor& final_state, const SelectiveScanOptions& opt) {
  const char* op = "selective_scan_forward";
  const int64_t b = u.size(0), l = u.size(1);
  if (seq_idx.defined()) {
    const int32_t* seq = seq_idx.data<int32_t>();
    for (int64_t i = 0; i < b; ++i)
      for (int64_t t = 1; t < l; ++t)
        MT_CHECK(seq[i * l + t] >= seq[i * l + t - 1], ValueError, op,
                 ": 'seq_idx' must be non-decreasing along each row; row ", i, " has ", seq[i * l + t - 1], " then ",
                 seq[i * l + t], " at position ", t);
  }
  visit_f32_f64(u.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto s = make_scan<T>(u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx, b, l, opt.delta_softplus);
    forward_typed<T>(s, y.data<T>(), final_state.data_or_null<T>());
  });
}

void selective_scan_backward(const Tensor& dy, const Tensor& d_final_state, const Tensor& u, const Tensor& delta,
                             const Tensor& A, const Tensor& B, const Tensor& C, const Tensor& D, const Tensor& z,
                             const Tensor& delta_bias, const Tensor& initial_state, const Tensor& seq_idx,
                             Tensor& du, Tensor& ddelta, Tensor& dA, Tensor& dB, Tensor& dC, Tensor& dD, Tensor& dz,
                             Tensor& ddelta_bias, Tensor& d_initial_state, const SelectiveScanOptions& opt) {
  const char* op = "selective_scan_backward";
  const int64_t b = u.size(0), l = u.size(1);
  if (seq_idx.defined()) {
    const int32_t* seq = seq_idx.data<int32_t>();
    for (int64_t i = 0; i < b; ++i)
      for (int64_t t = 1; t < l; ++t)
        MT_CHECK(seq[i * l + t] >= seq[i * l + t - 1], ValueError, op,
                 ": 'seq_idx' must be non-decreasing along each row; row ", i, " has ", seq[i * l + t - 1], " then ",
                 seq[i * l + t], " at position ", t);
  }
  visit_f32_f64(u.dtype(), op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto s = make_scan<T>(u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx, b, l, opt.delta_softplus);
    Grads<T> gd{dy.data<T>(), d_final_state.data_or_null<T>(), du.data<T>(), ddelta.data<T>(), dz.data_or_null<T>(),
                d_initial_state.data_or_null<T>()};
    backward_typed<T>(s, gd, dA.data<T>(), dB.data<T>(), dC.data<T>(), dD.data_or_null<T>(),
                      ddelta_bias.data_or_null<T>());
  });
}

// One token is a scan of length 1 that starts from `state` and ends in it.
void selective_scan_step(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
                         const Tensor& D, const Tensor& z, const Tensor& delta_bias, Tensor& state, Tensor& y,
                         const SelectiveScanOptions& opt) {
  visit_f32_f64(u.dtype(), "selective_scan_step", [&](auto tag) {
    using T = typename decltype(tag)::type;
    auto s = make_scan<T>(u, delta, A, B, C, D, z, delta_bias, state, Tensor(), u.size(0), 1, opt.delta_softplus);
    forward_typed<T>(s, y.data<T>(), state.data<T>());
  });
}

}  // namespace mambatron::cpu
