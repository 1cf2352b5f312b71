// Devices, streams, memory statistics, seeding.
#include <pybind11/pybind11.h>

#include "convert.h"
#include "mambatron/cuda.h"
#include "mambatron/memory.h"
#include "mambatron/random.h"

namespace mambatron::bind {

namespace {
Device stats_device(py::handle h) {
  if (h.is_none()) return cuda_available() ? Device::cuda(0) : Device::cpu();
  return to_device(h);
}
}  // namespace

void bind_runtime(py::module_& m) {
  m.def("built_with_cuda", &built_with_cuda, "Whether this build has the CUDA backend.");
  m.def("cuda_available", &cuda_available, "Whether the CUDA backend is built and a CUDA device is usable.");
  m.def("device_count", &device_count, "Number of usable CUDA devices (0 without CUDA).");
  m.def(
      "synchronize", [](py::handle d) { synchronize(stats_device(d)); }, py::arg("device") = py::none(),
      "Waits for all work queued on the device's current stream.");
  m.def(
      "current_stream", [](int d) { return reinterpret_cast<uintptr_t>(current_stream(d)); }, py::arg("device") = 0,
      "The cudaStream_t that ops on cuda:DEVICE use, as an int (0: the legacy default stream).");
  m.def(
      "set_stream", [](int d, uintptr_t s) { set_current_stream(d, reinterpret_cast<void*>(s)); },
      py::arg("device"), py::arg("stream"),
      "Makes ops on cuda:DEVICE launch on STREAM (a cudaStream_t as int, e.g. torch.cuda.Stream().cuda_stream).");

  const char* stat_doc = " Bytes; device defaults to cuda:0 when CUDA is available, else cpu.";
  m.def("memory_allocated", [](py::handle d) { return memory_allocated(stats_device(d)); },
        py::arg("device") = py::none(), (std::string("Memory held by live tensors.") + stat_doc).c_str());
  m.def("max_memory_allocated", [](py::handle d) { return max_memory_allocated(stats_device(d)); },
        py::arg("device") = py::none(), (std::string("Peak of memory_allocated.") + stat_doc).c_str());
  m.def("memory_reserved", [](py::handle d) { return memory_reserved(stats_device(d)); },
        py::arg("device") = py::none(), (std::string("Memory held by the allocator, used or cached.") + stat_doc).c_str());
  m.def("reset_peak_memory_stats", [](py::handle d) { reset_peak_memory_stats(stats_device(d)); },
        py::arg("device") = py::none());
  m.def("empty_cache", [](py::handle d) { empty_cache(stats_device(d)); }, py::arg("device") = py::none(),
        "Returns cached, unused blocks to the system.");
  m.def("manual_seed", [](uint64_t s) { manual_seed(s); }, py::arg("seed"),
        "Seeds the default generator (and resets its offset).");
}

}  // namespace mambatron::bind
