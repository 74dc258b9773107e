// CPU entry point of the single-query paged attention op: the AVX-512 or AVX2 build when the processor has it, else
// the 4-lane baseline (SSE2 on x86-64, NEON on ARM). The launcher body is attention_cpu_impl.h.
#include "attention_cpu_impl.h"

namespace echo {

namespace {

template <typename T>
EchoStatus dispatch(const DecodeAttentionArgs<T>& a, int num_threads) {
#if defined(ECHO_HAVE_AVX2_BUILD)
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  if (avx512 && a.head_dim % 16 == 0) return decode_attention_cpu_avx512(a, num_threads);
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2 && a.head_dim % 8 == 0) return decode_attention_cpu_avx2(a, num_threads);
#endif
  return decode_attention_cpu_lanes<4>(a, num_threads);
}

}  // namespace

EchoStatus decode_attention_cpu(const DecodeAttentionLaunch& a, int num_threads) { return dispatch(a, num_threads); }
EchoStatus decode_attention_bf16_cpu(const DecodeAttentionBf16Launch& a, int num_threads) {
  return dispatch(a, num_threads);
}

}  // namespace echo
