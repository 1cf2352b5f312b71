// Norms on the CPU, threaded by OpenMP over rows. Row statistics and the dot
// products of the backward are accumulated in f64 whatever the dtype (in SIMD
// lanes: a fixed order for a given build); the elementwise parts run in the input
// dtype. Parameter gradients (sums over rows) are reduced in a fixed order, so
// they have the same bits for any thread count.
#include "scratch.h"
#include "norm.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "activation.h"
#include "mambatron/dtype.h"

namespace mambatron::cpu {

namespace {
constexpr int64_t kParallelMin = 1 << 14;  // elements; fewer run on one thread
constexpr int64_t kMaxBlocks = 128;        // row blocks of a parameter-gradient sum

// Calls row_fn(r, acc) for every row r, where acc is the f64 accumulator (width
// wide) of r's block; blocks are cut by the row count alone and each visits its
// rows in order. Then calls out_fn(j, total_j) with the block sums added in
// block order.
template <class RowFn, class OutFn>
void rows_with_param_grads(int64_t rows, int64_t width, bool parallel, RowFn row_fn, OutFn out_fn) {
  const int64_t size = std::max<int64_t>(1, (rows + kMaxBlocks - 1) / kMaxBlocks);
  const int64_t count = (rows + size - 1) / size;
  Scratch<double> partial(size_t(count * width), 0.0);
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t b = 0; b < count; ++b) {
    double* acc = partial.data() + b * width;
    const int64_t end = std::min(rows, (b + 1) * size);
    for (int64_t r = b * size; r < end; ++r) row_fn(r, acc);
  }
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t j = 0; j < width; ++j) {
    double s = 0;
    for (int64_t b = 0; b < count; ++b) s += partial[size_t(b * width + j)];
    out_fn(j, s);
  }
}

// Rows and width of a [..., d] tensor.
struct Rows {
  int64_t rows, d;
  explicit Rows(const Tensor& x) : rows(x.numel() / x.size(-1)), d(x.size(-1)) {}
  bool parallel() const { return rows > 1 && rows * d >= kParallelMin; }
};
}  // namespace

// ---------------------------------------------------------------- RMSNorm
// y = x · r · w, r = (mean(x²) + eps)^-½.
// dx = r (g − x r² mean(g x)) with g = dy · w;  dw = Σ_rows dy · x · r.

void rmsnorm_forward(const Tensor& x, const Tensor& weight, double eps, Tensor& out, Tensor& rstd) {
  visit_f32_f64(x.dtype(), "rmsnorm_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const Rows s(x);
    const T *px = x.data<T>(), *w = weight.data<T>();
    T *po = out.data<T>(), *pr = rstd.data<T>();
#pragma omp parallel for schedule(static) if (s.parallel())
    for (int64_t r = 0; r < s.rows; ++r) {
      const T* xr = px + r * s.d;
      T* o = po + r * s.d;
      double ss = 0;
#pragma omp simd reduction(+ : ss)
      for (int64_t j = 0; j < s.d; ++j) ss += double(xr[j]) * double(xr[j]);
      const T rs = T(1.0 / std::sqrt(ss / double(s.d) + eps));
      pr[r] = rs;
      for (int64_t j = 0; j < s.d; ++j) o[j] = xr[j] * rs * w[j];
    }
  });
}

void rmsnorm_backward(const Tensor& dout, const Tensor& x, const Tensor& weight, const Tensor& rstd, Tensor& dx,
                      Tensor& dweight, const Tensor& dresidual) {
  visit_f32_f64(x.dtype(), "rmsnorm_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const Rows s(x);
    const T *pd = dout.data<T>(), *px = x.data<T>(), *w = weight.data<T>(), *pr = rstd.data<T>();
    T *pg = dx.data<T>(), *dw = dweight.data<T>();
    const T* pres = dresidual.data_or_null<T>();  // may alias dx
    rows_with_param_grads(
        s.rows, s.d, s.parallel(),
        [&](int64_t r, double* acc) {
          const T *dy = pd + r * s.d, *xr = px + r * s.d;
          T* g = pg + r * s.d;
          const T rs = pr[r];
          double dot = 0;
#pragma omp simd reduction(+ : dot)
          for (int64_t j = 0; j < s.d; ++j) dot += double(dy[j]) * double(w[j]) * double(xr[j]);
          const T c = T(dot * double(rs) * double(rs) / double(s.d));
          const T* res = pres ? pres + r * s.d : nullptr;
          for (int64_t j = 0; j < s.d; ++j) {
            const T gx = rs * (dy[j] * w[j] - xr[j] * c);
            g[j] = res ? res[j] + gx : gx;
            acc[j] += double(dy[j]) * double(xr[j]) * double(rs);
          }
        },
        [&](int64_t j, double v) { dw[j] = T(v); });
  });
}

// ---------------------------------------------------------------- LayerNorm-1p
// y = x̂ (1 + γ) + β, x̂ = (x − μ) r, r = (var + eps)^-½ (biased variance).
// dx = r (g − mean(g) − x̂ mean(g x̂)) with g = dy (1 + γ);  dγ = Σ dy x̂;  dβ = Σ dy.

void layernorm1p_forward(const Tensor& x, const Tensor& gamma, const Tensor& beta, double eps, Tensor& out,
                         Tensor& mean, Tensor& rstd) {
  visit_f32_f64(x.dtype(), "layernorm1p_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const Rows s(x);
    const T *px = x.data<T>(), *ga = gamma.data<T>(), *be = beta.data<T>();
    T *po = out.data<T>(), *pm = mean.data<T>(), *pr = rstd.data<T>();
#pragma omp parallel for schedule(static) if (s.parallel())
    for (int64_t r = 0; r < s.rows; ++r) {
      const T* xr = px + r * s.d;
      T* o = po + r * s.d;
      double sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < s.d; ++j) sum += double(xr[j]);
      const double mu = sum / double(s.d);
      double var = 0;  // two passes: no cancellation when |μ| ≫ σ
#pragma omp simd reduction(+ : var)
      for (int64_t j = 0; j < s.d; ++j) var += (double(xr[j]) - mu) * (double(xr[j]) - mu);
      const T rs = T(1.0 / std::sqrt(var / double(s.d) + eps)), m = T(mu);
      pm[r] = m;
      pr[r] = rs;
      for (int64_t j = 0; j < s.d; ++j) o[j] = (xr[j] - m) * rs * (T(1) + ga[j]) + be[j];
    }
  });
}

void layernorm1p_backward(const Tensor& dout, const Tensor& x, const Tensor& gamma, const Tensor& mean,
                          const Tensor& rstd, Tensor& dx, Tensor& dgamma, Tensor& dbeta, const Tensor& dresidual) {
  visit_f32_f64(x.dtype(), "layernorm1p_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const Rows s(x);
    const T *pd = dout.data<T>(), *px = x.data<T>(), *ga = gamma.data<T>();
    const T *pm = mean.data<T>(), *pr = rstd.data<T>();
    T *pg = dx.data<T>(), *dg = dgamma.data<T>(), *db = dbeta.data<T>();
    const T* pres = dresidual.data_or_null<T>();  // may alias dx
    rows_with_param_grads(
        s.rows, 2 * s.d, s.parallel(),
        [&](int64_t r, double* acc) {
          const T *dy = pd + r * s.d, *xr = px + r * s.d;
          T* g = pg + r * s.d;
          const T m = pm[r], rs = pr[r];
          double sum_g = 0, sum_gx = 0;
#pragma omp simd reduction(+ : sum_g, sum_gx)
          for (int64_t j = 0; j < s.d; ++j) {
            const double gj = double(dy[j]) * (1.0 + double(ga[j]));
            sum_g += gj;
            sum_gx += gj * double((xr[j] - m) * rs);
          }
          const T mg = T(sum_g / double(s.d)), mgx = T(sum_gx / double(s.d));
          const T* res = pres ? pres + r * s.d : nullptr;
          for (int64_t j = 0; j < s.d; ++j) {
            const T xhat = (xr[j] - m) * rs;
            const T gx = rs * (dy[j] * (T(1) + ga[j]) - mg - xhat * mgx);
            g[j] = res ? res[j] + gx : gx;
            acc[j] += double(dy[j]) * double(xhat);
            acc[s.d + j] += double(dy[j]);
          }
        },
        [&](int64_t j, double v) { (j < s.d ? dg[j] : db[j - s.d]) = T(v); });
  });
}

// ---------------------------------------------------------------- gated grouped RMSNorm
// u = y · silu(z); per group k of size s = d / groups: out = u · r_k · w,
// r_k = (mean_k(u²) + eps)^-½.  Backward: with g = dout · w,
// du = r_k (g − u r_k² mean_k(g u)), dy = du · silu(z), dz = du · y · silu'(z),
// dw = Σ_rows dout · u · r_k.

void gated_rmsnorm_forward(const Tensor& y, const Tensor& z, const Tensor& weight, int64_t groups, double eps,
                           Tensor& out, Tensor& rstd) {
  visit_f32_f64(y.dtype(), "gated_rmsnorm_forward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const Rows s(y);
    const int64_t gs = s.d / groups;
    const T *py = y.data<T>(), *pz = z.data<T>(), *w = weight.data<T>();
    T *po = out.data<T>(), *pr = rstd.data<T>();
#pragma omp parallel for schedule(static) if (s.parallel())
    for (int64_t r = 0; r < s.rows; ++r) {
      for (int64_t k = 0; k < groups; ++k) {
        const int64_t off = r * s.d + k * gs;
        const T *yr = py + off, *zr = pz + off, *wk = w + k * gs;
        T* o = po + off;
        double ss = 0;
#pragma omp simd reduction(+ : ss)
        for (int64_t j = 0; j < gs; ++j) {
          o[j] = yr[j] * silu(zr[j]);  // u, scaled below
          ss += double(o[j]) * double(o[j]);
        }
        const T rs = T(1.0 / std::sqrt(ss / double(gs) + eps));
        pr[r * groups + k] = rs;
        for (int64_t j = 0; j < gs; ++j) o[j] = o[j] * rs * wk[j];
      }
    }
  });
}

void gated_rmsnorm_backward(const Tensor& dout, const Tensor& y, const Tensor& z, const Tensor& weight,
                            const Tensor& rstd, int64_t groups, Tensor& dy, Tensor& dz, Tensor& dweight) {
  visit_f32_f64(y.dtype(), "gated_rmsnorm_backward", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const Rows s(y);
    const int64_t gs = s.d / groups;
    const T *pd = dout.data<T>(), *py = y.data<T>(), *pz = z.data<T>(), *w = weight.data<T>();
    const T* pr = rstd.data<T>();
    T *pdy = dy.data<T>(), *pdz = dz.data<T>(), *dw = dweight.data<T>();
    rows_with_param_grads(
        s.rows, s.d, s.parallel(),
        [&](int64_t r, double* acc) {
          for (int64_t k = 0; k < groups; ++k) {
            const int64_t off = r * s.d + k * gs;
            const T *d = pd + off, *yr = py + off, *zr = pz + off, *wk = w + k * gs;
            T *gy = pdy + off, *gz = pdz + off;
            double* ak = acc + k * gs;
            const T rs = pr[r * groups + k];
            // First pass: σ(z) parked in dz and u in dy, both read back below.
            double dot = 0;
            for (int64_t j = 0; j < gs; ++j) {
              const T sg = sigmoid(zr[j]);
              gz[j] = sg;
              gy[j] = yr[j] * (zr[j] * sg);  // u, rounded as in the forward
              dot += double(d[j]) * double(wk[j]) * double(gy[j]);
            }
            const T c = T(dot * double(rs) * double(rs) / double(gs));
            for (int64_t j = 0; j < gs; ++j) {
              const T sg = gz[j], u = gy[j];
              const T du = rs * (d[j] * wk[j] - u * c);
              ak[j] += double(d[j]) * double(u) * double(rs);
              gy[j] = du * zr[j] * sg;
              gz[j] = du * yr[j] * sg * (T(1) + zr[j] * (T(1) - sg));
            }
          }
        },
        [&](int64_t j, double v) { dw[j] = T(v); });
  });
}

}  // namespace mambatron::cpu
