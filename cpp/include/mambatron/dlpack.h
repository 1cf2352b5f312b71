// DLPack 1.x interchange (https://dmlc.github.io/dlpack): the ABI structs and
// conversions between them and Tensor, with no copy in either direction.
#pragma once
#include <cstdint>
#include <memory>

#include "mambatron/tensor.h"

extern "C" {
typedef enum { kDLCPU = 1, kDLCUDA = 2, kDLCUDAHost = 3, kDLCUDAManaged = 13 } DLDeviceType;
typedef struct { int32_t device_type; int32_t device_id; } DLDevice;
typedef enum { kDLInt = 0, kDLUInt = 1, kDLFloat = 2, kDLBfloat = 4, kDLComplex = 5, kDLBool = 6 } DLDataTypeCode;
typedef struct { uint8_t code; uint8_t bits; uint16_t lanes; } DLDataType;
typedef struct {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;  // in elements; NULL means compact row-major
  uint64_t byte_offset;
} DLTensor;
typedef struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(struct DLManagedTensor* self);
} DLManagedTensor;
typedef struct { uint32_t major; uint32_t minor; } DLPackVersion;
typedef struct DLManagedTensorVersioned {
  DLPackVersion version;
  void* manager_ctx;
  void (*deleter)(struct DLManagedTensorVersioned* self);
  uint64_t flags;
  DLTensor dl_tensor;
} DLManagedTensorVersioned;
}

namespace mambatron {

constexpr uint32_t kDLPackMajor = 1, kDLPackMinor = 0;
constexpr uint64_t kDLFlagReadOnly = 1, kDLFlagIsCopied = 2;

DLDataType to_dlpack_dtype(DType dt);
// Throws TypeError naming the DLPack type when mambatron has no such dtype.
DType from_dlpack_dtype(DLDataType t);

// The returned struct owns a reference to the tensor's storage until its deleter runs.
DLManagedTensorVersioned* to_dlpack_versioned(const Tensor& t);
DLManagedTensor* to_dlpack_legacy(const Tensor& t);

// A tensor viewing `t`'s memory; `owner` is released when the last view goes
// (it is what calls the producer's deleter).
Tensor from_dlpack(const DLTensor& t, std::shared_ptr<void> owner);

}  // namespace mambatron
