// Argument checks shared by every op. Each throws with a sentence that names the
// op, the argument, what it got and what was expected.
#pragma once
#include <string>

#include "mambatron/tensor.h"

namespace mambatron {

void check_defined(const Tensor& t, const char* op, const char* name);
void check_dtype(const Tensor& t, const char* op, const char* name, DType expected);
void check_same_dtype(const Tensor& t, const Tensor& ref, const char* op, const char* name, const char* ref_name);
void check_dim(const Tensor& t, const char* op, const char* name, int expected);
void check_shape(const Tensor& t, const char* op, const char* name, const Shape& expected);
void check_contiguous(const Tensor& t, const char* op, const char* name);
void check_same_device(const Tensor& t, const Tensor& ref, const char* op, const char* name, const char* ref_name);

}  // namespace mambatron
