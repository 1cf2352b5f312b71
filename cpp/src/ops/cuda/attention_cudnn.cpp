// cuDNN's fused causal attention; see attention_cudnn.h. Compiled in every CUDA
// build; the cuDNN parts only where CMake found cudnn_frontend (MAMBATRON_WITH_CUDNN).
#include "attention_cudnn.h"

#include <cstring>

#include "mambatron/ops.h"

#if defined(MAMBATRON_WITH_CUDNN)
#include <cuda.h>
#include <cuda_runtime.h>
#include <dlfcn.h>

// The cuDNN and NVRTC C functions that cudnn_frontend calls are defined at the end of
// this file, hidden, forwarding to libraries opened at run time: the package links
// neither, and cudnn_frontend calls the CUDA runtime the package itself uses.
#pragma GCC visibility push(hidden)
#include <cudnn.h>
#include <nvrtc.h>
#pragma GCC visibility pop
#include <cudnn_frontend.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <tuple>
#include <unordered_map>

#include "../../core/cuda_context.h"
#endif

namespace mambatron::cuda {

#if defined(MAMBATRON_WITH_CUDNN)
namespace {
namespace fe = cudnn_frontend;

// Tensor ids in the graphs' variant packs.
enum : int64_t { kQ = 1, kK, kV, kO, kStats, kDO, kDQ, kDK, kDV };

struct Library {
  void* handle = nullptr;
  int64_t version = 0;
  std::string error;
};

// Why the libcudnn at `h` cannot serve this build, or "" when it can: cuDNN 9 at least as
// new as the headers it was compiled against, built for the same CUDA major version as
// the runtime the package uses.
std::string unsuitable(void* h, int64_t* version) {
  auto get_version = reinterpret_cast<size_t (*)()>(dlsym(h, "cudnnGetVersion"));
  auto get_cudart = reinterpret_cast<size_t (*)()>(dlsym(h, "cudnnGetCudartVersion"));
  if (!get_version || !get_cudart) return "not a cuDNN library";
  *version = int64_t(get_version());
  const int64_t cudart = int64_t(get_cudart());
  if (*version < CUDNN_VERSION)
    return "cuDNN " + std::to_string(*version) + " is older than the headers of this build (" +
           std::to_string(CUDNN_VERSION) + ")";
  if (cudart / 1000 != CUDART_VERSION / 1000)
    return "cuDNN " + std::to_string(*version) + " is built for CUDA " + std::to_string(cudart / 1000) +
           ", this build for CUDA " + std::to_string(CUDART_VERSION / 1000);
  return {};
}

// Opens libcudnn once, the first suitable of: the copy already loaded into the process
// (e.g. by PyTorch; when that one is unsuitable, none: one cuDNN per process), the one
// the build found (its headers' own library), a system install by soname. The build's
// own comes before the soname because cuDNN 9 opens its sub-libraries by soname: once a
// rejected copy is loaded, a later one would run on the rejected copy's sub-libraries.
const Library& library() {
  static const Library lib = [] {
    Library l;
    std::string tried;
    const struct {
      const char* name;
      int flags;
    } candidates[] = {
        {"libcudnn.so.9", RTLD_NOLOAD},
#ifdef MAMBATRON_CUDNN_LIBRARY
        {MAMBATRON_CUDNN_LIBRARY, 0},
#endif
        {"libcudnn.so.9", 0},
    };
    for (const auto& c : candidates) {
      void* h = dlopen(c.name, RTLD_NOW | RTLD_LOCAL | c.flags);
      if (!h && c.flags == RTLD_NOLOAD) continue;  // not loaded yet: nothing to report
      const char* e = h ? nullptr : dlerror();
      std::string why = h ? unsuitable(h, &l.version) : (e ? e : "not found");
      if (why.empty()) {
        l.handle = h;
        return l;
      }
      if (h) dlclose(h);
      tried += std::string(tried.empty() ? "" : "; ") + (c.flags == RTLD_NOLOAD ? "already loaded " : "") + c.name +
               ": " + why;
      if (c.flags == RTLD_NOLOAD) break;  // a second cuDNN would share the first one's sub-libraries
    }
    l.version = 0;
    l.error = "no suitable libcudnn.so.9 (" + tried + ")";
    return l;
  }();
  return lib;
}

}  // namespace

// The function `name` of the opened libcudnn, typed like its declaration F.
template <class F>
F* cudnn_symbol(const char* name) {
  void* f = library().handle ? dlsym(library().handle, name) : nullptr;
  MT_CHECK(f, Error, "cuDNN attention: libcudnn has no ", name);
  return reinterpret_cast<F*>(f);
}

// The function `name` of NVRTC (opened on first use, for cudnn_frontend's runtime-compiled
// engines), or null when this CUDA version's libnvrtc cannot be opened.
template <class F>
F* nvrtc_symbol(const char* name) {
  static void* lib = dlopen(("libnvrtc.so." + std::to_string(CUDART_VERSION / 1000)).c_str(), RTLD_NOW | RTLD_LOCAL);
  return lib ? reinterpret_cast<F*>(dlsym(lib, name)) : nullptr;
}

namespace {

// What one graph launch covers: b batch rows and hq, hkv heads of tensors with Hq, Hkv
// heads (their strides).
struct Shape {
  int64_t b, l, hq, hkv, p;
  int64_t Hq, Hkv;
};

// One shape's graph: built once, or the reason cuDNN refused it.
struct Plan {
  std::shared_ptr<fe::graph::Graph> graph;
  Shape shape;
  int64_t workspace = 0;
  std::string error;
};
using Key = std::tuple<int, bool, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, uint32_t>;

// The deterministic backward keeps an l × l matrix per (batch row, head) in its
// workspace; past a limit a call runs in groups of batch rows and kv heads. The limit:
// set by set_cudnn_backward_workspace_limit, else 1/16 of the device's memory.
std::atomic<int64_t> backward_workspace_limit{0};

struct State {
  std::mutex mu;  // held while building and executing: the handles and the cache are shared
  std::unordered_map<int, cudnnHandle_t> handles;
  std::unordered_map<int, int64_t> device_memory;
  std::map<Key, Plan> plans;
};

State& state() {
  static State* s = new State();  // never destroyed: handles outlive static teardown order
  return *s;
}

cudnnHandle_t handle_for(State& s, int dev) {
  auto it = s.handles.find(dev);
  if (it != s.handles.end()) return it->second;
  cudnnHandle_t h = nullptr;
  const cudnnStatus_t st = cudnnCreate(&h);
  MT_CHECK(st == CUDNN_STATUS_SUCCESS, CudaError, "cudnnCreate failed on cuda:", dev, " with status ", int(st));
  s.handles.emplace(dev, h);
  return h;
}

// h of the H heads of a contiguous [b, l, H, p], as cuDNN's [b, h, l, p] with strides.
std::shared_ptr<fe::graph::Tensor_attributes> bshd(fe::graph::Graph& g, const char* name, int64_t uid, int64_t b,
                                                   int64_t l, int64_t h, int64_t H, int64_t p) {
  return g.tensor(fe::graph::Tensor_attributes()
                      .set_name(name)
                      .set_uid(uid)
                      .set_dim({b, h, l, p})
                      .set_stride({l * H * p, p, H * p, 1}));
}

void set_bshd(const std::shared_ptr<fe::graph::Tensor_attributes>& t, int64_t uid, int64_t b, int64_t l, int64_t h,
              int64_t H, int64_t p) {
  t->set_output(true).set_uid(uid).set_dim({b, h, l, p}).set_stride({l * H * p, p, H * p, 1});
}

// h of the H heads of a contiguous f32 lse [b, H, l] (cuDNN wants it packed: one row
// of some heads, or all heads of some rows).
void set_stats(const std::shared_ptr<fe::graph::Tensor_attributes>& t, int64_t b, int64_t l, int64_t h, int64_t H) {
  t->set_uid(kStats).set_data_type(fe::DataType_t::FLOAT).set_dim({b, h, l, 1}).set_stride(
      {(b == 1 ? h : H) * l, l, 1, 1});
}

std::shared_ptr<fe::graph::Graph> new_graph() {
  auto g = std::make_shared<fe::graph::Graph>();
  g->set_io_data_type(fe::DataType_t::BFLOAT16)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  return g;
}

std::shared_ptr<fe::graph::Graph> forward_graph(const Shape& x, float scale) {
  auto g = new_graph();
  auto q = bshd(*g, "q", kQ, x.b, x.l, x.hq, x.Hq, x.p), k = bshd(*g, "k", kK, x.b, x.l, x.hkv, x.Hkv, x.p),
       v = bshd(*g, "v", kV, x.b, x.l, x.hkv, x.Hkv, x.p);
  auto opts = fe::graph::SDPA_attributes().set_name("attention").set_generate_stats(true).set_attn_scale(scale);
  opts.set_diagonal_alignment(fe::DiagonalAlignment_t::TOP_LEFT).set_diagonal_band_right_bound(0);
  auto [o, lse] = g->sdpa(q, k, v, opts);
  set_bshd(o, kO, x.b, x.l, x.hq, x.Hq, x.p);
  lse->set_output(true);
  set_stats(lse, x.b, x.l, x.hq, x.Hq);
  return g;
}

std::shared_ptr<fe::graph::Graph> backward_graph(const Shape& x, float scale) {
  auto g = new_graph();
  auto q = bshd(*g, "q", kQ, x.b, x.l, x.hq, x.Hq, x.p), k = bshd(*g, "k", kK, x.b, x.l, x.hkv, x.Hkv, x.p),
       v = bshd(*g, "v", kV, x.b, x.l, x.hkv, x.Hkv, x.p);
  auto o = bshd(*g, "out", kO, x.b, x.l, x.hq, x.Hq, x.p), dout = bshd(*g, "dout", kDO, x.b, x.l, x.hq, x.Hq, x.p);
  auto lse = g->tensor(fe::graph::Tensor_attributes().set_name("lse"));
  set_stats(lse, x.b, x.l, x.hq, x.Hq);
  auto opts = fe::graph::SDPA_backward_attributes()
                  .set_name("attention_backward")
                  .set_attn_scale(scale)
                  .set_deterministic_algorithm(true);
  opts.set_diagonal_alignment(fe::DiagonalAlignment_t::TOP_LEFT).set_diagonal_band_right_bound(0);
  auto [dq, dk, dv] = g->sdpa_backward(q, k, v, o, dout, lse, opts);
  set_bshd(dq, kDQ, x.b, x.l, x.hq, x.Hq, x.p);
  set_bshd(dk, kDK, x.b, x.l, x.hkv, x.Hkv, x.p);
  set_bshd(dv, kDV, x.b, x.l, x.hkv, x.Hkv, x.p);
  return g;
}

// What we hand cuDNN: bf16 activations, f32 lse, no documents, head dim a multiple of 8
// up to 256, 16-byte aligned buffers. Empty when the call fits.
std::string outside_cases(const Tensor& q, const Tensor& lse, const Tensor& seq_idx,
                          std::initializer_list<const Tensor*> acts) {
  if (seq_idx.defined()) return "seq_idx (packed documents) is not handed to cuDNN";
  const int64_t p = q.size(3);
  if (p % 8 != 0 || p > 256) return "head dim " + std::to_string(p) + " is not a multiple of 8 up to 256";
  for (const Tensor* t : acts) {
    if (t->dtype() != DType::bf16) return std::string("dtype ") + dtype_name(t->dtype()) + ", cuDNN takes bf16";
    if (!t->is_contiguous() || reinterpret_cast<uintptr_t>(t->data_ptr()) % 16 != 0)
      return "a tensor is not contiguous and 16-byte aligned";
  }
  if (lse.dtype() != DType::f32 || !lse.is_contiguous() || reinterpret_cast<uintptr_t>(lse.data_ptr()) % 16 != 0)
    return "lse is not contiguous 16-byte aligned f32";
  return {};
}

// Finds or builds the plan for a shape; null (with *why) when cuDNN refuses it.
Plan* plan_for(State& s, cudnnHandle_t h, int dev, bool backward, const Shape& x, float scale, std::string* why) {
  uint32_t bits;
  std::memcpy(&bits, &scale, 4);
  const Key key{dev, backward, x.b, x.l, x.hq, x.hkv, x.p, x.Hq, x.Hkv, bits};
  auto it = s.plans.find(key);
  if (it == s.plans.end()) {
    Plan plan;
    plan.shape = x;
    try {
      plan.graph = backward ? backward_graph(x, scale) : forward_graph(x, scale);
      fe::error_t st = plan.graph->build(h, {fe::HeurMode_t::A});
      if (st.is_good()) st = plan.graph->get_workspace_size(plan.workspace);
      if (!st.is_good()) plan.error = st.get_message();
    } catch (const std::exception& e) {
      plan.error = e.what();
    }
    if (!plan.error.empty()) plan.graph.reset();
    it = s.plans.emplace(key, std::move(plan)).first;
  }
  if (!it->second.graph) {
    if (why) *why = "cuDNN cannot run this shape: " + it->second.error;
    return nullptr;
  }
  return &it->second;
}
// The backward's workspace limit on device `dev`, in bytes.
int64_t workspace_limit(State& s, int dev) {
  if (const int64_t set = backward_workspace_limit.load(); set > 0) return set;
  auto it = s.device_memory.find(dev);
  if (it == s.device_memory.end()) {
    size_t free = 0, total = 0;
    MT_CUDA_CHECK(cudaMemGetInfo(&free, &total));
    it = s.device_memory.emplace(dev, int64_t(total)).first;
  }
  return it->second / 16;
}

// The plan for a whole call, or, where the backward's workspace would pass the limit,
// for the largest equal groups that stay under it: all heads of some batch rows, or
// some kv heads (with their query heads) of one row, the groups whose lse slice is
// packed, as cuDNN requires. Null (with *why) when cuDNN refuses the shape, or when one
// row of one kv head would need more (the built-in kernels take such a call).
Plan* choose_plan(State& s, cudnnHandle_t h, int dev, bool backward, Shape x, float scale, std::string* why) {
  Plan* all = plan_for(s, h, dev, backward, x, scale, why);
  if (!all || !backward) return all;
  const int64_t limit = workspace_limit(s, dev);
  if (all->workspace <= limit) return all;
  // The workspace grows with rows and heads: skip the groups it outgrows by the
  // estimate (each chosen one is checked). Every group's lse slice starts 16-byte
  // aligned, as cuDNN takes its tensors.
  const int64_t unit = all->workspace / (x.b * x.Hkv), r = x.Hq / x.Hkv;
  std::vector<std::pair<int64_t, int64_t>> groups;  // (rows, kv heads), largest first
  for (int64_t rows = 1; rows <= x.b; ++rows)
    for (int64_t g = 1; g <= x.Hkv; ++g)
      if (x.b % rows == 0 && x.Hkv % g == 0 && (rows == 1 || g == x.Hkv) && rows * g < x.b * x.Hkv &&
          unit * rows * g <= limit && (rows == 1 ? g * r : rows * x.Hq) * x.l % 4 == 0)
        groups.emplace_back(rows, g);
  std::sort(groups.begin(), groups.end(), [](const auto& a, const auto& b) {
    return a.first * a.second != b.first * b.second ? a.first * a.second > b.first * b.second : a.second > b.second;
  });
  std::string refused;
  for (const auto& [rows, g] : groups) {
    x.b = rows, x.hkv = g, x.hq = g * r;
    Plan* plan = plan_for(s, h, dev, backward, x, scale, &refused);
    if (plan && plan->workspace <= limit) return plan;
  }
  if (why)
    *why = "cuDNN's deterministic backward needs " + std::to_string(unit) +
           " bytes of workspace for one batch row of one kv head here (an l x l matrix per row and head), and no "
           "group of rows or heads it takes stays under its limit of " + std::to_string(limit) +
           (refused.empty() ? "" : " (" + refused + ")");
  return nullptr;
}

// Runs one direction over the whole call. `pack` holds the tensors' base pointers; a
// group of rows and heads reads and writes at its own offsets.
bool run(bool backward, const Tensor& q, const Tensor& k, double scale, const Tensor& lse,
         const Tensor& seq_idx, std::initializer_list<const Tensor*> acts,
         const std::unordered_map<int64_t, void*>& pack, std::string* why) {
  const Library& lib = library();
  if (lib.version == 0) {
    if (why) *why = lib.error;
    return false;
  }
  const std::string outside = outside_cases(q, lse, seq_idx, acts);
  if (!outside.empty()) {
    if (why) *why = outside;
    return false;
  }
  const int dev = q.device().index;
  const int64_t b = q.size(0), l = q.size(1), Hq = q.size(2), p = q.size(3), Hkv = k.size(2);
  const Shape all{b, l, Hq, Hkv, p, Hq, Hkv};

  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  DeviceGuard guard(dev);
  cudnnHandle_t h = handle_for(s, dev);
  Plan* plan = choose_plan(s, h, dev, backward, all, float(scale), why);
  if (!plan) return false;
  const cudnnStatus_t st = cudnnSetStream(h, stream(dev));
  MT_CHECK(st == CUDNN_STATUS_SUCCESS, CudaError, "cudnnSetStream failed with status ", int(st));
  Tensor ws;
  if (plan->workspace > 0) ws = Tensor::empty({plan->workspace}, DType::u8, q.device());
  const int64_t rows = plan->shape.b, gkv = plan->shape.hkv, r = Hq / Hkv;
  for (int64_t r0 = 0; r0 < b; r0 += rows) {
    for (int64_t g0 = 0; g0 < Hkv; g0 += gkv) {
      std::unordered_map<int64_t, void*> variant;
      for (const auto& [uid, ptr] : pack) {
        const bool kv_heads = uid == kK || uid == kV || uid == kDK || uid == kDV;
        const int64_t offset = uid == kStats ? (r0 * Hq + g0 * r) * l * int64_t(sizeof(float))
                               : kv_heads    ? (r0 * l * Hkv + g0) * p * int64_t(sizeof(uint16_t))
                                             : (r0 * l * Hq + g0 * r) * p * int64_t(sizeof(uint16_t));
        variant[uid] = static_cast<char*>(ptr) + offset;
      }
      fe::error_t rc = plan->graph->execute(h, variant, ws.defined() ? ws.data_ptr() : nullptr);
      if (!rc.is_good()) {
        // A CUDA error is the device's, not a refusal; otherwise cuDNN refused the graph
        // when it ran: remembered like a refusal at build time (a later call tries the
        // next group size or the built-in kernels, which write every output again).
        const cudaError_t ce = cudaPeekAtLastError();
        MT_CHECK(ce == cudaSuccess, CudaError, backward ? "attention_backward" : "attention_forward",
                 ": cuDNN execution failed: ", rc.get_message(), " (", cudaGetErrorString(ce), ")");
        plan->graph.reset();
        plan->error = "execution failed: " + rc.get_message();
        if (why) *why = "cuDNN " + plan->error;
        return false;
      }
    }
  }
  return true;
}

// The engine setting applied to one call: run on cuDNN, or leave it to the built-in
// kernels, or raise when only cuDNN may run it.
bool dispatch(const char* op, bool backward, const Tensor& q, const Tensor& k, double scale, const Tensor& lse,
              const Tensor& seq_idx, std::initializer_list<const Tensor*> acts,
              const std::unordered_map<int64_t, void*>& pack) {
  const AttentionEngine engine = attention_engine();
  if (engine == AttentionEngine::Builtin) return false;
  std::string why;
  if (run(backward, q, k, scale, lse, seq_idx, acts, pack, &why)) return true;
  MT_CHECK(engine == AttentionEngine::Auto, Error, op, ": the attention engine is cudnn, which cannot take "
           "this call: ", why);
  return false;
}

}  // namespace

bool cudnn_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, Tensor& lse,
                             const Tensor& seq_idx, double scale) {
  const std::unordered_map<int64_t, void*> pack{
      {kQ, q.data_ptr()}, {kK, k.data_ptr()}, {kV, v.data_ptr()}, {kO, out.data_ptr()}, {kStats, lse.data_ptr()}};
  return dispatch("attention_forward", false, q, k, scale, lse, seq_idx, {&q, &k, &v, &out}, pack);
}

bool cudnn_attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                              const Tensor& out, const Tensor& lse, Tensor& dq, Tensor& dk, Tensor& dv,
                              const Tensor& seq_idx, double scale) {
  const std::unordered_map<int64_t, void*> pack{
      {kQ, q.data_ptr()},       {kK, k.data_ptr()},       {kV, v.data_ptr()},   {kO, out.data_ptr()},
      {kStats, lse.data_ptr()}, {kDO, dout.data_ptr()},   {kDQ, dq.data_ptr()}, {kDK, dk.data_ptr()},
      {kDV, dv.data_ptr()}};
  return dispatch("attention_backward", true, q, k, scale, lse, seq_idx, {&dout, &q, &k, &v, &out, &dq, &dk, &dv},
                  pack);
}

int64_t cudnn_attention_version(std::string* why) {
  const Library& lib = library();
  if (lib.version == 0 && why) *why = lib.error;
  return lib.version;
}

int64_t set_cudnn_backward_workspace_limit(int64_t bytes) { return backward_workspace_limit.exchange(bytes); }

int64_t cudnn_backward_workspace(const Tensor& q, const Tensor& k, double scale) {
  if (library().version == 0) return -1;
  const int dev = q.device().index;
  const int64_t b = q.size(0), l = q.size(1), Hq = q.size(2), p = q.size(3), Hkv = k.size(2);
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  DeviceGuard guard(dev);
  Plan* plan = plan_for(s, handle_for(s, dev), dev, true, Shape{b, l, Hq, Hkv, p, Hq, Hkv}, float(scale), nullptr);
  return plan ? plan->workspace : -1;
}

#else  // built without cudnn_frontend

namespace {
const char* kNotBuilt =
    "this build has no cuDNN attention (pip install nvidia-cudnn-frontend, then rebuild with "
    "MAMBATRON_CUDNN=ON)";

bool not_built(const char* op) {
  MT_CHECK(attention_engine() != AttentionEngine::Cudnn, Error, op,
           ": the attention engine is cudnn, but ", kNotBuilt);
  return false;
}
}  // namespace

bool cudnn_attention_forward(const Tensor&, const Tensor&, const Tensor&, Tensor&, Tensor&, const Tensor&, double) {
  return not_built("attention_forward");
}
bool cudnn_attention_backward(const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                              const Tensor&, Tensor&, Tensor&, Tensor&, const Tensor&, double) {
  return not_built("attention_backward");
}
int64_t cudnn_attention_version(std::string* why) {
  if (why) *why = kNotBuilt;
  return 0;
}
int64_t set_cudnn_backward_workspace_limit(int64_t) { return 0; }
int64_t cudnn_backward_workspace(const Tensor&, const Tensor&, double) { return -1; }

#endif

}  // namespace mambatron::cuda

#if defined(MAMBATRON_WITH_CUDNN)
// cudnn_frontend's calls into cuDNN, each looked up once in the opened library.
#define MT_CUDNN_FORWARD(ret, name, params, args)                                   \
  ret name params {                                                                 \
    static auto* f = ::mambatron::cuda::cudnn_symbol<decltype(name)>(#name);        \
    return f args;                                                                  \
  }
extern "C" {
MT_CUDNN_FORWARD(size_t, cudnnGetVersion, (void), ())
MT_CUDNN_FORWARD(const char*, cudnnGetErrorString, (cudnnStatus_t status), (status))
MT_CUDNN_FORWARD(void, cudnnGetLastErrorString, (char* message, size_t max_size), (message, max_size))
MT_CUDNN_FORWARD(cudnnStatus_t, cudnnCreate, (cudnnHandle_t * handle), (handle))
MT_CUDNN_FORWARD(cudnnStatus_t, cudnnSetStream, (cudnnHandle_t handle, cudaStream_t stream), (handle, stream))
MT_CUDNN_FORWARD(cudnnStatus_t, cudnnGetStream, (cudnnHandle_t handle, cudaStream_t* stream), (handle, stream))
MT_CUDNN_FORWARD(cudnnStatus_t, cudnnBackendCreateDescriptor,
                 (cudnnBackendDescriptorType_t type, cudnnBackendDescriptor_t* descriptor), (type, descriptor))
MT_CUDNN_FORWARD(cudnnStatus_t, cudnnBackendDestroyDescriptor, (cudnnBackendDescriptor_t descriptor), (descriptor))
MT_CUDNN_FORWARD(cudnnStatus_t, cudnnBackendFinalize, (cudnnBackendDescriptor_t descriptor), (descriptor))
MT_CUDNN_FORWARD(cudnnStatus_t, cudnnBackendSetAttribute,
                 (cudnnBackendDescriptor_t descriptor, cudnnBackendAttributeName_t name,
                  cudnnBackendAttributeType_t type, int64_t count, const void* elements),
                 (descriptor, name, type, count, elements))
MT_CUDNN_FORWARD(cudnnStatus_t, cudnnBackendGetAttribute,
                 (cudnnBackendDescriptor_t const descriptor, cudnnBackendAttributeName_t name,
                  cudnnBackendAttributeType_t type, int64_t requested, int64_t* count, void* elements),
                 (descriptor, name, type, requested, count, elements))
MT_CUDNN_FORWARD(cudnnStatus_t, cudnnBackendExecute,
                 (cudnnHandle_t handle, cudnnBackendDescriptor_t plan, cudnnBackendDescriptor_t pack),
                 (handle, plan, pack))
}
#undef MT_CUDNN_FORWARD

#define MT_NVRTC_FORWARD(name, params, args)                                         \
  nvrtcResult name params {                                                         \
    static auto* f = ::mambatron::cuda::nvrtc_symbol<decltype(name)>(#name);         \
    return f ? f args : NVRTC_ERROR_INTERNAL_ERROR;                                 \
  }
extern "C" {
MT_NVRTC_FORWARD(nvrtcCreateProgram,
                 (nvrtcProgram * prog, const char* src, const char* name, int num_headers,
                  const char* const* headers, const char* const* include_names),
                 (prog, src, name, num_headers, headers, include_names))
MT_NVRTC_FORWARD(nvrtcDestroyProgram, (nvrtcProgram * prog), (prog))
MT_NVRTC_FORWARD(nvrtcCompileProgram, (nvrtcProgram prog, int num_options, const char* const* options),
                 (prog, num_options, options))
MT_NVRTC_FORWARD(nvrtcGetProgramLogSize, (nvrtcProgram prog, size_t* size), (prog, size))
MT_NVRTC_FORWARD(nvrtcGetProgramLog, (nvrtcProgram prog, char* log), (prog, log))
MT_NVRTC_FORWARD(nvrtcGetCUBINSize, (nvrtcProgram prog, size_t* size), (prog, size))
MT_NVRTC_FORWARD(nvrtcGetCUBIN, (nvrtcProgram prog, char* cubin), (prog, cubin))
}
#undef MT_NVRTC_FORWARD
#endif
