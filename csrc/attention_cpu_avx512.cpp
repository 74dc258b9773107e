// The 16-lane AVX-512F build of the single-query paged attention launcher (compiled with -mavx512f -mfma).
#include "attention_cpu_impl.h"

namespace echo {

template <typename T>
EchoStatus decode_attention_cpu_avx512(const DecodeAttentionArgs<T>& a, int num_threads) {
  return decode_attention_cpu_lanes<16>(a, num_threads);
}
template EchoStatus decode_attention_cpu_avx512(const DecodeAttentionArgs<float>&, int);
template EchoStatus decode_attention_cpu_avx512(const DecodeAttentionArgs<uint16_t>&, int);

}  // namespace echo
