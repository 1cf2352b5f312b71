// The whole public C++ API.
#pragma once
#include "mambatron/check.h"
#include "mambatron/checkpoint.h"
#include "mambatron/cuda.h"
#include "mambatron/device.h"
#include "mambatron/dlpack.h"
#include "mambatron/dtype.h"
#include "mambatron/error.h"
#include "mambatron/memory.h"
#include "mambatron/ops.h"
#include "mambatron/random.h"
#include "mambatron/tensor.h"
#include "mambatron/version.h"
