// Conversions from Python objects shared by every binding file: dtypes, devices,
// shapes, and any array (mambatron, DLPack producers, buffers) to a Tensor.
#pragma once
#include <pybind11/pybind11.h>

#include "mambatron/tensor.h"

namespace py = pybind11;

namespace mambatron::bind {

// A DType, or a name ("bf16", "float32"), a numpy dtype or a torch dtype.
DType to_dtype(py::handle h);
// A Device, or "cpu" / "cuda" / "cuda:N", or anything whose str() is one (torch.device).
Device to_device(py::handle h);
// An int or a sequence of ints.
Shape to_shape(py::handle h, const char* what);
// A mambatron.Tensor, any object with __dlpack__ (numpy, PyTorch, JAX, CuPy), a
// DLPack capsule, or a buffer; never copies. `op` and `name` go into the error.
Tensor as_tensor(py::handle h, const char* op, const char* name);
Tensor from_dlpack_object(py::handle obj);

void bind_tensor(py::module_& m);
// Tensor.__dlpack__, __dlpack_device__ and mambatron.from_dlpack.
void bind_dlpack_methods(py::class_<Tensor>& cls, py::module_& m);
void bind_runtime(py::module_& m);
void bind_ops(py::module_& m);
void bind_model(py::module_& m);
void bind_io(py::module_& m);
void bind_train(py::module_& m);
void bind_generate(py::module_& m);
void bind_ssd_ops(py::module_& m);
void bind_conv1d_ops(py::module_& m);
void bind_selective_scan_ops(py::module_& m);
void bind_loss_ops(py::module_& m);
void bind_adamw_ops(py::module_& m);
void bind_embedding_ops(py::module_& m);
void bind_norm_ops(py::module_& m);
void bind_activation_ops(py::module_& m);
void bind_arith_ops(py::module_& m);
void bind_attention_ops(py::module_& m);

}  // namespace mambatron::bind
