#include "mambatron/tensor.h"

#include <algorithm>

#include "../ops/backend.h"
#include "allocator.h"
#include "mambatron/cuda.h"
#include "mambatron/random.h"

namespace mambatron {

std::string shape_str(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

Shape contiguous_strides(const Shape& s) {
  Shape st(s.size());
  int64_t acc = 1;
  for (int i = int(s.size()) - 1; i >= 0; --i) { st[i] = acc; acc *= std::max<int64_t>(s[i], 1); }
  return st;
}

// ---------------------------------------------------------------- Storage

Storage::Storage(void* data, size_t nbytes, Device device, std::function<void()> release)
    : data_(data), nbytes_(nbytes), device_(device), release_(std::move(release)) {}

Storage::~Storage() {
  if (release_) release_();
}

std::shared_ptr<Storage> Storage::allocate(size_t nbytes, Device device) {
  auto& alloc = detail::allocator_for(device);
  void* p = alloc.allocate(nbytes);
  return std::make_shared<Storage>(p, nbytes, device, [&alloc, p] { alloc.release(p); });
}

// ---------------------------------------------------------------- Tensor

namespace {
void check_shape_valid(const Shape& shape, const char* what) {
  for (int64_t d : shape)
    MT_CHECK(d >= 0, ValueError, what, ": shape ", shape_str(shape), " has a negative dimension");
}
int wrap_dim(int d, int ndim, const char* what) {
  int w = d < 0 ? d + ndim : d;
  MT_CHECK(w >= 0 && w < ndim, ValueError, what, ": dim ", d, " is out of range for a tensor with ", ndim, " dims");
  return w;
}
}  // namespace

Tensor::Tensor(std::shared_ptr<Storage> storage, Shape shape, Shape strides, int64_t offset, DType dtype)
    : storage_(std::move(storage)), shape_(std::move(shape)), strides_(std::move(strides)), offset_(offset),
      dtype_(dtype) {}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  check_shape_valid(shape, "empty");
  size_t nbytes = size_t(shape_numel(shape)) * dtype_size(dtype);
  return Tensor(Storage::allocate(nbytes, device), shape, contiguous_strides(shape), 0, dtype);
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) { return full(shape, 0.0, dtype, device); }

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill_(value);
  return t;
}

Tensor Tensor::rand(const Shape& shape, DType dtype, Device device, Generator* gen) {
  MT_CHECK(is_floating(dtype), TypeError, "rand: dtype ", dtype_name(dtype), " is not a floating type");
  Tensor t = empty(shape, dtype, device);
  Generator& g = gen ? *gen : default_generator();
  uint64_t offset = g.advance(uniform_counters(t.numel(), dtype));
  MT_DISPATCH(t, rand_uniform, t, g.seed(), offset);
  return t;
}

Tensor Tensor::randn(const Shape& shape, DType dtype, Device device, Generator* gen) {
  MT_CHECK(is_floating(dtype), TypeError, "randn: dtype ", dtype_name(dtype), " is not a floating type");
  Tensor t = empty(shape, dtype, device);
  Generator& g = gen ? *gen : default_generator();
  uint64_t offset = g.advance(normal_counters(t.numel()));
  MT_DISPATCH(t, rand_normal, t, g.seed(), offset);
  return t;
}

Tensor Tensor::from_blob(void* data, const Shape& shape, const Shape& strides, DType dtype, Device device,
                         std::shared_ptr<void> owner) {
  check_shape_valid(shape, "from_blob");
  MT_CHECK(strides.size() == shape.size(), ValueError, "from_blob: strides ", shape_str(strides),
           " do not match shape ", shape_str(shape));
  auto storage = std::make_shared<Storage>(data, 0, device, [owner = std::move(owner)]() mutable { owner.reset(); });
  return Tensor(std::move(storage), shape, strides, 0, dtype);
}

int64_t Tensor::size(int d) const { return shape_[wrap_dim(d, dim(), "size")]; }
int64_t Tensor::stride(int d) const { return strides_[wrap_dim(d, dim(), "stride")]; }
Device Tensor::device() const { return storage_ ? storage_->device() : Device::cpu(); }

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (int i = dim() - 1; i >= 0; --i) {
    if (shape_[i] == 1) continue;
    if (strides_[i] != expected) return numel() == 0;
    expected *= shape_[i];
  }
  return true;
}

void* Tensor::data_ptr() const {
  MT_CHECK(defined(), ValueError, "data_ptr: the tensor is undefined");
  return static_cast<char*>(storage_->data()) + offset_ * int64_t(itemsize());
}

std::string Tensor::str() const {
  if (!defined()) return "Tensor(undefined)";
  return "Tensor(" + shape_str(shape_) + ", " + dtype_name(dtype_) + ", " + device().str() + ")";
}

// ---------------------------------------------------------------- views

Tensor Tensor::view(const Shape& shape) const {
  Shape s = shape;
  int infer = -1;
  int64_t known = 1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      MT_CHECK(infer < 0, ValueError, "view: only one dimension can be -1, got ", shape_str(shape));
      infer = int(i);
    } else {
      MT_CHECK(s[i] >= 0, ValueError, "view: invalid shape ", shape_str(shape));
      known *= s[i];
    }
  }
  if (infer >= 0) {
    MT_CHECK(known > 0 && numel() % known == 0, ValueError, "view: shape ", shape_str(shape),
             " is invalid for a tensor of ", numel(), " elements");
    s[infer] = numel() / known;
  }
  MT_CHECK(shape_numel(s) == numel(), ValueError, "view: shape ", shape_str(shape), " is invalid for a tensor of ",
           numel(), " elements (shape ", shape_str(shape_), ")");
  MT_CHECK(is_contiguous(), ValueError, "view: the tensor (shape ", shape_str(shape_), ", strides ",
           shape_str(strides_), ") is not contiguous; use reshape, which copies");
  return Tensor(storage_, s, contiguous_strides(s), offset_, dtype_);
}

Tensor Tensor::reshape(const Shape& shape) const { return is_contiguous() ? view(shape) : contiguous().view(shape); }

Tensor Tensor::slice(int d, int64_t start, int64_t stop, int64_t step) const {
  d = wrap_dim(d, dim(), "slice");
  MT_CHECK(step > 0, ValueError, "slice: step must be positive, got ", step);
  int64_t n = shape_[d];
  if (start < 0) start += n;
  if (stop < 0) stop += n;
  start = std::clamp<int64_t>(start, 0, n);
  stop = std::clamp<int64_t>(stop, start, n);
  Shape sh = shape_, st = strides_;
  sh[d] = (stop - start + step - 1) / step;
  st[d] = strides_[d] * step;
  return Tensor(storage_, sh, st, offset_ + start * strides_[d], dtype_);
}

Tensor Tensor::narrow(int d, int64_t start, int64_t length) const {
  d = wrap_dim(d, dim(), "narrow");
  MT_CHECK(start >= 0 && length >= 0 && start + length <= shape_[d], ValueError, "narrow: range [", start, ", ",
           start + length, ") is out of bounds for dim ", d, " of size ", shape_[d]);
  return slice(d, start, start + length);
}

Tensor Tensor::select(int d, int64_t index) const {
  d = wrap_dim(d, dim(), "select");
  int64_t n = shape_[d];
  MT_CHECK(index >= -n && index < n, ValueError, "select: index ", index, " is out of bounds for dim ", d,
           " of size ", n);
  if (index < 0) index += n;
  Shape sh = shape_, st = strides_;
  sh.erase(sh.begin() + d);
  st.erase(st.begin() + d);
  return Tensor(storage_, sh, st, offset_ + index * strides_[d], dtype_);
}

Tensor Tensor::transpose(int d0, int d1) const {
  d0 = wrap_dim(d0, dim(), "transpose");
  d1 = wrap_dim(d1, dim(), "transpose");
  Shape sh = shape_, st = strides_;
  std::swap(sh[d0], sh[d1]);
  std::swap(st[d0], st[d1]);
  return Tensor(storage_, sh, st, offset_, dtype_);
}

Tensor Tensor::permute(const std::vector<int>& dims) const {
  MT_CHECK(int(dims.size()) == dim(), ValueError, "permute: got ", dims.size(), " dims for a tensor with ", dim());
  Shape sh(dim()), st(dim());
  std::vector<bool> seen(dim(), false);
  for (int i = 0; i < dim(); ++i) {
    int d = wrap_dim(dims[i], dim(), "permute");
    MT_CHECK(!seen[d], ValueError, "permute: dim ", dims[i], " appears twice");
    seen[d] = true;
    sh[i] = shape_[d];
    st[i] = strides_[d];
  }
  return Tensor(storage_, sh, st, offset_, dtype_);
}

Tensor Tensor::unsqueeze(int d) const {
  d = wrap_dim(d, dim() + 1, "unsqueeze");
  Shape sh = shape_, st = strides_;
  int64_t stride = d < dim() ? strides_[d] * shape_[d] : 1;
  sh.insert(sh.begin() + d, 1);
  st.insert(st.begin() + d, stride);
  return Tensor(storage_, sh, st, offset_, dtype_);
}

// ---------------------------------------------------------------- copies

Tensor Tensor::contiguous() const { return is_contiguous() ? *this : clone(); }

Tensor Tensor::clone() const {
  Tensor t = empty(shape_, dtype_, device());
  t.copy_(*this);
  return t;
}

Tensor Tensor::to(Device device) const { return to(device, dtype_); }
Tensor Tensor::to(DType dtype) const { return to(device(), dtype); }
Tensor Tensor::to(Device device, DType dtype) const {
  MT_CHECK(defined(), ValueError, "to: the tensor is undefined");
  if (device == this->device() && dtype == dtype_) return *this;
  Tensor t = empty(shape_, dtype, device);
  t.copy_(*this);
  return t;
}

Tensor& Tensor::copy_(const Tensor& src) {
  MT_CHECK(defined() && src.defined(), ValueError, "copy_: undefined tensor");
  MT_CHECK(src.shape() == shape_, ValueError, "copy_: source has shape ", shape_str(src.shape()),
           ", destination has shape ", shape_str(shape_));
  if (numel() == 0) return *this;
  if (src.device() == device()) {
    MT_DISPATCH(*this, copy, src, *this);
    return *this;
  }
#ifdef MAMBATRON_WITH_CUDA
  // Across devices: move the bytes in the source's dtype, then convert on the destination.
  Tensor s = src.contiguous();
  bool direct = is_contiguous() && src.dtype() == dtype_;
  Tensor stage = direct ? *this : empty(shape_, src.dtype(), device());
  cuda::memcpy(stage.data_ptr(), device(), s.data_ptr(), s.device(), s.nbytes());
  if (!direct) MT_DISPATCH(*this, copy, stage, *this);
  return *this;
#else
  throw TypeError("copy_: copying from " + src.device().str() + " to " + device().str() +
                  " needs CUDA, but mambatron was built without it");
#endif
}

Tensor& Tensor::fill_(double value) {
  MT_CHECK(defined(), ValueError, "fill_: the tensor is undefined");
  if (numel() > 0) MT_DISPATCH(*this, fill, *this, value);
  return *this;
}

double Tensor::item() const {
  MT_CHECK(numel() == 1, ValueError, "item: the tensor has ", numel(), " elements (shape ", shape_str(shape_),
           "), expected exactly one");
  Tensor t = to(Device::cpu(), DType::f64);
  return *t.data<double>();
}

}  // namespace mambatron
