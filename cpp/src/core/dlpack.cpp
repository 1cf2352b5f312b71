#include "mambatron/dlpack.h"

#include <vector>

#include "mambatron/cuda.h"

namespace mambatron {

DLDataType to_dlpack_dtype(DType dt) {
  switch (dt) {
    case DType::f32: return {kDLFloat, 32, 1};
    case DType::f64: return {kDLFloat, 64, 1};
    case DType::bf16: return {kDLBfloat, 16, 1};
    case DType::f16: return {kDLFloat, 16, 1};
    case DType::i32: return {kDLInt, 32, 1};
    case DType::i64: return {kDLInt, 64, 1};
    case DType::u16: return {kDLUInt, 16, 1};
    case DType::u8: return {kDLUInt, 8, 1};
  }
  throw TypeError("to_dlpack_dtype: invalid dtype");
}

DType from_dlpack_dtype(DLDataType t) {
  if (t.lanes == 1) {
    if (t.code == kDLFloat && t.bits == 32) return DType::f32;
    if (t.code == kDLFloat && t.bits == 64) return DType::f64;
    if (t.code == kDLFloat && t.bits == 16) return DType::f16;
    if (t.code == kDLBfloat && t.bits == 16) return DType::bf16;
    if (t.code == kDLInt && t.bits == 32) return DType::i32;
    if (t.code == kDLInt && t.bits == 64) return DType::i64;
    if (t.code == kDLUInt && t.bits == 16) return DType::u16;
    if (t.code == kDLUInt && t.bits == 8) return DType::u8;
  }
  static const char* codes[] = {"int", "uint", "float", "opaque", "bfloat", "complex", "bool"};
  std::string name = t.code < 7 ? codes[t.code] : "code " + std::to_string(int(t.code));
  throw TypeError(detail::cat("from_dlpack: DLPack dtype ", name, int(t.bits), t.lanes > 1 ? "x" : "",
                              t.lanes > 1 ? std::to_string(t.lanes) : "",
                              " is not supported; mambatron supports f32 f64 bf16 f16 i32 i64 u16 u8"));
}

namespace {
// Keeps the tensor (and so its storage) alive while a consumer holds the capsule.
struct ExportContext {
  Tensor tensor;
  std::vector<int64_t> shape, strides;
};

template <class Managed>
Managed* make_managed(const Tensor& t) {
  MT_CHECK(t.defined(), ValueError, "__dlpack__: the tensor is undefined");
  auto* ctx = new ExportContext{t, t.shape(), t.strides()};
  auto* m = new Managed{};
  DLTensor& dl = m->dl_tensor;
  dl.data = t.numel() ? t.data_ptr() : t.storage()->data();
  dl.device = {t.is_cuda() ? kDLCUDA : kDLCPU, t.is_cuda() ? t.device().index : 0};
  dl.ndim = t.dim();
  dl.dtype = to_dlpack_dtype(t.dtype());
  dl.shape = ctx->shape.data();
  dl.strides = ctx->strides.data();
  dl.byte_offset = 0;
  m->manager_ctx = ctx;
  m->deleter = [](Managed* self) {
    delete static_cast<ExportContext*>(self->manager_ctx);
    delete self;
  };
  return m;
}
}  // namespace

DLManagedTensorVersioned* to_dlpack_versioned(const Tensor& t) {
  auto* m = make_managed<DLManagedTensorVersioned>(t);
  m->version = {kDLPackMajor, kDLPackMinor};
  m->flags = 0;
  return m;
}

DLManagedTensor* to_dlpack_legacy(const Tensor& t) { return make_managed<DLManagedTensor>(t); }

Tensor from_dlpack(const DLTensor& t, std::shared_ptr<void> owner) {
  Device device;
  if (t.device.device_type == kDLCPU || t.device.device_type == kDLCUDAHost) {
    device = Device::cpu();
  } else if (t.device.device_type == kDLCUDA || t.device.device_type == kDLCUDAManaged) {
    device = Device::cuda(t.device.device_id);
    MT_CHECK(built_with_cuda(), TypeError, "from_dlpack: the array is on ", device.str(),
             ", but mambatron was built without CUDA");
  } else {
    throw TypeError(detail::cat("from_dlpack: DLPack device type ", t.device.device_type,
                                " is not supported; expected CPU (1) or CUDA (2)"));
  }
  DType dtype = from_dlpack_dtype(t.dtype);
  MT_CHECK(t.ndim >= 0, ValueError, "from_dlpack: negative ndim ", t.ndim);
  Shape shape(t.shape, t.shape + t.ndim);
  Shape strides = t.strides ? Shape(t.strides, t.strides + t.ndim) : contiguous_strides(shape);
  MT_CHECK(t.byte_offset % dtype_size(dtype) == 0, ValueError, "from_dlpack: byte_offset ", t.byte_offset,
           " is not a multiple of the element size ", dtype_size(dtype));
  void* data = static_cast<char*>(t.data) + t.byte_offset;
  return Tensor::from_blob(data, shape, strides, dtype, device, std::move(owner));
}

}  // namespace mambatron
