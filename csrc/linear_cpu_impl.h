// The CPU launcher body of the small-M linear op (y = x W^T + b for a few rows of x: a decode step's tokens),
// templated on the SIMD width so it is compiled once per instruction set like the log-mel launcher. torch's sgemm
// is built for large M; at 1-16 rows it neither streams the weights at the memory's speed nor keeps the FMA units
// busy. Here every weight row is read from memory once per call: a thread walks R consecutive rows of W and
// multiplies them against up to MB rows of x held in L1, with MB x R vector accumulators in registers.
#pragma once

#include <algorithm>
#include <cstring>

#include "echo_ops.h"
#include "parallel.h"
#include "simd.h"

namespace echo {

template <int N>
struct LinearVec {
  using V = typename VecOf<N>::Float;
  static V load(const float* p) {
    V v;
    std::memcpy(&v, p, sizeof(V));
    return v;
  }
  static float sum(V v) {
    float s = 0.f;
    for (int i = 0; i < N; ++i) s += v[i];
    return s;
  }
};

// y[m0 .. m0+MB) x [n0 .. n0+R) of the output.
template <int N, int MB, int R>
inline void linear_tile(const LinearLaunch& l, int64_t m0, int64_t n0) {
  using L = LinearVec<N>;
  using V = typename L::V;
  const int64_t K = l.in_features;
  const float* w[R];
  const float* x[MB];
  for (int r = 0; r < R; ++r) w[r] = l.weight + (n0 + r) * l.weight_stride;
  for (int m = 0; m < MB; ++m) x[m] = l.x + (m0 + m) * l.x_stride;
  V acc[MB][R];
  for (int m = 0; m < MB; ++m)
    for (int r = 0; r < R; ++r) acc[m][r] = V{};
  // Each of the R rows is short (a few KB) for the hardware prefetcher: fetch the same place in the next tile's
  // rows while this one runs (RESULTS.md).
  const int64_t ahead = R * l.weight_stride;
  int64_t k = 0;
  for (; k + N <= K; k += N) {
    V wv[R];
    for (int r = 0; r < R; ++r) {
      __builtin_prefetch(w[r] + k + ahead);
      wv[r] = L::load(w[r] + k);
    }
    for (int m = 0; m < MB; ++m) {
      const V xv = L::load(x[m] + k);
      for (int r = 0; r < R; ++r) acc[m][r] += xv * wv[r];
    }
  }
  for (int m = 0; m < MB; ++m) {
    float* y = l.y + (m0 + m) * l.y_stride + n0;
    for (int r = 0; r < R; ++r) {
      float s = L::sum(acc[m][r]);
      for (int64_t j = k; j < K; ++j) s += x[m][j] * w[r][j];
      y[r] = l.bias ? s + l.bias[n0 + r] : s;
    }
  }
}

// Rows m0 .. m0+mb (mb <= MB, chosen at run time) against output columns [n0, n1).
template <int N, int MB, int R>
void linear_columns(const LinearLaunch& l, int64_t m0, int mb, int64_t n0, int64_t n1) {
  if (mb < MB) {
    if constexpr (MB > 1) return linear_columns<N, MB - 1, R>(l, m0, mb, n0, n1);
  }
  int64_t n = n0;
  for (; n + R <= n1; n += R) linear_tile<N, MB, R>(l, m0, n);
  for (; n < n1; ++n) linear_tile<N, MB, 1>(l, m0, n);
}

// The threads split the output columns (the weight's rows) into contiguous chunks, each read once per call; within
// a chunk, the x rows go MB at a time while the chunk's W rows are still in cache. columns(m0, mb, n0, n1) computes
// rows m0 .. m0+mb of output columns [n0, n1). Shared by the float32 and bf16 kernels.
template <int MB, int R, typename Launch, typename Columns>
EchoStatus linear_schedule(const Launch& l, int num_threads, Columns&& columns) {
  if (l.rows < 0 || l.in_features <= 0 || l.out_features <= 0) return kInvalidArgument;
  const int64_t groups = (l.out_features + R - 1) / R;
  const int64_t grain = std::max<int64_t>(1, groups / (std::max(num_threads, 1) * 8));
  parallel_for(groups, grain, num_threads, [&](int64_t g0, int64_t g1) {
    const int64_t n0 = g0 * R, n1 = std::min(l.out_features, g1 * R);
    constexpr int64_t kColumnsPerPass = R * 16;  // W rows kept in L2 while every block of x rows passes over them
    for (int64_t c = n0; c < n1; c += kColumnsPerPass)
      for (int64_t m0 = 0; m0 < l.rows; m0 += MB)
        columns(m0, static_cast<int>(std::min<int64_t>(MB, l.rows - m0)), c, std::min(n1, c + kColumnsPerPass));
  });
  return kOk;
}

template <int N, int MB, int R>
EchoStatus linear_cpu_lanes(const LinearLaunch& l, int num_threads) {
  return linear_schedule<MB, R>(l, num_threads, [&](int64_t m0, int mb, int64_t n0, int64_t n1) {
    linear_columns<N, MB, R>(l, m0, mb, n0, n1);
  });
}

EchoStatus linear_cpu_avx2(const LinearLaunch& l, int num_threads);
EchoStatus linear_cpu_avx512(const LinearLaunch& l, int num_threads);

}  // namespace echo
