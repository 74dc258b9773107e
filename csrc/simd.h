// N-lane float/int vectors (GCC/Clang vector extensions) shared by the CPU launchers that are compiled once per
// instruction set (4 lanes baseline, 8 AVX2, 16 AVX-512).
#pragma once

#include <cstdint>

namespace echo {

template <int N>
struct VecOf {
  typedef float Float __attribute__((vector_size(4 * N)));
  typedef int32_t Int __attribute__((vector_size(4 * N)));
};

}  // namespace echo
