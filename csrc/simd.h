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

// Two-input lane shuffles with indices known at compile time (0..N-1 from a, N..2N-1 from b).
#if defined(__clang__)
#define ECHO_SHUFFLE(N, a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define ECHO_SHUFFLE(N, a, b, ...) __builtin_shuffle(a, b, typename VecOf<N>::Int{__VA_ARGS__})
#endif

}  // namespace echo
