#include "mambatron/random.h"

namespace mambatron {

Generator& default_generator() {
  static Generator gen(0);
  return gen;
}

}  // namespace mambatron
