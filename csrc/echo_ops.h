// The C++ signature of every native op. Arguments are raw pointers, sizes and (for CUDA) a stream handle that the
// Python side takes from torch, so nothing here links torch. Each op returns an EchoStatus; it never throws.
#pragma once

#include <cstdint>

#include "dispatch.h"
#include "gather.h"
#include "mel.h"

namespace echo {

// Log-mel of many spans in one call. Span s is wave[span_start[s] : span_start[s] + span_len[s]]; its valid
// frames go to columns [out_offset[s], out_offset[s+1]) of out (n_mels x out_stride, row-major). Work item w in
// [work_offset[s], work_offset[s+1]) is frame w - work_offset[s] of span s; work items past the valid frames only
// feed the span's maximum. frame_max: scratch of total_work floats.
struct MelLaunch {
  const float* wave;
  const int64_t* span_start;
  const int64_t* span_len;
  const int64_t* out_offset;   // [num_spans + 1]
  const int64_t* work_offset;  // [num_spans + 1]
  int64_t num_spans;
  int64_t total_work;
  int64_t out_stride;          // = out_offset[num_spans]
  float* out;
  float* frame_max;
};

EchoStatus log_mel_cpu(const mel::MelParams& p, const MelLaunch& l, int num_threads);
EchoStatus log_mel_cuda(const mel::MelParams& p, const MelLaunch& l, void* stream);

// Row gather: for each segment, copy its rows of row_bytes bytes into out (row stride out_stride bytes) starting
// at its dst_row. segments: num_segments descriptors on the launcher's device; row_offset: [num_segments + 1]
// exclusive prefix sum of rows (the flattened work). unit: bytes per copy (pick with gather::pow2_divisor).
struct GatherLaunch {
  const gather::Segment* segments;
  const int64_t* row_offset;
  int64_t num_segments;
  int64_t total_rows;
  int64_t row_bytes;
  char* out;
  int64_t out_stride;
  int64_t unit;
};

EchoStatus gather_rows_cpu(const GatherLaunch& g, int num_threads);
EchoStatus gather_rows_cuda(const GatherLaunch& g, void* stream);

// Linear on a few rows: y[m, n] = sum_k x[m, k] * weight[n, k] (+ bias[n]) for m < rows. x and y rows have unit
// stride inside (row strides x_stride / y_stride, in elements); weight is out_features rows of in_features
// elements, row stride weight_stride. For decode steps; larger batches go to torch's GEMM. T: float, or uint16_t
// for raw bfloat16 bits (accumulated in float32, rounded once to bf16; only where the processor has AVX-512-BF16,
// linear_bf16_cpu_available(), elsewhere kNotSupported).
template <typename T>
struct LinearArgs {
  const T* x;
  const T* weight;
  const T* bias;  // nullptr: none
  T* y;
  int64_t rows;
  int64_t in_features;
  int64_t out_features;
  int64_t x_stride;
  int64_t weight_stride;
  int64_t y_stride;
};
using LinearLaunch = LinearArgs<float>;
using LinearBf16Launch = LinearArgs<uint16_t>;

EchoStatus linear_cpu(const LinearLaunch& l, int num_threads);
bool linear_bf16_cpu_available();
EchoStatus linear_bf16_cpu(const LinearBf16Launch& l, int num_threads);

// Single-query attention of num_seqs sequences over a paged K/V cache, one call per layer. Sequence s has one query
// row q[q_row[s]] (num_heads x head_dim, row stride q_stride elements) and attends keys slots[key_offset[s] ..
// key_offset[s+1]); k and v are [slot][kv_heads][head_dim] (slot stride kv_stride elements). Query head i reads
// K/V head i / (num_heads / kv_heads). Writes out[q_row[s]] (row stride out_stride). T: float, or uint16_t for raw
// bfloat16 bits (widened on load, the output rounded once); scores, softmax and sums are float32. kNotSupported
// for shapes the CPU launchers do not take (head_dim not a multiple of 4 or above 256, more than 16 query heads
// per K/V head); the caller keeps its torch path for those.
template <typename T>
struct DecodeAttentionArgs {
  const T* q;
  const T* k;
  const T* v;
  T* out;
  const int64_t* q_row;       // [num_seqs]
  const int64_t* key_offset;  // [num_seqs + 1]
  const int64_t* slots;       // [key_offset[num_seqs]]
  int64_t num_seqs;
  int64_t num_heads;
  int64_t kv_heads;
  int64_t head_dim;
  int64_t q_stride;
  int64_t out_stride;
  int64_t kv_stride;
  float scale;
};
using DecodeAttentionLaunch = DecodeAttentionArgs<float>;
using DecodeAttentionBf16Launch = DecodeAttentionArgs<uint16_t>;

EchoStatus decode_attention_cpu(const DecodeAttentionLaunch& a, int num_threads);
EchoStatus decode_attention_bf16_cpu(const DecodeAttentionBf16Launch& a, int num_threads);

// Text of the last CUDA error seen by a launcher of this thread ("" if none).
const char* last_cuda_error();

}  // namespace echo
