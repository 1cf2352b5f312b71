// CUDA runtime facts that every build can answer (a CPU-only build says no).
#pragma once
#include "mambatron/device.h"

namespace mambatron {

bool built_with_cuda();
bool cuda_available();  // built with CUDA and at least one device is usable
int device_count();     // 0 when not available
// Waits for all work queued on the device's current stream (no-op on the CPU).
void synchronize(Device device);
// The stream that ops on `device` launch on, as a cudaStream_t cast to void*;
// nullptr is the legacy default stream, which is the default.
void* current_stream(int device);
// Switches ops on `device` to `stream`; waits for the old stream first so that
// cached memory is never handed to a stream while another still uses it.
void set_current_stream(int device, void* stream);

}  // namespace mambatron

namespace mambatron {
// Makes `waiting` (a cudaStream_t as void*; nullptr is the legacy default
// stream) wait for the work queued so far on `producer`, without blocking the host.
void stream_wait(int device, void* waiting, void* producer);
}  // namespace mambatron
