// Sampling functions and the batched TokenGenerator for Python. python/mambatron/generate.py
// builds the user-facing generate() and TokenGenerator on these.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "convert.h"
#include "mambatron/generate.h"

namespace mambatron::bind {

namespace {

SamplingParams make_params(double temperature, int64_t top_k, double top_p) {
  SamplingParams p;
  p.temperature = temperature;
  p.top_k = top_k;
  p.top_p = top_p;
  return p.validate(), p;
}

// Per-sequence lists of equal length -> requests.
std::vector<GenerationRequest> make_requests(const std::vector<std::vector<int64_t>>& prompts,
                                             const std::vector<int64_t>& max_new_tokens,
                                             const std::vector<std::vector<int64_t>>& stop_tokens,
                                             const std::vector<uint64_t>& seeds) {
  const size_t b = prompts.size();
  MT_CHECK(max_new_tokens.size() == b && stop_tokens.size() == b && seeds.size() == b, ValueError,
           "TokenGenerator: ", b, " prompts need as many max_new_tokens (got ", max_new_tokens.size(),
           "), stop_tokens (", stop_tokens.size(), ") and seeds (", seeds.size(), ")");
  std::vector<GenerationRequest> out(b);
  for (size_t i = 0; i < b; ++i) {
    out[i].prompt = prompts[i];
    out[i].max_new_tokens = max_new_tokens[i];
    out[i].stop_tokens = stop_tokens[i];
    out[i].seed = seeds[i];
  }
  return out;
}

const char* const kStartDoc = R"(Starts a batch: prompts (lists of ids, any lengths >= 1), and per sequence
max_new_tokens, stop_tokens (lists) and seeds; then temperature (0 = greedy), top_k (0 = off), top_p (1 = off).
Each prompt is prefilled on its own, so a sequence gets the tokens it would get alone.)";

}  // namespace

void bind_generate(py::module_& m) {
  m.def(
      "sampling_probabilities",
      [](py::handle logits, double temperature, int64_t top_k, double top_p) {
        Tensor z = as_tensor(logits, "sampling_probabilities", "logits");
        SamplingParams p = make_params(temperature, top_k, top_p);
        py::gil_scoped_release release;
        return sampling_probabilities(z, p);
      },
      py::arg("logits"), py::kw_only(), py::arg("temperature") = 1.0, py::arg("top_k") = 0, py::arg("top_p") = 1.0,
      R"(The distribution the sampler draws from for logits [b, V] or [V]: float64, zero outside the ids
that temperature, top-k and top-p keep (temperature 0: one-hot argmax).)");
  m.def(
      "sample_tokens",
      [](py::handle logits, const std::vector<uint64_t>& seeds, const std::vector<uint64_t>& counters,
         double temperature, int64_t top_k, double top_p) {
        Tensor z = as_tensor(logits, "sample_tokens", "logits");
        SamplingParams p = make_params(temperature, top_k, top_p);
        py::gil_scoped_release release;
        return sample_tokens(z, p, seeds, counters);
      },
      py::arg("logits"), py::arg("seeds"), py::arg("counters"), py::kw_only(), py::arg("temperature") = 1.0,
      py::arg("top_k") = 0, py::arg("top_p") = 1.0,
      "One id per row of logits [b, V] (int64 [b]); row i draws with sampling_uniform(seeds[i], counters[i]).");
  m.def("sampling_uniform", &sampling_uniform, py::arg("seed"), py::arg("counter"),
        "The uniform number in [0, 1) of draw `counter` under `seed` (Philox-4x32-10, 53 bits).");
  m.def("sequence_seed", &sequence_seed, py::arg("seed"), py::arg("index"),
        "The seed of row `index` of a batch generated with one user seed.");

  py::class_<TokenGenerator>(m, "TokenGenerator", R"(Batched generation on a Model: per-prompt prefill, then
rounds of sampling and one-token decode steps. Holds the decoding state between calls.)")
      .def(py::init<Model&>(), py::arg("model"), py::keep_alive<1, 2>())
      .def(
          "start",
          [](TokenGenerator& g, const std::vector<std::vector<int64_t>>& prompts,
             const std::vector<int64_t>& max_new_tokens,
             const std::vector<std::vector<int64_t>>& stop_tokens, const std::vector<uint64_t>& seeds,
             double temperature, int64_t top_k, double top_p) {
            auto reqs = make_requests(prompts, max_new_tokens, stop_tokens, seeds);
            SamplingParams p = make_params(temperature, top_k, top_p);
            py::gil_scoped_release release;
            g.start(reqs, p);
          },
          py::arg("prompts"), py::arg("max_new_tokens"), py::arg("stop_tokens"), py::arg("seeds"), py::kw_only(),
          py::arg("temperature") = 1.0, py::arg("top_k") = 0, py::arg("top_p") = 1.0, kStartDoc)
      .def("next", &TokenGenerator::next, py::call_guard<py::gil_scoped_release>(),
           "One round: the new token of every sequence, or -1 for one that had already finished.")
      .def_property_readonly("started", &TokenGenerator::started)
      .def_property_readonly("done", &TokenGenerator::done, "Every sequence has finished (True before start)")
      .def("finished", &TokenGenerator::finished, py::arg("index"))
      .def_property_readonly("batch", &TokenGenerator::batch)
      .def_property_readonly("tokens", &TokenGenerator::tokens,
                             "Generated ids per sequence so far (prompts excluded)")
      .def_property_readonly("logits", &TokenGenerator::logits, "[b, V]: the logits the next round draws from")
      .def_property_readonly("state", &TokenGenerator::state, py::return_value_policy::reference_internal);
}

}  // namespace mambatron::bind
