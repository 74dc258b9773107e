// The 16-lane AVX-512F build of the small-M linear launcher (this file alone is compiled with -mavx512f -mfma):
// 4 rows of x x 4 weight rows = 16 accumulators (measured faster than 8 x 3 at 8 rows: fewer horizontal sums
// per weight row read).
#include "linear_cpu_impl.h"

namespace echo {

EchoStatus linear_cpu_avx512(const LinearLaunch& l, int num_threads) { return linear_cpu_lanes<16, 4, 4>(l, num_threads); }

}  // namespace echo
