// DType, Device and Tensor for Python: factories, views, copies, numpy, indexing.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "convert.h"
#include "mambatron/random.h"

namespace mambatron::bind {

namespace {

py::tuple to_tuple(const Shape& s) {
  py::tuple t(s.size());
  for (size_t i = 0; i < s.size(); ++i) t[i] = py::int_(s[i]);
  return t;
}

// A numpy array sharing the tensor's memory (CPU, and a dtype numpy has).
py::array to_numpy(const Tensor& t) {
  MT_CHECK(t.device().is_cpu(), TypeError, "numpy: the tensor is on ", t.device().str(),
           "; copy it to the CPU first with .cpu()");
  MT_CHECK(t.dtype() != DType::bf16, TypeError,
           "numpy: numpy has no bfloat16; convert first, e.g. t.to('f32').numpy()");
  static const char* np_names[] = {"float32", "float64", "", "float16", "int32", "int64", "uint16", "uint8"};
  py::dtype dt(np_names[int(t.dtype())]);
  std::vector<py::ssize_t> shape(t.shape().begin(), t.shape().end()), strides;
  for (int64_t s : t.strides()) strides.push_back(s * int64_t(t.itemsize()));
  auto* keep = new Tensor(t);
  py::capsule base(keep, [](void* p) { delete static_cast<Tensor*>(p); });
  return py::array(dt, shape, strides, t.numel() ? t.data_ptr() : nullptr, base);
}

Tensor index(const Tensor& self, py::handle key) {
  py::tuple items = py::isinstance<py::tuple>(key) ? py::reinterpret_borrow<py::tuple>(key) : py::make_tuple(key);
  int consumed = 0;  // dims of self that items index (None adds, Ellipsis spans)
  for (py::handle it : items)
    if (!it.is_none() && !py::isinstance<py::ellipsis>(it)) ++consumed;
  MT_CHECK(consumed <= self.dim(), ValueError, "index: ", consumed, " indices for a tensor with ", self.dim(), " dims");
  Tensor t = self;
  int d = 0;
  for (py::handle it : items) {
    if (py::isinstance<py::ellipsis>(it)) {
      d += self.dim() - consumed;
    } else if (it.is_none()) {
      t = t.unsqueeze(d++);
    } else if (py::isinstance<py::slice>(it)) {
      py::ssize_t start, stop, step, len;
      MT_CHECK(py::reinterpret_borrow<py::slice>(it).compute(t.size(d), &start, &stop, &step, &len), ValueError,
               "index: invalid slice");
      MT_CHECK(step > 0, ValueError, "index: slice step must be positive, got ", step);
      t = t.slice(d++, start, stop, step);
    } else if (py::isinstance<py::int_>(it)) {
      t = t.select(d, it.cast<int64_t>());
    } else {
      throw TypeError("index: only ints, slices, None and ... are supported, got " +
                      std::string(py::str(py::type::of(it).attr("__name__"))));
    }
  }
  return t;
}

Tensor factory_rand(bool normal, py::handle shape, py::handle dtype, py::handle device, py::object seed) {
  DType dt = to_dtype(dtype);
  Device dev = to_device(device);
  Shape s = to_shape(shape, normal ? "randn" : "rand");
  if (seed.is_none()) return normal ? Tensor::randn(s, dt, dev) : Tensor::rand(s, dt, dev);
  Generator g(seed.cast<uint64_t>());
  return normal ? Tensor::randn(s, dt, dev, &g) : Tensor::rand(s, dt, dev, &g);
}

}  // namespace

void bind_tensor(py::module_& m) {
  py::enum_<DType>(m, "DType", "Element type of a tensor.")
      .value("f32", DType::f32).value("f64", DType::f64).value("bf16", DType::bf16).value("f16", DType::f16)
      .value("i32", DType::i32).value("i64", DType::i64).value("u16", DType::u16).value("u8", DType::u8)
      .def_property_readonly("itemsize", [](DType d) { return dtype_size(d); });

  py::class_<Device>(m, "Device", "The CPU or one CUDA device.")
      .def(py::init([](py::handle h) { return to_device(h); }), py::arg("device"))
      .def_property_readonly("type", [](const Device& d) { return d.is_cpu() ? "cpu" : "cuda"; })
      .def_property_readonly("index", [](const Device& d) { return d.index; })
      .def("__str__", &Device::str)
      .def("__repr__", [](const Device& d) { return "mambatron.Device('" + d.str() + "')"; })
      .def("__eq__", [](const Device& a, py::handle b) {
        try { return a == to_device(b); } catch (const Error&) { return false; }
      })
      .def("__hash__", [](const Device& d) { return std::hash<std::string>()(d.str()); });

  py::class_<Tensor> cls(m, "Tensor", "An n-dimensional array on the CPU or a CUDA device.");
  cls.def(py::init([](py::handle data) { return as_tensor(data, "Tensor", "data"); }), py::arg("data"),
          "A tensor sharing the memory of a DLPack array or buffer (no copy).")
      .def_property_readonly("shape", [](const Tensor& t) { return to_tuple(t.shape()); })
      .def_property_readonly("strides", [](const Tensor& t) { return to_tuple(t.strides()); },
                             "Strides in elements.")
      .def_property_readonly("dtype", &Tensor::dtype)
      .def_property_readonly("device", &Tensor::device)
      .def_property_readonly("ndim", &Tensor::dim)
      .def_property_readonly("itemsize", &Tensor::itemsize)
      .def_property_readonly("nbytes", &Tensor::nbytes)
      .def_property_readonly("is_cuda", &Tensor::is_cuda)
      .def("dim", &Tensor::dim)
      .def("numel", &Tensor::numel)
      .def("size", [](const Tensor& t, py::object d) -> py::object {
        return d.is_none() ? py::object(to_tuple(t.shape())) : py::int_(t.size(d.cast<int>()));
      }, py::arg("dim") = py::none())
      .def("stride", &Tensor::stride, py::arg("dim"))
      .def("data_ptr", [](const Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()); })
      .def("is_contiguous", &Tensor::is_contiguous)
      .def("contiguous", &Tensor::contiguous)
      .def("clone", &Tensor::clone)
      .def("view", [](const Tensor& t, py::args shape) {
        return t.view(shape.size() == 1 ? to_shape(shape[0], "view") : to_shape(shape, "view"));
      })
      .def("reshape", [](const Tensor& t, py::args shape) {
        return t.reshape(shape.size() == 1 ? to_shape(shape[0], "reshape") : to_shape(shape, "reshape"));
      })
      .def("narrow", &Tensor::narrow, py::arg("dim"), py::arg("start"), py::arg("length"))
      .def("select", &Tensor::select, py::arg("dim"), py::arg("index"))
      .def("transpose", &Tensor::transpose, py::arg("dim0"), py::arg("dim1"))
      .def("permute", [](const Tensor& t, py::args dims) {
        std::vector<int> d;
        for (int64_t v : dims.size() == 1 && !py::isinstance<py::int_>(dims[0]) ? to_shape(dims[0], "permute")
                                                                                 : to_shape(dims, "permute"))
          d.push_back(int(v));
        return t.permute(d);
      })
      .def("unsqueeze", &Tensor::unsqueeze, py::arg("dim"))
      .def_property_readonly("T", [](const Tensor& t) {
        MT_CHECK(t.dim() == 2, ValueError, "T: the tensor has ", t.dim(), " dims, expected 2");
        return t.transpose(0, 1);
      })
      .def("to", [](const Tensor& t, py::object a, py::object device, py::object dtype) {
        // t.to("cuda"), t.to("bf16"), t.to(device=..., dtype=...)
        if (!a.is_none()) {
          try { dtype = py::cast(to_dtype(a)); } catch (const TypeError&) { device = py::cast(to_device(a)); }
        }
        Device dev = device.is_none() ? t.device() : to_device(device);
        DType dt = dtype.is_none() ? t.dtype() : to_dtype(dtype);
        py::gil_scoped_release release;
        return t.to(dev, dt);
      }, py::arg("device_or_dtype") = py::none(), py::kw_only(), py::arg("device") = py::none(),
         py::arg("dtype") = py::none(), "A copy on another device and/or dtype (self when nothing changes).")
      .def("cpu", [](const Tensor& t) { py::gil_scoped_release r; return t.to(Device::cpu()); })
      .def("cuda", [](const Tensor& t, int i) { py::gil_scoped_release r; return t.to(Device::cuda(i)); },
           py::arg("index") = 0)
      .def("copy_", [](Tensor& t, py::handle src) -> Tensor& { return t.copy_(as_tensor(src, "copy_", "src")); },
           py::arg("src"), py::return_value_policy::reference_internal)
      .def("fill_", &Tensor::fill_, py::arg("value"), py::return_value_policy::reference_internal)
      .def("zero_", &Tensor::zero_, py::return_value_policy::reference_internal)
      .def("item", [](const Tensor& t) -> py::object {
        if (is_floating(t.dtype())) return py::float_(t.item());
        MT_CHECK(t.numel() == 1, ValueError, "item: the tensor has ", t.numel(), " elements, expected exactly one");
        return py::int_(*t.to(Device::cpu(), DType::i64).data<int64_t>());  // exact beyond 2^53
      })
      .def("numpy", &to_numpy, "A numpy array sharing this CPU tensor's memory.")
      .def("__array__", [](const Tensor& t, py::object dtype, py::object copy) {
        py::array a = to_numpy(t);
        if (!dtype.is_none()) a = a.attr("astype")(dtype);
        else if (!copy.is_none() && copy.cast<bool>()) a = a.attr("copy")();
        return a;
      }, py::arg("dtype") = py::none(), py::kw_only(), py::arg("copy") = py::none())
      .def("__len__", [](const Tensor& t) {
        MT_CHECK(t.dim() > 0, TypeError, "len() of a 0-d tensor");
        return t.size(0);
      })
      .def("__getitem__", &index)
      .def("__setitem__", [](Tensor& t, py::handle key, py::handle value) {
        Tensor view = index(t, key);
        if (py::isinstance<py::float_>(value) || py::isinstance<py::int_>(value)) view.fill_(value.cast<double>());
        else view.copy_(as_tensor(value, "__setitem__", "value"));
      })
      .def("str", &Tensor::str);
  bind_dlpack_methods(cls, m);

  m.def("empty", [](py::handle shape, py::handle dtype, py::handle device) {
    return Tensor::empty(to_shape(shape, "empty"), to_dtype(dtype), to_device(device));
  }, py::arg("shape"), py::arg("dtype") = "f32", py::arg("device") = "cpu", "An uninitialised tensor.");
  m.def("zeros", [](py::handle shape, py::handle dtype, py::handle device) {
    return Tensor::zeros(to_shape(shape, "zeros"), to_dtype(dtype), to_device(device));
  }, py::arg("shape"), py::arg("dtype") = "f32", py::arg("device") = "cpu");
  m.def("full", [](py::handle shape, double value, py::handle dtype, py::handle device) {
    return Tensor::full(to_shape(shape, "full"), value, to_dtype(dtype), to_device(device));
  }, py::arg("shape"), py::arg("value"), py::arg("dtype") = "f32", py::arg("device") = "cpu");
  m.def("rand", [](py::handle shape, py::handle dtype, py::handle device, py::object seed) {
    return factory_rand(false, shape, dtype, device, seed);
  }, py::arg("shape"), py::arg("dtype") = "f32", py::arg("device") = "cpu", py::arg("seed") = py::none(),
     "Uniform in [0, 1). With seed, drawn from a fresh generator; else from the default one (manual_seed). "
     "The same seed gives the same numbers on every device.");
  m.def("randn", [](py::handle shape, py::handle dtype, py::handle device, py::object seed) {
    return factory_rand(true, shape, dtype, device, seed);
  }, py::arg("shape"), py::arg("dtype") = "f32", py::arg("device") = "cpu", py::arg("seed") = py::none(),
     "Standard normal numbers; see rand for seeding.");
  m.def("as_tensor", [](py::handle data) { return as_tensor(data, "as_tensor", "data"); }, py::arg("data"),
        "A tensor sharing the memory of a mambatron.Tensor, DLPack array or buffer (no copy).");
}

}  // namespace mambatron::bind
