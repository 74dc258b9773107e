// The 8-lane AVX2 build of the single-query paged attention launcher (compiled with -mavx2 -mfma).
#include "attention_cpu_impl.h"

namespace echo {

template <typename T>
EchoStatus decode_attention_cpu_avx2(const DecodeAttentionArgs<T>& a, int num_threads) {
  return decode_attention_cpu_lanes<8>(a, num_threads);
}
template EchoStatus decode_attention_cpu_avx2(const DecodeAttentionArgs<float>&, int);
template EchoStatus decode_attention_cpu_avx2(const DecodeAttentionArgs<uint16_t>&, int);

}  // namespace echo
