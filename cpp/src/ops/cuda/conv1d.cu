// Causal depthwise conv1d on CUDA: launchers of the kernels in conv1d.cuh.
#include <type_traits>

#include "conv1d.cuh"
#include "conv1d.h"

namespace mambatron::cuda {

namespace {
using conv::ConvArgs;
constexpr int kThreads = 256;  // elementwise kernels (final state, step, parameter sums)

// f(integral_constant<int, w>) for the widths 2..4 the op allows.
template <class F>
void visit_width(int64_t w, F&& f) {
  if (w == 2) f(std::integral_constant<int, 2>{});
  else if (w == 3) f(std::integral_constant<int, 3>{});
  else f(std::integral_constant<int, 4>{});
}

// Channels per thread: `vec` when c and every row pointer allow vector accesses of vec elements.
int channels_per_thread(int vec, int64_t c, size_t elem, std::initializer_list<const void*> rows) {
  if (c % vec != 0) return 1;
  for (const void* p : rows)
    if (reinterpret_cast<uintptr_t>(p) % (size_t(vec) * elem) != 0) return 1;
  return vec;
}

// f(integral_constant<bool, on>).
template <class F>
void visit_bool(bool on, F&& f) {
  if (on) f(std::true_type{});
  else f(std::false_type{});
}

dim3 tile_grid(int64_t b, int64_t l, int64_t c, int v, int groups) {
  const int64_t units = b * conv::tiles_per_row(l, groups);
  return dim3(unsigned((c + conv::kLanes * v - 1) / (conv::kLanes * v)),
              unsigned(units < conv::kMaxUnits ? units : conv::kMaxUnits));
}

template <class T, class P>
ConvArgs<T, P> make_args(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& initial_state,
                         const Tensor& seq_idx, bool silu) {
  ConvArgs<T, P> a{};
  a.x = cptr<T>(x);
  a.weight = cptr<P>(weight);
  a.bias = cptr<P>(bias);
  a.init = cptr<T>(initial_state);
  a.seq = cptr<int32_t>(seq_idx);
  a.b = x.size(0);
  a.l = x.size(1);
  a.c = x.size(2);
  a.silu = silu;
  return a;
}

template <class T, class P, int W, int V, bool S>
void launch_bwd(dim3 grid, dim3 block, cudaStream_t s, const ConvArgs<T, P>& a) {
  constexpr size_t smem = conv::bwd_smem_bytes<T, W, V>();
  if constexpr (smem > 48 * 1024)
    MT_CUDA_CHECK(cudaFuncSetAttribute(conv::conv_bwd_kernel<T, P, W, V, S>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  conv::conv_bwd_kernel<T, P, W, V, S><<<grid, block, smem, s>>>(a);
  MT_CUDA_LAUNCH_CHECK();
}

// f(T, P) for the activation dtype of x and the dtype of weight.
template <class F>
void visit_conv(const char* op, const Tensor& x, const Tensor& weight, F&& f) {
  visit_bf16_f32(x.dtype(), op, "x", [&](auto t) {
    visit_bf16_f32(weight.dtype(), op, "weight", [&](auto p) { f(t, p); });
  });
}
}  // namespace

void conv1d_forward(const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& initial_state,
                    const Tensor& seq_idx, Tensor& out, Tensor& final_state, const Conv1dOptions& opt) {
  const char* op = "conv1d_forward";
  const int dev = x.device().index;
  DeviceGuard guard(dev);
  cudaStream_t s = stream(dev);
  const int64_t b = x.size(0), l = x.size(1), c = x.size(2), w = weight.size(1);
  visit_conv(op, x, weight, [&](auto t, auto p) {
    using T = typename decltype(t)::type;
    using P = typename decltype(p)::type;
    ConvArgs<T, P> a = make_args<T, P>(x, weight, bias, initial_state, seq_idx, opt.silu);
    a.out = mptr<T>(out);
    if (b > 0 && l > 0 && c > 0) {
      constexpr int VEC = 4;  // channels per thread: a staged bf16 tile leaves room for three blocks per SM
      const int v = channels_per_thread(VEC, c, sizeof(T), {a.x, a.out});
      visit_width(w, [&](auto wc) {
        constexpr int W = decltype(wc)::value;
        const dim3 grid = tile_grid(b, l, c, v, conv::kFwdGroups), block(conv::kLanes, conv::kFwdGroups);
        if (v == VEC) {
          constexpr size_t smem = conv::fwd_smem_bytes<T, W, VEC>();
          MT_CUDA_CHECK(cudaFuncSetAttribute(conv::conv_fwd_kernel<T, P, W, VEC>,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
          conv::conv_fwd_kernel<T, P, W, VEC><<<grid, block, smem, s>>>(a);
        } else {
          conv::conv_fwd_kernel<T, P, W, 1><<<grid, block, conv::fwd_smem_bytes<T, W, 1>(), s>>>(a);
        }
        MT_CUDA_LAUNCH_CHECK();
      });
    }
    if (final_state.defined() && b * c > 0) {
      conv::conv_final_state_kernel<T><<<grid_for(b * c * (w - 1), kThreads), kThreads, 0, s>>>(
          a.x, a.init, a.seq, mptr<T>(final_state), b, l, c, int(w));
      MT_CUDA_LAUNCH_CHECK();
    }
  });
}

void conv1d_backward(const Tensor& dout, const Tensor& d_final_state, const Tensor& x, const Tensor& weight,
                     const Tensor& bias, const Tensor& initial_state, const Tensor& seq_idx, Tensor& dx,
                     Tensor& dweight, Tensor& dbias, Tensor& d_initial_state, const Conv1dOptions& opt) {
  const char* op = "conv1d_backward";
  const int dev = x.device().index;
  DeviceGuard guard(dev);
  cudaStream_t s = stream(dev);
  const int64_t b = x.size(0), l = x.size(1), c = x.size(2), w = weight.size(1);
  if (c == 0) return;
  const int seg = conv::bwd_segment(b, l, c);
  const int64_t per_row = conv::bwd_units_per_row(l, seg), units = b * per_row;
  Tensor partial = Tensor::empty({units > 0 ? units * (w + 1) * c : 1}, DType::f32, x.device());
  visit_conv(op, x, weight, [&](auto t, auto p) {
    using T = typename decltype(t)::type;
    using P = typename decltype(p)::type;
    ConvArgs<T, P> a = make_args<T, P>(x, weight, bias, initial_state, seq_idx, opt.silu);
    a.dout = cptr<T>(dout);
    a.dfinal = cptr<T>(d_final_state);
    a.dx = mptr<T>(dx);
    a.dinit = mptr<T>(d_initial_state);
    a.partial = mptr<float>(partial);
    a.seg = seg;
    a.per_row = per_row;
    a.units = units;
    if (units > 0) {
      constexpr int VEC = 4;
      const int v = channels_per_thread(VEC, c, sizeof(T), {a.x, a.dout, a.dx});
      const dim3 grid(unsigned((c + conv::kLanes * v - 1) / (conv::kLanes * v)),
                      unsigned(units < conv::kMaxUnits ? units : conv::kMaxUnits));
      const dim3 block(conv::kLanes, conv::kBwdWarps);
      visit_width(w, [&](auto wc) {
        visit_bool(opt.silu, [&](auto sc) {
          constexpr int W = decltype(wc)::value;
          constexpr bool S = decltype(sc)::value;
          if (v == VEC) launch_bwd<T, P, W, VEC, S>(grid, block, s, a);
          else launch_bwd<T, P, W, 1, S>(grid, block, s, a);
        });
      });
    }
    visit_bf16_f32(dweight.dtype(), op, "dweight", [&](auto g) {
      using G = typename decltype(g)::type;
      conv::conv_param_finish_kernel<G><<<grid_for((w + 1) * c, kThreads), kThreads, 0, s>>>(
          a.partial, units, c, int(w), mptr<G>(dweight), mptr<G>(dbias));
      MT_CUDA_LAUNCH_CHECK();
    });
  });
}

void conv1d_step(const Tensor& x, const Tensor& weight, const Tensor& bias, Tensor& conv_state, Tensor& out,
                 const Conv1dOptions& opt) {
  const char* op = "conv1d_step";
  const int dev = x.device().index;
  DeviceGuard guard(dev);
  const int64_t b = x.size(0), c = x.size(1), w = weight.size(1);
  if (b * c == 0) return;
  visit_conv(op, x, weight, [&](auto t, auto p) {
    using T = typename decltype(t)::type;
    using P = typename decltype(p)::type;
    conv::conv_step_kernel<T, P><<<grid_for(b * c, kThreads), kThreads, 0, stream(dev)>>>(
        cptr<T>(x), cptr<P>(weight), cptr<P>(bias), mptr<T>(conv_state), mptr<T>(out), b, c, int(w), opt.silu);
    MT_CUDA_LAUNCH_CHECK();
  });
}

}  // namespace mambatron::cuda
