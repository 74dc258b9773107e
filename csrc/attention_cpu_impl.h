// The CPU launcher body for single-query (decode) attention over the paged KV cache, templated on the SIMD width
// like the other CPU launchers (attention_cpu.cpp instantiates 4 lanes and picks at run time the 16-lane AVX-512
// build or the 8-lane AVX2 one) and on the element type: float, or uint16_t for raw bfloat16 bits, widened to
// float32 on load. One work item is one (sequence, K/V head): its query heads are scored against every key (one
// pass over K), softmaxed in float32, and the values summed (one pass over V), so each item reads its keys and
// values once, from their cache slots, without a gather. Items run on echo's thread pool: at batch 8 the attention
// of a decode step reads ~150 MB of K/V, which one core streams at half the machine's bandwidth.
#pragma once

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "echo_ops.h"
#include "parallel.h"
#include "simd.h"

namespace echo {
namespace attention {

constexpr int kMaxGroup = 16;   // query heads per K/V head
constexpr int kMaxHeadDim = 256;
constexpr int kAhead = 16;      // rows prefetched ahead (a head's rows: 256-512 B at a 1-4 KB stride; 2-48 tried)

template <typename T>
inline void prefetch_row(const T* row, int64_t len) {
  for (int64_t i = 0; i < len; i += 64 / sizeof(T)) __builtin_prefetch(row + i);  // 64-byte lines
}

// N consecutive elements as float32 lanes: float as is, bfloat16 (raw bits) shifted into a float's high half.
template <int N>
inline typename VecOf<N>::Float load(const float* p) {
  typename VecOf<N>::Float v;
  memcpy(&v, p, sizeof(v));
  return v;
}
template <int N>
inline typename VecOf<N>::Float load(const uint16_t* p) {
  typedef uint16_t Half __attribute__((vector_size(2 * N)));
  Half h;
  memcpy(&h, p, sizeof(h));
  return (typename VecOf<N>::Float)(__builtin_convertvector(h, typename VecOf<N>::Int) << 16);
}

inline float to_float(float x) { return x; }
inline float to_float(uint16_t x) {
  const uint32_t bits = static_cast<uint32_t>(x) << 16;
  float f;
  memcpy(&f, &bits, sizeof(f));
  return f;
}
inline void store(float* out, float x) { *out = x; }
inline void store(uint16_t* out, float x) {  // round to nearest even, as torch's float -> bfloat16
  uint32_t bits;
  memcpy(&bits, &x, sizeof(bits));
  *out = static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

template <int N, int W, int... I>  // lane i of a, paired with lane i ^ W
inline typename VecOf<N>::Float swap_lanes(typename VecOf<N>::Float a, std::integer_sequence<int, I...>) {
  return ECHO_SHUFFLE(N, a, a, (I ^ W)...);
}

// Sum of the lanes: log2(N) rounds of adding the vector to itself with lanes swapped in pairs at distance W.
template <int N>
inline float hsum(typename VecOf<N>::Float v) {
  constexpr auto seq = std::make_integer_sequence<int, N>{};
  if constexpr (N >= 16) v += swap_lanes<N, 8>(v, seq);
  if constexpr (N >= 8) v += swap_lanes<N, 4>(v, seq);
  if constexpr (N >= 4) v += swap_lanes<N, 2>(v, seq);
  v += swap_lanes<N, 1>(v, seq);
  return v[0];
}

// One round of summing N vectors' lanes at once: pairs (r[i], r[i + W]) become one vector whose lanes with bit W
// clear hold r[i]'s lanes folded at distance W and the others r[i + W]'s. After the rounds W = N/2 .. 1, r[0]
// lane j is the sum of r[j]'s lanes: N dot products reduced with 2(N-1) shuffles instead of N log2(N).
template <int N, int W, int... I>
inline typename VecOf<N>::Float fold_pair(typename VecOf<N>::Float x, typename VecOf<N>::Float y,
                                          std::integer_sequence<int, I...>) {
  return ECHO_SHUFFLE(N, x, y, ((I & W) ? N + I - W : I)...) + ECHO_SHUFFLE(N, x, y, ((I & W) ? N + I : I + W)...);
}
template <int N, int W = N / 2>
inline typename VecOf<N>::Float sum_lanes_of_each(typename VecOf<N>::Float* r) {
  constexpr auto seq = std::make_integer_sequence<int, N>{};
  for (int i = 0; i < W; ++i) r[i] = fold_pair<N, W>(r[i], r[i + W], seq);
  if constexpr (W > 1) return sum_lanes_of_each<N, W / 2>(r);
  return r[0];
}

// exp(x) for x <= 0 (scores minus their max), Cephes' single-precision polynomial: x = n ln2 + r, |r| <= ln2/2,
// exp(r) by a degree-7 polynomial, 2^n by the exponent bits. Relative error about 2e-7; below -87.3 it is 0.
template <int N>
inline typename VecOf<N>::Float exp_nonpositive(typename VecOf<N>::Float x) {
  using V = typename VecOf<N>::Float;
  using I = typename VecOf<N>::Int;
  const V zero = V{} + 0.0f;
  const I underflow = x < (V{} - 87.3f);
  x = x < (V{} - 87.3f) ? V{} - 87.3f : x;
  const V t = x * 1.44269504089f + 0.5f;
  I n = __builtin_convertvector(t, I);  // truncates toward zero: floor for t >= 0, one too high below
  n -= (__builtin_convertvector(n, V) > t) ? I{} + 1 : I{};
  const V nf = __builtin_convertvector(n, V);
  const V r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
  V y = r * 1.9875691500e-4f + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const V scale = (V)((n + 127) << 23);  // 2^n: n >= -126 since x >= -87.3
  return underflow ? zero : y * scale;
}

}  // namespace attention

template <int N, typename T>
EchoStatus decode_attention_cpu_lanes(const DecodeAttentionArgs<T>& a, int num_threads) {
  using V = typename VecOf<N>::Float;
  const int64_t head_dim = a.head_dim, group = a.num_heads / std::max<int64_t>(a.kv_heads, 1);
  const int chunks = static_cast<int>(head_dim / N);
  constexpr int kMaxChunks = attention::kMaxHeadDim / N;
  if (a.kv_heads <= 0 || a.num_heads % a.kv_heads != 0 || head_dim % N != 0 || chunks > kMaxChunks ||
      group > attention::kMaxGroup)
    return kNotSupported;  // the caller keeps its torch path for these shapes

  parallel_for(a.num_seqs * a.kv_heads, 1, num_threads, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;  // group x keys of one item, float32
    for (int64_t item = begin; item < end; ++item) {
      const int64_t s = item / a.kv_heads, h = item % a.kv_heads;
      const int64_t n = a.key_offset[s + 1] - a.key_offset[s];
      const int64_t* slots = a.slots + a.key_offset[s];
      const T* q = a.q + a.q_row[s] * a.q_stride + h * group * head_dim;
      T* out = a.out + a.q_row[s] * a.out_stride + h * group * head_dim;
      if (n <= 0) {
        for (int64_t i = 0; i < group * head_dim; ++i) attention::store(out + i, 0.0f);
        continue;
      }
      scores.resize(static_cast<size_t>(group * n));

      // Scores: N key rows at a time, dotted with every query head of the group (rows re-read from L1 per head).
      V qv[attention::kMaxGroup][kMaxChunks];
      for (int64_t g = 0; g < group; ++g)
        for (int c = 0; c < chunks; ++c) qv[g][c] = attention::load<N>(q + g * head_dim + c * N) * a.scale;
      int64_t j = 0;
      for (; j + N <= n; j += N) {  // N keys at a time: N dot products per head, reduced together
        const T* rows[N];
        for (int r = 0; r < N; ++r) {
          rows[r] = a.k + slots[j + r] * a.kv_stride + h * head_dim;
          if (j + r + attention::kAhead < n)
            attention::prefetch_row(a.k + slots[j + r + attention::kAhead] * a.kv_stride + h * head_dim, head_dim);
        }
        for (int64_t g = 0; g < group; ++g) {
          V acc[N];
          for (int r = 0; r < N; ++r) {
            acc[r] = qv[g][0] * attention::load<N>(rows[r]);
            for (int c = 1; c < chunks; ++c) acc[r] += qv[g][c] * attention::load<N>(rows[r] + c * N);
          }
          const V dots = attention::sum_lanes_of_each<N>(acc);
          memcpy(scores.data() + g * n + j, &dots, sizeof(V));
        }
      }
      for (; j < n; ++j) {  // the last n % N keys one at a time
        const T* k = a.k + slots[j] * a.kv_stride + h * head_dim;
        V kv[kMaxChunks];
        for (int c = 0; c < chunks; ++c) kv[c] = attention::load<N>(k + c * N);
        for (int64_t g = 0; g < group; ++g) {
          V acc = qv[g][0] * kv[0];
          for (int c = 1; c < chunks; ++c) acc += qv[g][c] * kv[c];
          scores[g * n + j] = attention::hsum<N>(acc);
        }
      }

      // Softmax per query head, in float32: max, exp (vectorised), sum.
      float inv_sum[attention::kMaxGroup];
      for (int64_t g = 0; g < group; ++g) {
        float* row = scores.data() + g * n;
        float mx = row[0];
        for (int64_t j = 1; j < n; ++j) mx = std::max(mx, row[j]);
        V total = V{};
        int64_t j = 0;
        for (; j + N <= n; j += N) {
          V x;
          memcpy(&x, row + j, sizeof(V));
          x = attention::exp_nonpositive<N>(x - mx);
          memcpy(row + j, &x, sizeof(V));
          total += x;
        }
        float sum = attention::hsum<N>(total);
        if (j < n) {  // the last n % N scores, padded with -inf lanes (exp 0)
          V x = V{} - 1e30f;
          memcpy(&x, row + j, sizeof(float) * (n - j));
          x = attention::exp_nonpositive<N>(x - mx);
          memcpy(row + j, &x, sizeof(float) * (n - j));
          sum += attention::hsum<N>(x);
        }
        inv_sum[g] = 1.0f / sum;
      }

      // Values: each value row is loaded once and added into every head's output with that head's weight.
      V acc[attention::kMaxGroup][kMaxChunks];
      for (int64_t g = 0; g < group; ++g)
        for (int c = 0; c < chunks; ++c) acc[g][c] = V{};
      for (int64_t j = 0; j < n; ++j) {
        const T* v = a.v + slots[j] * a.kv_stride + h * head_dim;
        if (j + attention::kAhead < n)
          attention::prefetch_row(a.v + slots[j + attention::kAhead] * a.kv_stride + h * head_dim, head_dim);
        V vv[kMaxChunks];
        for (int c = 0; c < chunks; ++c) vv[c] = attention::load<N>(v + c * N);
        for (int64_t g = 0; g < group; ++g) {
          const float p = scores[g * n + j];
          for (int c = 0; c < chunks; ++c) acc[g][c] += p * vv[c];
        }
      }
      for (int64_t g = 0; g < group; ++g)
        for (int c = 0; c < chunks; ++c) {
          const V o = acc[g][c] * inv_sum[g];
          if constexpr (sizeof(T) == sizeof(float)) {
            memcpy(out + g * head_dim + c * N, &o, sizeof(V));
          } else {
            for (int l = 0; l < N; ++l) attention::store(out + g * head_dim + c * N + l, o[l]);
          }
        }
    }
  });
  return kOk;
}

template <typename T>
EchoStatus decode_attention_cpu_avx2(const DecodeAttentionArgs<T>& a, int num_threads);
template <typename T>
EchoStatus decode_attention_cpu_avx512(const DecodeAttentionArgs<T>& a, int num_threads);

}  // namespace echo
