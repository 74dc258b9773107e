// CPU entry point of the small-M linear op: the AVX-512 or AVX2 build when the processor has it, else the 4-lane
// baseline (SSE2 on x86-64, NEON on ARM). The launcher body is linear_cpu_impl.h. The bf16 op has one build,
// AVX-512-BF16 (linear_bf16_cpu_avx512.cpp), and reports kNotSupported elsewhere.
#include "linear_cpu_impl.h"

namespace echo {

EchoStatus linear_cpu(const LinearLaunch& l, int num_threads) {
#if defined(ECHO_HAVE_AVX2_BUILD)
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  if (avx512) return linear_cpu_avx512(l, num_threads);
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2) return linear_cpu_avx2(l, num_threads);
#endif
  return linear_cpu_lanes<4, 4, 3>(l, num_threads);
}

#if defined(ECHO_HAVE_BF16_BUILD)
EchoStatus linear_bf16_cpu_avx512(const LinearBf16Launch& l, int num_threads);

bool linear_bf16_cpu_available() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                         __builtin_cpu_supports("avx512bf16");
  return ok;
}

EchoStatus linear_bf16_cpu(const LinearBf16Launch& l, int num_threads) {
  return linear_bf16_cpu_available() ? linear_bf16_cpu_avx512(l, num_threads) : kNotSupported;
}
#else
bool linear_bf16_cpu_available() { return false; }
EchoStatus linear_bf16_cpu(const LinearBf16Launch&, int) { return kNotSupported; }
#endif

}  // namespace echo
