// The _C extension module: error mapping, then one binding file per area.
#include <pybind11/pybind11.h>

#include "convert.h"
#include "mambatron/error.h"
#include "mambatron/version.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "mambatron native core";
  m.attr("__version__") = MAMBATRON_VERSION;
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const mambatron::ValueError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const mambatron::TypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    } catch (const mambatron::OutOfMemoryError& e) {
      PyErr_SetString(PyExc_MemoryError, e.what());
    } catch (const mambatron::Error& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what());
    }
  });
  mambatron::bind::bind_runtime(m);
  mambatron::bind::bind_tensor(m);
  mambatron::bind::bind_ops(m);
  mambatron::bind::bind_model(m);
  mambatron::bind::bind_io(m);
  mambatron::bind::bind_train(m);
  mambatron::bind::bind_generate(m);
}
