// DLPack in both directions: Tensor.__dlpack__/__dlpack_device__ and from_dlpack.
// The CUDA stream contract: the consumer names its stream and the producer
// makes that stream wait for the tensor's pending work.
#include <pybind11/pybind11.h>

#include "convert.h"
#include "mambatron/cuda.h"
#include "mambatron/dlpack.h"

namespace mambatron::bind {

namespace {

// DLPack stream numbers: None/1 legacy default, 2 per-thread default, else a handle.
void* stream_from_dlpack(int64_t s) {
  if (s == 1) return nullptr;
  if (s == 2) return reinterpret_cast<void*>(uintptr_t(2));  // cudaStreamPerThread
  return reinterpret_cast<void*>(uintptr_t(s));
}

py::object our_stream_for_dlpack(int device) {
  void* s = current_stream(device);
  return s == nullptr ? py::int_(1) : py::int_(reinterpret_cast<uintptr_t>(s));
}

template <class Managed>
std::shared_ptr<void> owner_of(Managed* m) {
  return std::shared_ptr<void>(m, [](void* p) {
    auto* mt = static_cast<Managed*>(p);
    if (!mt->deleter) return;
    if (Py_IsInitialized()) {
      py::gil_scoped_acquire gil;  // producers such as numpy release Python objects
      mt->deleter(mt);
    } else {
      mt->deleter(mt);
    }
  });
}

}  // namespace

Tensor from_dlpack_object(py::handle obj) {
  py::object capsule;
  if (PyCapsule_CheckExact(obj.ptr())) {
    capsule = py::reinterpret_borrow<py::object>(obj);
  } else {
    MT_CHECK(py::hasattr(obj, "__dlpack__"), TypeError, "from_dlpack: ",
             std::string(py::str(py::type::of(obj).attr("__name__"))), " has no __dlpack__ method");
    py::tuple dev = obj.attr("__dlpack_device__")();
    int dev_type = dev[0].cast<int>(), dev_id = dev[1].cast<int>();
    py::object stream = py::none();
    if (dev_type == kDLCUDA) {
      MT_CHECK(cuda_available(), TypeError, "from_dlpack: the array is on CUDA device ", dev_id,
               built_with_cuda() ? ", but no CUDA device is usable" : ", but mambatron was built without CUDA");
      stream = our_stream_for_dlpack(dev_id);
    }
    try {
      capsule = obj.attr("__dlpack__")(py::arg("stream") = stream, py::arg("max_version") = py::make_tuple(1, 0));
    } catch (py::error_already_set& e) {
      if (!e.matches(PyExc_TypeError)) throw;  // a producer older than DLPack 1.0
      capsule = obj.attr("__dlpack__")(py::arg("stream") = stream);
    }
  }
  const char* name = PyCapsule_GetName(capsule.ptr());
  std::string n = name ? name : "";
  if (n == "dltensor_versioned") {
    auto* m = static_cast<DLManagedTensorVersioned*>(PyCapsule_GetPointer(capsule.ptr(), name));
    MT_CHECK(m->version.major == kDLPackMajor, ValueError, "from_dlpack: DLPack major version ", m->version.major,
             " is not supported, expected ", kDLPackMajor);
    PyCapsule_SetName(capsule.ptr(), "used_dltensor_versioned");
    return from_dlpack(m->dl_tensor, owner_of(m));
  }
  if (n == "dltensor") {
    auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule.ptr(), name));
    PyCapsule_SetName(capsule.ptr(), "used_dltensor");
    return from_dlpack(m->dl_tensor, owner_of(m));
  }
  throw ValueError("from_dlpack: capsule named '" + n + "' is not an unused DLPack tensor (already consumed?)");
}

namespace {

py::object make_capsule(const Tensor& t, bool versioned, bool copied) {
  if (versioned) {
    DLManagedTensorVersioned* m = to_dlpack_versioned(t);
    if (copied) m->flags |= kDLFlagIsCopied;
    return py::reinterpret_steal<py::object>(PyCapsule_New(m, "dltensor_versioned", [](PyObject* cap) {
      if (PyCapsule_IsValid(cap, "dltensor_versioned")) {  // never consumed
        auto* mt = static_cast<DLManagedTensorVersioned*>(PyCapsule_GetPointer(cap, "dltensor_versioned"));
        mt->deleter(mt);
      }
    }));
  }
  DLManagedTensor* m = to_dlpack_legacy(t);
  return py::reinterpret_steal<py::object>(PyCapsule_New(m, "dltensor", [](PyObject* cap) {
    if (PyCapsule_IsValid(cap, "dltensor")) {
      auto* mt = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap, "dltensor"));
      mt->deleter(mt);
    }
  }));
}

py::object tensor_dlpack(const Tensor& self, py::object stream, py::object max_version, py::object dl_device,
                         py::object copy) {
  Tensor t = self;
  bool copied = false;
  if (!dl_device.is_none()) {
    py::tuple d = dl_device;
    int type = d[0].cast<int>(), id = d[1].cast<int>();
    Device want = type == kDLCPU ? Device::cpu() : type == kDLCUDA ? Device::cuda(id) : Device(DeviceType::CPU, -1);
    if (want.index < 0) throw py::buffer_error("__dlpack__: dl_device type " + std::to_string(type) + " is not supported");
    if (want != t.device()) {
      if (!copy.is_none() && !copy.cast<bool>())
        throw py::buffer_error("__dlpack__: the tensor is on " + t.device().str() + ", " + want.str() +
                               " was asked for with copy=False");
      t = t.to(want);
      copied = true;
    }
  }
  if (!copied && !copy.is_none() && copy.cast<bool>()) {
    t = t.clone();
    copied = true;
  }
  if (t.is_cuda()) {
    int64_t s = stream.is_none() ? 1 : stream.cast<int64_t>();
    MT_CHECK(s != 0, ValueError, "__dlpack__: stream 0 is ambiguous for CUDA; use 1 for the legacy default stream");
    if (s != -1) stream_wait(t.device().index, stream_from_dlpack(s), current_stream(t.device().index));
  } else {
    MT_CHECK(stream.is_none(), ValueError, "__dlpack__: a CPU tensor takes stream=None");
  }
  bool versioned = !max_version.is_none() && py::tuple(max_version)[0].cast<int>() >= 1;
  return make_capsule(t, versioned, copied);
}

}  // namespace

void bind_dlpack_methods(py::class_<Tensor>& cls, py::module_& m) {
  cls.def("__dlpack__", &tensor_dlpack, py::kw_only(), py::arg("stream") = py::none(),
          py::arg("max_version") = py::none(), py::arg("dl_device") = py::none(), py::arg("copy") = py::none(),
          "Exports the tensor as a DLPack capsule (no copy unless asked or the device differs).");
  cls.def(
      "__dlpack_device__",
      [](const Tensor& t) {
        return py::make_tuple(t.is_cuda() ? int(kDLCUDA) : int(kDLCPU), t.is_cuda() ? t.device().index : 0);
      },
      "(device_type, device_id): CPU is 1, CUDA is 2.");
  m.def(
      "from_dlpack", [](py::handle obj) { return from_dlpack_object(obj); }, py::arg("array"),
      "A tensor sharing the memory of any DLPack producer (numpy, PyTorch, JAX, CuPy) or capsule.");
}

}  // namespace mambatron::bind
