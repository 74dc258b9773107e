// CPU entry point of the span log-mel op: the AVX-512 or AVX2 build when the processor has it, else the 4-lane baseline
// (SSE2 on x86-64, NEON on ARM). The launcher body is mel_cpu_impl.h; the arithmetic is mel.h's.
#include "mel_cpu_impl.h"

namespace echo {

EchoStatus log_mel_cpu(const mel::MelParams& p, const MelLaunch& l, int num_threads) {
#if defined(ECHO_HAVE_AVX2_BUILD)
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  if (avx512) return log_mel_cpu_avx512(p, l, num_threads);
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2) return log_mel_cpu_avx2(p, l, num_threads);
#endif
  return log_mel_cpu_lanes<4>(p, l, num_threads);
}

}  // namespace echo
