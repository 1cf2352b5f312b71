// Mamba-1 selective scan on CUDA: launchers of the kernels in selective_scan.cuh and
// selective_scan_backward.cuh.
#include <algorithm>

#include "selective_scan.cuh"
#include "selective_scan_backward.cuh"
#include "selective_scan.h"

namespace mambatron::cuda {

namespace {
using scan::ScanArgs;
constexpr int kThreads = 128;  // forward, checkpoints, sums

// f(integral_constant<int, NS>) for the state slots that hold n.
template <class F>
void visit_state(int64_t n, F&& f) {
  if (n <= 16) f(std::integral_constant<int, 16>{});
  else if (n <= 32) f(std::integral_constant<int, 32>{});
  else f(std::integral_constant<int, 64>{});
}

// A flat scratch tensor of n elements (at least one, so that it has an address).
Tensor scratch(int64_t n, DType dt, Device device) { return Tensor::empty(Shape{n > 0 ? n : 1}, dt, device); }

template <class T>
ScanArgs<T> make_args(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
                      const Tensor& D, const Tensor& z, const Tensor& delta_bias, const Tensor& init,
                      const Tensor& seq_idx, bool softplus) {
  ScanArgs<T> a{};
  a.u = cptr<T>(u);
  a.delta = cptr<T>(delta);
  a.B = cptr<T>(B);
  a.C = cptr<T>(C);
  a.z = cptr<T>(z);
  a.A = cptr<float>(A);
  a.D = cptr<float>(D);
  a.bias = cptr<float>(delta_bias);
  a.init = cptr<float>(init);
  a.seq = cptr<int32_t>(seq_idx);
  a.b = u.size(0);
  a.l = u.dim() == 3 ? u.size(1) : 1;
  a.d = u.size(-1);
  a.g = B.size(-2);
  a.n = A.size(1);
  a.softplus = softplus;
  return a;
}

template <class T, int NS>
void set_bc_vec(ScanArgs<T>& a) {
  a.bc_vec = a.n == NS && aligned16({a.B, a.C});
}

// Passes 1 and 2 (selective_scan.cuh): states [b, nchunk, n, d] ← the state entering
// each chunk of kc tokens. nchunk >= 1; l > 0.
template <class T, int NS>
void chunk_entry_states(const ScanArgs<T>& a, int64_t kc, int64_t nchunk, float* states, float* dsum,
                        cudaStream_t s) {
  const int64_t local = a.b * (nchunk - 1) * a.d, carry = a.b * a.n * a.d;
  if (local > 0) {
    scan::scan_chunk_local_kernel<T, NS><<<unsigned((local + kThreads - 1) / kThreads), kThreads, 0, s>>>(
        a, kc, nchunk, states, dsum);
    MT_CUDA_LAUNCH_CHECK();
  }
  if (carry > 0) {
    scan::scan_chunk_carry_kernel<<<unsigned((carry + kThreads - 1) / kThreads), kThreads, 0, s>>>(
        a.A, a.init, a.b, a.d, a.n, nchunk, dsum, states);
    MT_CUDA_LAUNCH_CHECK();
  }
}

// Tokens per chunk of the forward and of the backward's gradient passes: the fewest
// chunks that give about kWant walkers (row, chunk, channel; a thread each, several
// waves on an H100), in chunks of at least kMin tokens so that the chunk states stay
// small beside the activations (n·4/kMin bytes per token and channel).
int64_t chunk_tokens(int64_t b, int64_t l, int64_t d) {
  constexpr int64_t kWant = int64_t(1) << 20, kMin = 64;
  int64_t kc = kMin;
  while (kc < l && b * d * ((l + kc - 1) / kc) > kWant) kc *= 2;
  return kc;
}

// Segments per block of the backward (a span): the most that still give min_blocks
// blocks, so that the per-(row, span) f64 partials of dA, dD and ddelta_bias stay below
// about 2·min_blocks·channels·(n + 2) doubles (one segment per block when that gives
// fewer). A thread a channel: about ten waves on an H100 (kSpanBlocks). Teams: 2^17
// threads (kTeamSpanThreads; two waves at NS 16), so that a row of the 8B shapes is one
// span and the state gradient's chunk passes do not run.
constexpr int64_t kSpanBlocks = 4096, kTeamSpanThreads = int64_t(1) << 17;
int64_t backward_span(int64_t row_blocks, int64_t nseg, int64_t min_blocks) {
  int64_t span = 1;
  while (span < nseg && row_blocks * ((nseg + 2 * span - 1) / (2 * span)) >= min_blocks) span *= 2;
  return span;
}

// Passes 1 and 2 of the state gradient (selective_scan_backward.cuh): grads [b, nchunk, n, d]
// ← the G entering each chunk of kc tokens from the right. nchunk >= 2.
template <class T, int NS>
void chunk_entry_grads(const ScanArgs<T>& a, int64_t kc, int64_t nchunk, float* grads, float* dsum,
                       cudaStream_t s) {
  const int64_t local = a.b * (nchunk - 1) * a.d, carry = a.b * a.n * a.d;
  if (local > 0) {
    scan::scan_grad_local_kernel<T, NS><<<unsigned((local + kThreads - 1) / kThreads), kThreads, 0, s>>>(
        a, kc, nchunk, grads, dsum);
    MT_CUDA_LAUNCH_CHECK();
  }
  if (carry > 0) {
    scan::scan_grad_carry_kernel<<<unsigned((carry + kThreads - 1) / kThreads), kThreads, 0, s>>>(
        a.A, a.dfinal, a.b, a.d, a.n, nchunk, dsum, grads);
    MT_CUDA_LAUNCH_CHECK();
  }
}

// Whether rows are walked whole (selective_scan.cuh, "walks of whole rows"): enough
// channels to fill the GPU, a group's width a multiple of a block, B and C in packs
// (set_bc_vec first) and the activations' rows 16-byte aligned.
template <class T, int NS>
bool walks(const ScanArgs<T>& a) {
  constexpr int CH = scan::Walk<T, NS, false>::CH;
  return a.b * a.d >= scan::kWalkChannels && a.bc_vec && (a.d / a.g) % CH == 0 &&
         a.d * int64_t(sizeof(T)) % 16 == 0 && aligned16({a.u, a.delta, a.z});
}

// The walk: y and the final state, or (kCkpt) the state entering every seg-th token
// into ckpt [b, nseg, n, d].
template <class T, int NS, bool kCkpt>
void launch_walk(const ScanArgs<T>& a, float* ckpt, int64_t seg, int64_t nseg, cudaStream_t s) {
  using Wk = scan::Walk<T, NS, kCkpt>;
  MT_CHECK(!kCkpt || seg % Wk::K == 0, ValueError, "selective_scan_backward: internal checkpoint spacing ", seg,
           " is not a multiple of the walk's ", Wk::K, " tokens");
  auto kernel = scan::scan_walk_kernel<T, NS, kCkpt>;
  MT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(Wk::kSmemBytes)));
  kernel<<<unsigned(a.b * a.d / Wk::CH), Wk::CH, Wk::kSmemBytes, s>>>(a, ckpt, seg, nseg);
  MT_CUDA_LAUNCH_CHECK();
}

template <class T, int NS>
void launch_forward(ScanArgs<T> a, Device device, cudaStream_t s) {
  if (a.b * a.d == 0) return;
  set_bc_vec<T, NS>(a);
  const int64_t kc = chunk_tokens(a.b, a.l, a.d), nchunk = a.l > kc ? (a.l + kc - 1) / kc : 1;
  if (nchunk > 1 && walks<T, NS>(a)) {
    launch_walk<T, NS, false>(a, nullptr, 0, 0, s);
    return;
  }
  Tensor states, dsum;
  if (nchunk > 1) {
    states = scratch(a.b * nchunk * a.n * a.d, DType::f32, device);
    dsum = scratch(a.b * nchunk * a.d, DType::f32, device);
    chunk_entry_states<T, NS>(a, kc, nchunk, mptr<float>(states), mptr<float>(dsum), s);
  }
  const int64_t threads = a.b * nchunk * a.d;
  scan::scan_fwd_kernel<T, NS><<<unsigned((threads + kThreads - 1) / kThreads), kThreads, 0, s>>>(
      a, kc, nchunk, nchunk > 1 ? cptr<float>(states) : nullptr);
  MT_CUDA_LAUNCH_CHECK();
}
}  // namespace

void selective_scan_forward(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
                            const Tensor& D, const Tensor& z, const Tensor& delta_bias, const Tensor& initial_state,
                            const Tensor& seq_idx, Tensor& y, Tensor& final_state, const SelectiveScanOptions& opt) {
  const char* op = "selective_scan_forward";
  const int dev = u.device().index;
  DeviceGuard guard(dev);
  visit_bf16_f32(u.dtype(), op, "u", [&](auto tag) {
    using T = typename decltype(tag)::type;
    ScanArgs<T> a = make_args<T>(u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx, opt.delta_softplus);
    a.y = mptr<T>(y);
    a.final_state = mptr<float>(final_state);
    visit_state(a.n, [&](auto ns) { launch_forward<T, decltype(ns)::value>(a, u.device(), stream(dev)); });
  });
}

void selective_scan_step(const Tensor& u, const Tensor& delta, const Tensor& A, const Tensor& B, const Tensor& C,
                         const Tensor& D, const Tensor& z, const Tensor& delta_bias, Tensor& state, Tensor& y,
                         const SelectiveScanOptions& opt) {
  const int dev = u.device().index;
  DeviceGuard guard(dev);
  visit_bf16_f32(u.dtype(), "selective_scan_step", "u", [&](auto tag) {
    using T = typename decltype(tag)::type;
    // A scan of one token that starts from `state` and ends in it.
    ScanArgs<T> a = make_args<T>(u, delta, A, B, C, D, z, delta_bias, state, Tensor(), opt.delta_softplus);
    a.y = mptr<T>(y);
    a.final_state = mptr<float>(state);
    visit_state(a.n, [&](auto ns) { launch_forward<T, decltype(ns)::value>(a, u.device(), stream(dev)); });
  });
}

void selective_scan_backward(const Tensor& dy, const Tensor& d_final_state, const Tensor& u, const Tensor& delta,
                             const Tensor& A, const Tensor& B, const Tensor& C, const Tensor& D, const Tensor& z,
                             const Tensor& delta_bias, const Tensor& initial_state, const Tensor& seq_idx,
                             Tensor& du, Tensor& ddelta, Tensor& dA, Tensor& dB, Tensor& dC, Tensor& dD, Tensor& dz,
                             Tensor& ddelta_bias, Tensor& d_initial_state, const SelectiveScanOptions& opt) {
  const char* op = "selective_scan_backward";
  const int dev = u.device().index;
  const Device device = u.device();
  DeviceGuard guard(dev);
  cudaStream_t s = stream(dev);
  visit_bf16_f32(u.dtype(), op, "u", [&](auto tag) {
    using T = typename decltype(tag)::type;
    ScanArgs<T> a = make_args<T>(u, delta, A, B, C, D, z, delta_bias, initial_state, seq_idx, opt.delta_softplus);
    a.dy = cptr<T>(dy);
    a.dfinal = cptr<float>(d_final_state);
    a.du = mptr<T>(du);
    a.ddelta = mptr<T>(ddelta);
    a.dz = mptr<T>(dz);
    a.dB = mptr<T>(dB);
    a.dC = mptr<T>(dC);
    a.dinit = mptr<float>(d_initial_state);
    const int64_t b = a.b, l = a.l, d = a.d, g = a.g, n = a.n;
    if (d == 0) {  // no channel contributes
      MT_CUDA_CHECK(cudaMemsetAsync(a.dB, 0, size_t(dB.nbytes()), s));
      MT_CUDA_CHECK(cudaMemsetAsync(a.dC, 0, size_t(dC.nbytes()), s));
      return;
    }
    visit_state(n, [&](auto ns) {
      constexpr int NS = decltype(ns)::value;
      using PL = scan::Plan<NS>;
      const int64_t nseg = (l + PL::kSegment - 1) / PL::kSegment;
      set_bc_vec<T, NS>(a);
      a.cpg = d / g;
      if (a.cpg >= PL::kThreads) {
        a.per_group = (a.cpg + PL::kThreads - 1) / PL::kThreads;
        a.gpb = 1;
        a.blocks_per_row = g * a.per_group;
      } else {
        a.per_group = 1;
        a.gpb = PL::kThreads / a.cpg;
        a.blocks_per_row = (g + a.gpb - 1) / a.gpb;
      }
      // Staged (selective_scan_backward.cuh): a block's channels in one group, B and C rows of NS
      // elements in 16-byte packs, the activations' rows and their gradients' 16-byte
      // aligned; teams of kTeam lanes a channel.
      const bool staged = a.bc_vec && a.cpg % PL::kThreads == 0 && d * int64_t(sizeof(T)) % 16 == 0 &&
                          aligned16({a.u, a.delta, a.z, a.dy, a.du, a.ddelta, a.dz});
      const int threads = staged ? scan::kBwdThreads<T, NS, true> : scan::kBwdThreads<T, NS, false>;
      // Spans of a.span segments; the G entering a span from chunks of gchunk tokens
      // (powers of two times kSegment: a span ends where a chunk ends).
      a.span = backward_span(b * a.blocks_per_row, nseg, staged ? kTeamSpanThreads / threads : kSpanBlocks);
      a.nspan = nseg > a.span ? (nseg + a.span - 1) / a.span : 1;
      a.gchunk = std::min(chunk_tokens(b, l, d), a.span * PL::kSegment);
      a.ngchunk = a.nspan > 1 ? (l + a.gchunk - 1) / a.gchunk : 1;
      // A span ends where a gradient chunk ends, and the chunks' ΣΔ fit in dsum.
      MT_CHECK(a.nspan == 1 || ((a.span * PL::kSegment) % a.gchunk == 0 && a.ngchunk <= nseg), ValueError, op,
               ": internal chunk plan (span ", a.span, ", chunk ", a.gchunk, ") does not tile the row");
      Tensor ckpt = scratch(b * nseg * n * d, DType::f32, device), dsum = scratch(b * nseg * d, DType::f32, device);
      Tensor gin = scratch(a.nspan > 1 ? b * a.ngchunk * n * d : 0, DType::f32, device);
      Tensor part = scratch(a.per_group > 1 ? 2 * b * g * a.per_group * l * n : 0, DType::f32, device);
      const int64_t rows = b * a.nspan;
      Tensor dA_rows = scratch(rows * d * n, DType::f64, device);
      Tensor dD_rows = scratch(rows * d, DType::f64, device), dbias_rows = scratch(rows * d, DType::f64, device);
      a.ckpt = mptr<float>(ckpt);
      a.gin = cptr<float>(gin);
      a.part = mptr<float>(part);
      a.dA_rows = mptr<double>(dA_rows);
      a.dD_rows = mptr<double>(dD_rows);
      a.dbias_rows = mptr<double>(dbias_rows);
      if (b > 0) {
        if (l > 0 && walks<T, NS>(a))
          launch_walk<T, NS, true>(a, a.ckpt, PL::kSegment, nseg, s);
        else if (l > 0)
          chunk_entry_states<T, NS>(a, PL::kSegment, nseg, a.ckpt, mptr<float>(dsum), s);
        // ΣΔ of the gradient's chunks reuses dsum (ngchunk <= nseg), done with by now.
        if (a.nspan > 1) chunk_entry_grads<T, NS>(a, a.gchunk, a.ngchunk, mptr<float>(gin), mptr<float>(dsum), s);
        auto kernel = staged ? scan::scan_bwd_kernel<T, NS, true> : scan::scan_bwd_kernel<T, NS, false>;
        const size_t smem = staged ? scan::Stage<T, NS>::kSmemBytes : PL::kSmemBytes;
        MT_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
        kernel<<<unsigned(rows * a.blocks_per_row), threads, smem, s>>>(a, nseg);
        MT_CUDA_LAUNCH_CHECK();
        if (a.per_group > 1 && l > 0) {
          scan::scan_group_sum_kernel<T><<<grid_for(2 * b * l * g * n, kThreads * 2), kThreads * 2, 0, s>>>(
              a.part, b, l, g, n, a.per_group, a.dB, a.dC);
          MT_CUDA_LAUNCH_CHECK();
        }
      }
      scan::scan_param_sum_kernel<<<grid_for(d * n + d, kThreads * 2), kThreads * 2, 0, s>>>(
          a.dA_rows, a.dD_rows, a.dbias_rows, rows, d, n, mptr<float>(dA), mptr<float>(dD), mptr<float>(ddelta_bias));
      MT_CUDA_LAUNCH_CHECK();
    });
  });
}

}  // namespace mambatron::cuda
