// Causal attention through cuDNN's fused attention (its graph API by way of the
// header-only cudnn_frontend). libcudnn is opened at run time, so a machine without
// it still loads mambatron and runs the built-in kernels. Arguments as for
// attention_forward/attention_backward in attention.h (already checked).
//
// Each call runs on cuDNN and returns true when the attention engine (ops.h) allows
// it and cuDNN takes the call; otherwise it returns false, for the built-in kernels
// to run (writing every output again), except under AttentionEngine::Cudnn, where it
// raises with the reason: this build has no cudnn_frontend, libcudnn (>= 9) does not
// load, the case is outside what we hand cuDNN (bf16 only, no seq_idx, head dim a
// multiple of 8 up to 256), or cuDNN refuses the shape (building its graph, or
// running it). Graphs are built once per shape and device and kept; a shape cuDNN
// refused is not retried.
// The backward asks cuDNN for its deterministic algorithm (the same bits every run),
// which keeps an l × l matrix per batch row and head in its workspace: where the whole
// call would need more than the workspace limit (1/16 of the device's memory), it runs
// in the largest equal groups of batch rows and kv heads (with their query heads) that
// fit, and where one row of one kv head would need more, cuDNN is not handed the call.
// Both directions use the same lse as the built-in kernels (natural-log
// log-sum-exp of the scaled scores), so either engine's forward feeds either backward.
#pragma once
#include <string>

#include "mambatron/tensor.h"

namespace mambatron::cuda {

bool cudnn_attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, Tensor& out, Tensor& lse,
                             const Tensor& seq_idx, double scale);
bool cudnn_attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                              const Tensor& out, const Tensor& lse, Tensor& dq, Tensor& dk, Tensor& dv,
                              const Tensor& seq_idx, double scale);
// The cuDNN version loaded (e.g. 91900), or 0 with the reason in *why: no
// cudnn_frontend in this build, or no suitable libcudnn.
int64_t cudnn_attention_version(std::string* why);

// The most workspace one cuDNN backward launch may take (bytes; 0: 1/16 of the device's
// memory); returns the previous setting. For tests, which drive the groups with small
// shapes.
int64_t set_cudnn_backward_workspace_limit(int64_t bytes);
// The workspace cuDNN's backward asks for over all heads of q [b, l, hq, p] and
// k [b, l, hkv, p] (building that graph), or -1 where cuDNN is unusable or refuses it.
int64_t cudnn_backward_workspace(const Tensor& q, const Tensor& k, double scale);

}  // namespace mambatron::cuda
