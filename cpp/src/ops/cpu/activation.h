// CPU activations (see ops.h), and the scalar functions that the norms reuse.
#pragma once
#include <cmath>

#include "mambatron/tensor.h"

namespace mambatron::cpu {

// 1 / (1 + e^-x) without overflow: e^-x is only formed for x >= 0.
template <class T>
inline T sigmoid(T x) {
  if (x >= T(0)) return T(1) / (T(1) + std::exp(-x));
  T e = std::exp(x);
  return e / (T(1) + e);
}
template <class T>
inline T silu(T x) { return x * sigmoid(x); }
// d silu / dx = σ(x) (1 + x (1 − σ(x))).
template <class T>
inline T silu_grad(T x) {
  T s = sigmoid(x);
  return s * (T(1) + x * (T(1) - s));
}

void gelu_forward(const Tensor& x, Tensor& out);
void gelu_backward(const Tensor& dout, const Tensor& x, Tensor& dx);
void squared_relu_forward(const Tensor& x, Tensor& out);
void squared_relu_backward(const Tensor& dout, const Tensor& x, Tensor& dx);
void silu_forward(const Tensor& x, Tensor& out);
void silu_backward(const Tensor& dout, const Tensor& x, Tensor& dx);
void swiglu_forward(const Tensor& x, Tensor& out);
void swiglu_backward(const Tensor& dout, const Tensor& x, Tensor& dx);

}  // namespace mambatron::cpu
