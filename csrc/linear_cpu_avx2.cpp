// The 8-lane AVX2+FMA build of the small-M linear launcher (this file alone is compiled with -mavx2 -mfma):
// 4 rows of x x 3 weight rows = 12 accumulators of the 16 vector registers.
#include "linear_cpu_impl.h"

namespace echo {

EchoStatus linear_cpu_avx2(const LinearLaunch& l, int num_threads) { return linear_cpu_lanes<8, 4, 3>(l, num_threads); }

}  // namespace echo
