// Tensor: a view (shape, strides in elements, offset) onto shared storage.
#pragma once
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "mambatron/device.h"
#include "mambatron/dtype.h"

namespace mambatron {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);  // "[2, 3]"
int64_t shape_numel(const Shape& s);
Shape contiguous_strides(const Shape& s);

// A block of memory on one device. Its deleter runs when the last tensor that
// views it goes away (returns memory to the allocator, or releases a DLPack owner).
class Storage {
 public:
  Storage(void* data, size_t nbytes, Device device, std::function<void()> release);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }
  // Memory from the engine's own allocators, not borrowed from another library.
  static std::shared_ptr<Storage> allocate(size_t nbytes, Device device);

 private:
  void* data_;
  size_t nbytes_;
  Device device_;
  std::function<void()> release_;
};

class Generator;

class Tensor {
 public:
  Tensor() = default;  // undefined; defined() is false
  Tensor(std::shared_ptr<Storage> storage, Shape shape, Shape strides, int64_t offset, DType dtype);

  // ---- factories ----
  static Tensor empty(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu());
  static Tensor full(const Shape& shape, double value, DType dtype = DType::f32, Device device = Device::cpu());
  // Uniform in [0, 1) and standard normal, from the counter-based Philox
  // generator: the same seed gives the same numbers on the CPU and on CUDA.
  static Tensor rand(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu(), Generator* gen = nullptr);
  static Tensor randn(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu(), Generator* gen = nullptr);
  // Wraps memory owned elsewhere; `owner` is released when the last view goes.
  static Tensor from_blob(void* data, const Shape& shape, const Shape& strides, DType dtype, Device device,
                          std::shared_ptr<void> owner);

  // ---- properties ----
  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int dim() const { return int(shape_.size()); }
  int64_t size(int d) const;    // negative d counts from the end
  int64_t stride(int d) const;
  int64_t numel() const { return shape_numel(shape_); }
  int64_t offset() const { return offset_; }  // in elements
  DType dtype() const { return dtype_; }
  size_t itemsize() const { return dtype_size(dtype_); }
  size_t nbytes() const { return size_t(numel()) * itemsize(); }
  Device device() const;
  bool is_cuda() const { return device().is_cuda(); }
  bool is_contiguous() const;
  const std::shared_ptr<Storage>& storage() const { return storage_; }
  void* data_ptr() const;
  template <class T>
  T* data() const {
    MT_CHECK(DTypeOf<T>::value == dtype_, TypeError, "Tensor::data: tensor has dtype ", dtype_name(dtype_),
             ", requested ", dtype_name(DTypeOf<T>::value));
    return static_cast<T*>(data_ptr());
  }
  // data<T>(), or nullptr for an undefined (optional) tensor.
  template <class T>
  T* data_or_null() const {
    return defined() ? data<T>() : nullptr;
  }
  std::string str() const;  // "Tensor([2, 3], f32, cpu)"

  // ---- views (share storage) ----
  Tensor view(const Shape& shape) const;  // one -1 allowed; needs compatible strides
  Tensor reshape(const Shape& shape) const;  // a view when possible, else a copy
  Tensor narrow(int dim, int64_t start, int64_t length) const;
  Tensor slice(int dim, int64_t start, int64_t stop, int64_t step = 1) const;
  Tensor select(int dim, int64_t index) const;  // drops the dimension
  Tensor transpose(int d0, int d1) const;
  Tensor permute(const std::vector<int>& dims) const;
  Tensor unsqueeze(int dim) const;

  // ---- copies ----
  Tensor contiguous() const;  // self when already contiguous
  Tensor clone() const;
  Tensor to(Device device) const;  // self when already there
  Tensor to(DType dtype) const;
  Tensor to(Device device, DType dtype) const;
  Tensor& copy_(const Tensor& src);  // any device/dtype into this (shapes must match)
  Tensor& fill_(double value);
  Tensor& zero_() { return fill_(0.0); }
  double item() const;  // one-element tensors

 private:
  std::shared_ptr<Storage> storage_;
  Shape shape_, strides_;
  int64_t offset_ = 0;
  DType dtype_ = DType::f32;
};

}  // namespace mambatron
