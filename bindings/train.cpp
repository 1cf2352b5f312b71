// Training for Python: learning_rate, AdamW over flat buffers, and the Trainer that
// drives a Model from a DataLoader (or explicit micro-batches) with the GIL released.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "convert.h"
#include "mambatron/train.h"

namespace mambatron::bind {

namespace {

ScheduleOptions make_schedule(const std::string& kind, double max_lr, double min_lr, int64_t warmup_steps,
                              int64_t decay_steps, int64_t wsd_decay_steps, const std::string& wsd_decay) {
  ScheduleOptions s;
  s.kind = lr_schedule_from_string(kind);
  s.max_lr = max_lr;
  s.min_lr = min_lr;
  s.warmup_steps = warmup_steps;
  s.decay_steps = decay_steps;
  s.wsd_decay_steps = wsd_decay_steps;
  s.wsd_decay = wsd_decay_from_string(wsd_decay);
  return s;
}

py::dict stats_dict(const StepStats& s) {
  py::dict d;
  d["step"] = s.step;
  d["loss"] = s.loss;
  d["grad_norm"] = s.grad_norm;
  d["lr"] = s.lr;
  d["tokens"] = s.tokens;
  d["skipped"] = s.skipped;
  return d;
}

py::dict options_dict(const TrainerOptions& o) {
  py::dict d;
  d["micro_batch"] = o.micro_batch;
  d["grad_accum"] = o.grad_accum;
  d["clip"] = o.clip;
  d["beta1"] = o.adamw.beta1;
  d["beta2"] = o.adamw.beta2;
  d["eps"] = o.adamw.eps;
  d["weight_decay"] = o.adamw.weight_decay;
  d["use_seq_idx"] = o.use_seq_idx;
  d["schedule"] = lr_schedule_name(o.schedule.kind);
  d["lr"] = o.schedule.max_lr;
  d["min_lr"] = o.schedule.min_lr;
  d["warmup_steps"] = o.schedule.warmup_steps;
  d["decay_steps"] = o.schedule.decay_steps;
  d["wsd_decay_steps"] = o.schedule.wsd_decay_steps;
  d["wsd_decay"] = wsd_decay_name(o.schedule.wsd_decay);
  return d;
}

std::vector<Tensor> tensors_of(py::handle seq, const char* op, const char* name) {
  std::vector<Tensor> out;
  if (seq.is_none()) return out;
  for (py::handle h : seq) out.push_back(as_tensor(h, op, name));
  return out;
}

}  // namespace

void bind_train(py::module_& m) {
  m.def(
      "learning_rate",
      [](int64_t step, const std::string& schedule, double max_lr, double min_lr, int64_t warmup_steps,
         int64_t decay_steps, int64_t wsd_decay_steps, const std::string& wsd_decay) {
        ScheduleOptions s =
            make_schedule(schedule, max_lr, min_lr, warmup_steps, decay_steps, wsd_decay_steps, wsd_decay);
        s.validate();
        return learning_rate(s, step);
      },
      py::arg("step"), py::kw_only(), py::arg("schedule") = "cosine", py::arg("max_lr") = 3e-4,
      py::arg("min_lr") = 3e-5, py::arg("warmup_steps") = 0, py::arg("decay_steps") = 1000,
      py::arg("wsd_decay_steps") = 0, py::arg("wsd_decay") = "linear",
      R"(The learning rate of optimizer step `step` (1-based) under a schedule.

Warmup (step <= warmup_steps): max_lr*step/warmup_steps. Then 'constant': max_lr;
'cosine': min + (max-min)*(1+cos(pi*r))/2 with r = (step-warmup)/(decay_steps-warmup), min_lr
after decay_steps; 'wsd': max_lr until decay_steps-wsd_decay_steps, then a linear or cosine
decay ('wsd_decay') to min_lr at decay_steps.)");

  py::class_<AdamW>(m, "AdamW", R"(AdamW over one flat parameter buffer and its gradient buffer,
updated in place; the moments (exp_avg, exp_avg_sq) have the parameters' dtype.)")
      .def(py::init([](py::handle params, py::handle grads, py::handle decay_mask, double beta1, double beta2,
                       double eps, double weight_decay) {
             const char* op = "AdamW";
             Tensor mask = decay_mask.is_none() ? Tensor() : as_tensor(decay_mask, op, "decay_mask");
             return std::make_unique<AdamW>(as_tensor(params, op, "params"), as_tensor(grads, op, "grads"), mask,
                                            AdamWHyper{beta1, beta2, eps, weight_decay});
           }),
           py::arg("params"), py::arg("grads"), py::arg("decay_mask") = py::none(), py::kw_only(),
           py::arg("beta1") = 0.9, py::arg("beta2") = 0.95, py::arg("eps") = 1e-8, py::arg("weight_decay") = 0.1)
      .def("step", &AdamW::step, py::arg("lr"), py::call_guard<py::gil_scoped_release>(),
           "One update with learning rate lr (the step count goes up by one first)")
      .def_property_readonly("step_count", &AdamW::step_count)
      .def_property_readonly("exp_avg", &AdamW::exp_avg, "The first moment m (a view of the optimizer's buffer)")
      .def_property_readonly("exp_avg_sq", &AdamW::exp_avg_sq, "The second moment v (a view)")
      .def(
          "load_state",
          [](AdamW& a, py::handle m1, py::handle m2, int64_t step) {
            a.load_state(as_tensor(m1, "AdamW.load_state", "exp_avg"), as_tensor(m2, "AdamW.load_state", "exp_avg_sq"),
                         step);
          },
          py::arg("exp_avg"), py::arg("exp_avg_sq"), py::arg("step_count"));

  py::class_<Trainer>(m, "Trainer", R"(Trains a Model: each step runs grad_accum micro-batches of
micro_batch sequences through forward_backward (gradients of the mean loss), clips the global
gradient norm to `clip` (<= 0: no clipping), takes the scheduled LR and one AdamW update on the
flat buffers. A step with a non-finite gradient norm makes no update (reported as skipped).
The model must stay alive as long as the trainer (the trainer keeps a reference).)")
      .def(py::init([](Model& model, int64_t micro_batch, int64_t grad_accum, double clip, double lr, double min_lr,
                       int64_t warmup_steps, int64_t decay_steps, const std::string& schedule,
                       int64_t wsd_decay_steps, const std::string& wsd_decay, double beta1, double beta2, double eps,
                       double weight_decay, bool use_seq_idx) {
             TrainerOptions o;
             o.micro_batch = micro_batch;
             o.grad_accum = grad_accum;
             o.clip = clip;
             o.adamw = AdamWHyper{beta1, beta2, eps, weight_decay};
             o.schedule = make_schedule(schedule, lr, min_lr, warmup_steps, decay_steps, wsd_decay_steps, wsd_decay);
             o.use_seq_idx = use_seq_idx;
             return std::make_unique<Trainer>(model, o);
           }),
           py::arg("model"), py::kw_only(), py::arg("micro_batch") = 8, py::arg("grad_accum") = 1,
           py::arg("clip") = 1.0, py::arg("lr") = 3e-4, py::arg("min_lr") = 3e-5, py::arg("warmup_steps") = 0,
           py::arg("decay_steps") = 1000, py::arg("schedule") = "cosine", py::arg("wsd_decay_steps") = 0,
           py::arg("wsd_decay") = "linear", py::arg("beta1") = 0.9, py::arg("beta2") = 0.95, py::arg("eps") = 1e-8,
           py::arg("weight_decay") = 0.1, py::arg("use_seq_idx") = true, py::keep_alive<1, 2>())
      .def(
          "step",
          [](Trainer& t, py::handle source, py::handle seq_idx) {
            StepStats s;
            if (py::isinstance<DataLoader>(source)) {
              DataLoader& loader = source.cast<DataLoader&>();
              py::gil_scoped_release release;
              s = t.step(loader);
            } else {
              std::vector<Tensor> toks = tensors_of(source, "Trainer.step", "tokens");
              std::vector<Tensor> idx = tensors_of(seq_idx, "Trainer.step", "seq_idx");
              py::gil_scoped_release release;
              s = t.step(toks, idx);
            }
            return stats_dict(s);
          },
          py::arg("source"), py::arg("seq_idx") = py::none(),
          R"(One optimizer step. source: a DataLoader (grad_accum batches of micro_batch are drawn),
or a list of micro-batches tokens [b, l+1] with an optional list of seq_idx. Returns a dict:
step, loss (mean over micro-batches), grad_norm (before clipping), lr, tokens, skipped.)")
      .def("evaluate", &Trainer::evaluate, py::arg("loader"), py::arg("batches"),
           py::call_guard<py::gil_scoped_release>(),
           "Mean loss over the loader's first `batches` batches of micro_batch (the loader is rewound first)")
      .def_property_readonly("options", [](const Trainer& t) { return options_dict(t.options()); })
      .def_property_readonly("step_count", &Trainer::step_count)
      .def_property_readonly("consumed_tokens", &Trainer::consumed_tokens)
      .def_property_readonly("skipped_steps", &Trainer::skipped_steps)
      .def_property_readonly("next_lr", &Trainer::next_lr, "The LR the next step will use")
      .def_property_readonly("optimizer", py::overload_cast<>(&Trainer::optimizer),
                             py::return_value_policy::reference_internal)
      .def("set_progress", &Trainer::set_progress, py::arg("step"), py::arg("consumed_tokens"),
           py::arg("skipped_steps") = 0, "Restores the step and token counters (for resuming)");
}

}  // namespace mambatron::bind
