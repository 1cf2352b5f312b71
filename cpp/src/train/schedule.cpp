// Learning-rate schedules (train.h states the formulas).
#include <cmath>

#include "mambatron/error.h"
#include "mambatron/train.h"

namespace mambatron {

namespace {
constexpr double kPi = 3.14159265358979323846;
}

LrSchedule lr_schedule_from_string(const std::string& s) {
  if (s == "constant") return LrSchedule::constant;
  if (s == "cosine") return LrSchedule::cosine;
  if (s == "wsd") return LrSchedule::wsd;
  throw ValueError("learning-rate schedule '" + s + "' is not one of constant, cosine, wsd");
}

WsdDecay wsd_decay_from_string(const std::string& s) {
  if (s == "linear") return WsdDecay::linear;
  if (s == "cosine") return WsdDecay::cosine;
  throw ValueError("WSD decay style '" + s + "' is not one of linear, cosine");
}

const char* lr_schedule_name(LrSchedule s) {
  switch (s) {
    case LrSchedule::constant: return "constant";
    case LrSchedule::cosine: return "cosine";
    case LrSchedule::wsd: return "wsd";
  }
  return "?";
}

const char* wsd_decay_name(WsdDecay d) { return d == WsdDecay::linear ? "linear" : "cosine"; }

const ScheduleOptions& ScheduleOptions::validate() const {
  MT_CHECK(std::isfinite(max_lr) && max_lr >= 0, ValueError, "schedule: max_lr = ", max_lr,
           " must be finite and >= 0");
  MT_CHECK(std::isfinite(min_lr) && min_lr >= 0 && min_lr <= max_lr, ValueError, "schedule: min_lr = ", min_lr,
           " must be in [0, max_lr = ", max_lr, "]");
  MT_CHECK(warmup_steps >= 0, ValueError, "schedule: warmup_steps = ", warmup_steps, " must be >= 0");
  if (kind == LrSchedule::cosine)
    MT_CHECK(decay_steps > warmup_steps, ValueError, "schedule: cosine decay_steps = ", decay_steps,
             " must be greater than warmup_steps = ", warmup_steps);
  if (kind == LrSchedule::wsd) {
    MT_CHECK(wsd_decay_steps >= 1, ValueError, "schedule: wsd_decay_steps = ", wsd_decay_steps, " must be >= 1");
    MT_CHECK(decay_steps - wsd_decay_steps >= warmup_steps, ValueError, "schedule: the WSD decay phase (",
             wsd_decay_steps, " steps ending at decay_steps = ", decay_steps, ") must start after warmup_steps = ",
             warmup_steps);
  }
  return *this;
}

double learning_rate(const ScheduleOptions& s, int64_t step) {
  MT_CHECK(step >= 0, ValueError, "learning_rate: step = ", step, " must be >= 0");
  const double lo = s.min_lr, hi = s.max_lr;
  if (s.warmup_steps > 0 && step <= s.warmup_steps) return hi * double(step) / double(s.warmup_steps);
  switch (s.kind) {
    case LrSchedule::constant:
      return hi;
    case LrSchedule::cosine: {
      if (step > s.decay_steps) return lo;
      double r = double(step - s.warmup_steps) / double(s.decay_steps - s.warmup_steps);
      return lo + (hi - lo) * 0.5 * (1.0 + std::cos(kPi * r));
    }
    case LrSchedule::wsd: {
      int64_t start = s.decay_steps - s.wsd_decay_steps;
      if (step <= start) return hi;
      if (step > s.decay_steps) return lo;
      double r = double(step - start) / double(s.wsd_decay_steps);
      double factor = s.wsd_decay == WsdDecay::linear ? 1.0 - r : 0.5 * (1.0 + std::cos(kPi * r));
      return lo + (hi - lo) * factor;
    }
  }
  return hi;
}

}  // namespace mambatron
