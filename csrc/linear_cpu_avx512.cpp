// The 16-lane AVX-512F build of the small-M linear launcher (this file alone is compiled with -mavx512f -mfma):
// 4 rows of x x 6 weight rows = 24 accumulators, +6 weight vectors +1 x vector = 31 of the 32 registers. Measured
// on every omni-bench decoder linear, two threads: 4 x 6 took 18.7-19.3 ms at 8 rows against 21.3-21.6 ms for
// 4 x 4 and 25.3-26.6 ms for 8 x 3, and the same at 1-4 rows (benchmarks/RESULTS.md).
#include "linear_cpu_impl.h"

namespace echo {

EchoStatus linear_cpu_avx512(const LinearLaunch& l, int num_threads) { return linear_cpu_lanes<16, 4, 6>(l, num_threads); }

}  // namespace echo
