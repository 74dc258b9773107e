// The 16-lane AVX-512F build of the CPU log-mel launcher (this file alone is compiled with -mavx512f);
// mel_cpu.cpp calls it only on processors that report AVX-512F.
#include "mel_cpu_impl.h"

namespace echo {

EchoStatus log_mel_cpu_avx512(const mel::MelParams& p, const MelLaunch& l, int num_threads) {
  return log_mel_cpu_lanes<16>(p, l, num_threads);
}

}  // namespace echo
