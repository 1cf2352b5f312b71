// Scratch buffers for the CPU ops. Eigen takes a scalar path for the unaligned
// head of an array and a vector path for the rest, and the two round
// differently (exp, for one); with a plain std::vector the split would move with
// wherever the heap put the buffer, and results would change from call to call.
// Buffers aligned to Eigen's widest vector keep every call bit-identical.
#pragma once
#include <Eigen/Core>
#include <vector>

namespace mambatron::cpu {

template <class T>
using Scratch = std::vector<T, Eigen::aligned_allocator<T>>;

}  // namespace mambatron::cpu
