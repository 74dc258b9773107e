// The CPU launcher body for the span log-mel op, templated on the SIMD width so that it is compiled once per
// instruction set: mel_cpu.cpp instantiates 4 lanes (SSE2 / NEON baseline) and picks at run time the 16-lane
// AVX-512 build (mel_cpu_avx512.cpp) or the 8-lane AVX2 one (mel_cpu_avx2.cpp) when the processor has it.
// Threads run over groups of consecutive frames of one span (the lanes), then over mel rows for the max-8 floor
// and normalisation. The arithmetic is mel.h's, the same the CUDA kernel runs with one lane.
#pragma once

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "echo_ops.h"
#include "parallel.h"
#include "simd.h"

namespace echo {

namespace mel {

template <int N>
struct VecLanes {
  using V = typename VecOf<N>::Float;
  using Int = typename VecOf<N>::Int;
  static constexpr int kCount = N;
  static Int as_int(V x) { return (Int)x; }  // same-size vector casts reinterpret the bits
  static V as_float(Int i) { return (V)i; }
  static Int less_mask(V a, float b) { return a < (V{} + b); }
  static V to_float(Int i) { return __builtin_convertvector(i, V); }
  static V max(V a, V b) { return a > b ? a : b; }
};

template <>
struct Lanes<VecOf<4>::Float> : VecLanes<4> {};
template <>
struct Lanes<VecOf<8>::Float> : VecLanes<8> {};
template <>
struct Lanes<VecOf<16>::Float> : VecLanes<16> {};

template <int N, int Base, int... I>  // a[Base], b[Base], a[Base + 1], b[Base + 1], ...
inline typename VecOf<N>::Float zip(typename VecOf<N>::Float a, typename VecOf<N>::Float b,
                                    std::integer_sequence<int, I...>) {
  return ECHO_SHUFFLE(N, a, b, (Base + I / 2 + (I % 2) * N)...);
}
template <int N, int Base, int... I>  // (a|b)[Base], (a|b)[Base + 2], ...: the even or odd samples of a pair
inline typename VecOf<N>::Float every_other(typename VecOf<N>::Float a, typename VecOf<N>::Float b,
                                            std::integer_sequence<int, I...>) {
  return ECHO_SHUFFLE(N, a, b, (Base + 2 * I)...);
}

// In-register transpose of N vectors of N lanes: log2(N) rounds of zipping row i with row i + N/2.
template <int N>
inline void transpose(typename VecOf<N>::Float* r) {
  using V = typename VecOf<N>::Float;
  constexpr auto seq = std::make_integer_sequence<int, N>{};
  for (int round = N; round > 1; round /= 2) {
    V t[N];
    for (int i = 0; i < N / 2; ++i) {
      t[2 * i] = zip<N, 0>(r[i], r[i + N / 2], seq);
      t[2 * i + 1] = zip<N, N / 2>(r[i], r[i + N / 2], seq);
    }
    for (int i = 0; i < N; ++i) r[i] = t[i];
  }
}

// load_frames for a group whose N frames all lie inside the span (no padding), the common case. load_frames
// writes one float at a time with a stride of N lanes (half the kernel's time on a 30 s clip); here each frame
// is read N samples pairs at a time, split into even/odd (re/im) and windowed in registers, and N frames x N
// samples blocks are transposed in registers. Returns false (nothing written) when a frame needs padding.
template <int N>
bool load_interior_frames(const float* x, int64_t len, int64_t t0, const MelParams& p, typename VecOf<N>::Float* zr,
                          typename VecOf<N>::Float* zi) {
  using V = typename VecOf<N>::Float;
  const int64_t first = t0 * p.hop - p.n_fft / 2, last = (t0 + N - 1) * p.hop - p.n_fft / 2;
  if (first < 0 || last + p.n_fft > len) return false;
  constexpr auto seq = std::make_integer_sequence<int, N>{};
  const int m = p.n_fft / 2;
  int k0 = 0;
  for (; k0 + N <= m; k0 += N) {
    V w0, w1, re[N], im[N];
    memcpy(&w0, p.window + 2 * k0, sizeof(V));
    memcpy(&w1, p.window + 2 * k0 + N, sizeof(V));
    const V w_even = every_other<N, 0>(w0, w1, seq), w_odd = every_other<N, 1>(w0, w1, seq);
    for (int l = 0; l < N; ++l) {
      const float* f = x + first + l * p.hop + 2 * k0;
      V a, b;
      memcpy(&a, f, sizeof(V));
      memcpy(&b, f + N, sizeof(V));
      re[l] = every_other<N, 0>(a, b, seq) * w_even;
      im[l] = every_other<N, 1>(a, b, seq) * w_odd;
    }
    transpose<N>(re);
    transpose<N>(im);
    for (int k = 0; k < N; ++k) {
      zr[k0 + k] = re[k];
      zi[k0 + k] = im[k];
    }
  }
  float* fr = reinterpret_cast<float*>(zr);  // the m % N samples left, one at a time
  float* fi = reinterpret_cast<float*>(zi);
  for (int l = 0; l < N; ++l) {
    const float* f = x + first + l * p.hop;
    for (int k = k0; k < m; ++k) {
      fr[k * N + l] = f[2 * k] * p.window[2 * k];
      fi[k * N + l] = f[2 * k + 1] * p.window[2 * k + 1];
    }
  }
  return true;
}

}  // namespace mel

template <int N>
EchoStatus log_mel_cpu_lanes(const mel::MelParams& p, const MelLaunch& l, int num_threads) {
  using V = typename VecOf<N>::Float;
  if (p.n_fft <= 0 || p.n_fft % 2 != 0 || p.n_fft > mel::kMaxFft || p.n_mels > mel::kMaxMels) return kInvalidArgument;

  struct Group {
    int64_t span, t0;  // frames t0 .. t0+N-1 of span (lanes past its last frame are computed and dropped)
  };
  std::vector<Group> groups;
  for (int64_t s = 0; s < l.num_spans; ++s)
    for (int64_t t0 = 0; t0 < l.work_offset[s + 1] - l.work_offset[s]; t0 += N) groups.push_back({s, t0});

  // Pass 1: log-mel of every frame; valid frames are written, every frame reports its max.
  parallel_for(static_cast<int64_t>(groups.size()), 16, num_threads, [&](int64_t begin, int64_t end) {
    constexpr int m_max = mel::kMaxFft / 2;
    V zr[m_max], zi[m_max], br[m_max], bi[m_max], power[m_max + 1];
    for (int64_t i = begin; i < end; ++i) {
      const int64_t s = groups[i].span, t0 = groups[i].t0;
      const int64_t len = std::min(l.span_len[s], p.max_samples);
      if (!mel::load_interior_frames<N>(l.wave + l.span_start[s], len, t0, p, zr, zi))
        mel::load_frames(l.wave + l.span_start[s], len, t0, p, zr, zi);
      mel::fft(zr, zi, br, bi, p);
      mel::split_power(zr, zi, p, power);
      const int lanes = static_cast<int>(std::min<int64_t>(N, l.work_offset[s + 1] - l.work_offset[s] - t0));
      const int valid = static_cast<int>(std::clamp<int64_t>(l.out_offset[s + 1] - l.out_offset[s] - t0, 0, lanes));
      V fmax = V{} - 1e30f;
      float* col = l.out + l.out_offset[s] + t0;
      for (int f = 0; f < p.n_mels; ++f) {
        const V v = mel::mel_log10(power, f, p);
        fmax = fmax > v ? fmax : v;
        if (valid == N) memcpy(col + f * l.out_stride, &v, sizeof(V));  // the N frames are adjacent columns
        else for (int j = 0; j < valid; ++j) col[f * l.out_stride + j] = v[j];
      }
      for (int j = 0; j < lanes; ++j) l.frame_max[l.work_offset[s] + t0 + j] = fmax[j];
    }
  });

  // Pass 2: the max over each span's frames sets the floor for its valid columns. The maxima are a short serial
  // reduction; the normalisation runs over mel rows, so one long span uses every thread too.
  std::vector<float> span_max(l.num_spans, -1e30f);
  for (int64_t s = 0; s < l.num_spans; ++s)
    for (int64_t w = l.work_offset[s]; w < l.work_offset[s + 1]; ++w) span_max[s] = std::max(span_max[s], l.frame_max[w]);
  parallel_for(p.n_mels, 8, num_threads, [&](int64_t begin, int64_t end) {
    for (int64_t f = begin; f < end; ++f) {
      float* row = l.out + f * l.out_stride;
      for (int64_t s = 0; s < l.num_spans; ++s)
        for (int64_t c = l.out_offset[s]; c < l.out_offset[s + 1]; ++c) row[c] = mel::normalise(row[c], span_max[s]);
    }
  });
  return kOk;
}

EchoStatus log_mel_cpu_avx2(const mel::MelParams& p, const MelLaunch& l, int num_threads);
EchoStatus log_mel_cpu_avx512(const mel::MelParams& p, const MelLaunch& l, int num_threads);

}  // namespace echo
