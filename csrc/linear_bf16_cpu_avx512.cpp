// The bfloat16 small-M linear (y = x W^T + b, all bf16, for the few rows of a decode step), for processors with
// AVX-512-BF16; this file alone is compiled with -mavx512f -mavx512bw -mavx512bf16. Half the weight bytes of the
// float32 kernel, so a decode step that reads its weights once reads half as much. torch's bf16 linear (oneDNN,
// AMX where present) is fast from ~16 rows up but streams the weights at about half the memory's speed at 1-8
// rows (benchmarks/RESULTS.md). Same shape of work as linear_cpu_impl.h: a thread walks R consecutive weight rows
// against up to MB rows of x; vdpbf16ps multiplies 32 bf16 pairs into 16 float32 sums, accumulated in float32;
// the output is rounded once to bf16 (nearest even), bias added before, as torch rounds its bf16 linear.
#include <immintrin.h>

#include <cstring>

#include "linear_cpu_impl.h"  // linear_schedule

namespace echo {
namespace {

inline float bf16_to_float(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline uint16_t float_to_bf16(float f) {  // round to nearest even; NaN stays a (quiet) NaN
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

inline __m512bh load_bh(const uint16_t* p) { return (__m512bh)_mm512_loadu_si512(p); }
inline __m512bh load_bh(const uint16_t* p, __mmask32 m) { return (__m512bh)_mm512_maskz_loadu_epi16(m, p); }

template <int MB, int R>
inline void tile(const LinearBf16Launch& l, int64_t m0, int64_t n0) {
  const int64_t K = l.in_features;
  const uint16_t* w[R];
  const uint16_t* x[MB];
  for (int r = 0; r < R; ++r) w[r] = l.weight + (n0 + r) * l.weight_stride;
  for (int m = 0; m < MB; ++m) x[m] = l.x + (m0 + m) * l.x_stride;
  __m512 acc[MB][R];
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < R; ++r) acc[m][r] = _mm512_setzero_ps();
  int64_t k = 0;
  // The tile's R rows are 2-6 KB each: too short for the hardware prefetcher to ramp up on each. Fetching the same
  // place in the next tile's rows took one row from 17.8 to 15.4 ms and four rows from 25.6 to 17.1 ms over the
  // omni-bench decoder (RESULTS.md).
  const int64_t ahead = R * l.weight_stride;
  for (; k + 32 <= K; k += 32) {
    __m512bh wv[R];
    for (int r = 0; r < R; ++r) {
      __builtin_prefetch(w[r] + k + ahead);
      wv[r] = load_bh(w[r] + k);
    }
    for (int m = 0; m < MB; ++m) {
      const __m512bh xv = load_bh(x[m] + k);
      for (int r = 0; r < R; ++r) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], xv, wv[r]);
    }
  }
  if (k < K) {  // the last K % 32 pairs: masked loads leave the other lanes zero
    const __mmask32 mask = static_cast<__mmask32>((1ull << (K - k)) - 1);
    __m512bh wv[R];
    for (int r = 0; r < R; ++r) wv[r] = load_bh(w[r] + k, mask);
    for (int m = 0; m < MB; ++m) {
      const __m512bh xv = load_bh(x[m] + k, mask);
      for (int r = 0; r < R; ++r) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], xv, wv[r]);
    }
  }
  for (int m = 0; m < MB; ++m) {
    uint16_t* y = l.y + (m0 + m) * l.y_stride + n0;
    for (int r = 0; r < R; ++r) {
      float s = _mm512_reduce_add_ps(acc[m][r]);
      if (l.bias) s += bf16_to_float(l.bias[n0 + r]);
      y[r] = float_to_bf16(s);
    }
  }
}

template <int MB, int R>
void columns(const LinearBf16Launch& l, int64_t m0, int mb, int64_t n0, int64_t n1) {
  if (mb < MB) {
    if constexpr (MB > 1) return columns<MB - 1, R>(l, m0, mb, n0, n1);
  }
  int64_t n = n0;
  for (; n + R <= n1; n += R) tile<MB, R>(l, m0, n);
  for (; n < n1; ++n) tile<MB, 1>(l, m0, n);
}

}  // namespace

// 4 x rows x 6 weight rows: 24 accumulators + 6 weight vectors + 1 x vector, as the float32 AVX-512 build.
EchoStatus linear_bf16_cpu_avx512(const LinearBf16Launch& l, int num_threads) {
  return linear_schedule<4, 6>(l, num_threads, [&](int64_t m0, int mb, int64_t n0, int64_t n1) {
    columns<4, 6>(l, m0, mb, n0, n1);
  });
}

}  // namespace echo
