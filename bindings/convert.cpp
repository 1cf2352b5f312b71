#include "convert.h"

#include <string>

#include "mambatron/error.h"

namespace mambatron::bind {

DType to_dtype(py::handle h) {
  if (py::isinstance<DType>(h)) return h.cast<DType>();
  if (py::isinstance<py::str>(h)) return dtype_from_string(h.cast<std::string>());
  std::string s = py::str(h);
  if (s.rfind("torch.", 0) == 0) return dtype_from_string(s.substr(6));  // torch.bfloat16
  try {
    return dtype_from_string(py::str(py::module_::import("numpy").attr("dtype")(h).attr("name")));
  } catch (const py::error_already_set&) {
    throw TypeError("cannot interpret " + s + " as a dtype: expected one of f32 f64 bf16 f16 i32 i64 u16 u8");
  }
}

Device to_device(py::handle h) {
  if (py::isinstance<Device>(h)) return h.cast<Device>();
  return Device::parse(py::str(h));
}

Shape to_shape(py::handle h, const char* what) {
  if (py::isinstance<py::int_>(h)) return {h.cast<int64_t>()};
  try {
    Shape s;
    for (py::handle v : h) s.push_back(v.cast<int64_t>());
    return s;
  } catch (const py::error_already_set&) {
  } catch (const py::cast_error&) {
  }
  throw TypeError(std::string(what) + ": shape must be an int or a sequence of ints, got " +
                  std::string(py::str(py::type::of(h).attr("__name__"))));
}

namespace {
Tensor from_buffer(py::handle h) {
  py::buffer buf = py::reinterpret_borrow<py::buffer>(h);
  py::buffer_info info = buf.request();
  std::string f = info.format;
  if (!f.empty() && (f[0] == '<' || f[0] == '=' || f[0] == '@')) f = f.substr(1);
  DType dt;
  if (f == "f") dt = DType::f32;
  else if (f == "d") dt = DType::f64;
  else if (f == "e") dt = DType::f16;
  else if (f == "B") dt = DType::u8;
  else if (f == "H") dt = DType::u16;
  else if ((f == "i" || f == "l" || f == "q") && info.itemsize == 4) dt = DType::i32;
  else if ((f == "l" || f == "q") && info.itemsize == 8) dt = DType::i64;
  else throw TypeError("buffer format '" + info.format + "' is not supported: mambatron supports f32 f64 f16 i32 i64 u16 u8 buffers");
  Shape shape(info.shape.begin(), info.shape.end()), strides;
  for (auto s : info.strides) {
    MT_CHECK(s % info.itemsize == 0, ValueError, "buffer strides must be multiples of the item size");
    strides.push_back(s / info.itemsize);
  }
  auto owner = std::shared_ptr<void>(new py::object(py::reinterpret_borrow<py::object>(h)), [](void* p) {
    if (!Py_IsInitialized()) return;
    py::gil_scoped_acquire gil;
    delete static_cast<py::object*>(p);
  });
  return Tensor::from_blob(info.ptr, shape, strides, dt, Device::cpu(), owner);
}
}  // namespace

Tensor as_tensor(py::handle h, const char* op, const char* name) {
  if (py::isinstance<Tensor>(h)) return h.cast<Tensor>();
  if (py::hasattr(h, "__dlpack__") || PyCapsule_CheckExact(h.ptr())) return from_dlpack_object(h);
  if (PyObject_CheckBuffer(h.ptr())) return from_buffer(h);
  throw TypeError(std::string(op) + ": argument '" + name + "' must be a mambatron.Tensor or an array with " +
                  "__dlpack__ (numpy, PyTorch, JAX, CuPy), got " +
                  std::string(py::str(py::type::of(h).attr("__name__"))));
}

}  // namespace mambatron::bind
