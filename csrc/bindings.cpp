// The only pybind11 file: module echo._C. Pointers arrive as integers (tensor.data_ptr()), streams as integers
// (torch.cuda.current_stream().cuda_stream); an EchoStatus other than kOk becomes a Python exception.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "echo_ops.h"

namespace py = pybind11;

namespace {

template <typename T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

void raise_on_error(echo::EchoStatus status, const char* op) {
  switch (status) {
    case echo::kOk:
      return;
    case echo::kInvalidArgument:
      throw std::invalid_argument(std::string(op) + ": invalid argument (checked again in the native op)");
    case echo::kNotCompiled:
      throw std::runtime_error(std::string(op) + ": this build of echo._C has no CUDA kernels");
    case echo::kNotSupported:
      throw std::runtime_error(std::string(op) + ": this processor lacks the instructions the op needs");
    case echo::kCudaError:
      throw std::runtime_error(std::string(op) + ": CUDA error: " + echo::last_cuda_error());
  }
  throw std::runtime_error(std::string(op) + ": unknown status");
}

bool has_cuda() {
#ifdef ECHO_WITH_CUDA
  return true;
#else
  return false;
#endif
}

void log_mel(bool on_cuda, int n_fft, int hop, int n_mels, int64_t max_samples, const std::vector<int>& radices,
             uintptr_t window, uintptr_t twiddle, uintptr_t rtwiddle, uintptr_t mel_first_bin, uintptr_t mel_num_bins,
             uintptr_t mel_offset, uintptr_t mel_weights, uintptr_t wave, uintptr_t span_start, uintptr_t span_len,
             uintptr_t out_offset, uintptr_t work_offset, int64_t num_spans, int64_t total_work, int64_t out_stride,
             uintptr_t out, uintptr_t frame_max, int num_threads, uintptr_t stream) {
  if (radices.empty() || radices.size() > echo::mel::kMaxRadices) throw std::invalid_argument("log_mel: bad radices");
  echo::mel::MelParams p{};
  p.n_fft = n_fft;
  p.hop = hop;
  p.n_mels = n_mels;
  p.n_bins = n_fft / 2 + 1;
  p.max_samples = max_samples;
  p.max_frames = max_samples / hop;
  p.num_radices = static_cast<int>(radices.size());
  for (size_t i = 0; i < radices.size(); ++i) {
    if (radices[i] < 2 || radices[i] > echo::mel::kMaxRadix) throw std::invalid_argument("log_mel: bad radix");
    p.radices[i] = radices[i];
  }
  p.window = ptr<const float>(window);
  p.twiddle = ptr<const echo::mel::Cpx>(twiddle);
  p.rtwiddle = ptr<const echo::mel::Cpx>(rtwiddle);
  p.mel_first_bin = ptr<const int>(mel_first_bin);
  p.mel_num_bins = ptr<const int>(mel_num_bins);
  p.mel_offset = ptr<const int>(mel_offset);
  p.mel_weights = ptr<const float>(mel_weights);
  echo::MelLaunch l{ptr<const float>(wave),        ptr<const int64_t>(span_start), ptr<const int64_t>(span_len),
                    ptr<const int64_t>(out_offset), ptr<const int64_t>(work_offset), num_spans,
                    total_work,                     out_stride,                      ptr<float>(out),
                    ptr<float>(frame_max)};
  echo::EchoStatus status;
  {
    py::gil_scoped_release release;
    if (on_cuda) {
#ifdef ECHO_WITH_CUDA
      status = echo::log_mel_cuda(p, l, reinterpret_cast<void*>(stream));
#else
      status = echo::kNotCompiled;
#endif
    } else {
      status = echo::log_mel_cpu(p, l, num_threads);
    }
  }
  raise_on_error(status, "log_mel");
}

void gather_rows(bool on_cuda, uintptr_t segments, uintptr_t row_offset, int64_t num_segments, int64_t total_rows,
                 int64_t row_bytes, uintptr_t out, int64_t out_stride, int64_t unit, int num_threads,
                 uintptr_t stream) {
  echo::GatherLaunch g{ptr<const echo::gather::Segment>(segments), ptr<const int64_t>(row_offset), num_segments,
                       total_rows, row_bytes, ptr<char>(out), out_stride, unit};
  echo::EchoStatus status;
  {
    py::gil_scoped_release release;
    if (on_cuda) {
#ifdef ECHO_WITH_CUDA
      status = echo::gather_rows_cuda(g, reinterpret_cast<void*>(stream));
#else
      status = echo::kNotCompiled;
#endif
    } else {
      status = echo::gather_rows_cpu(g, num_threads);
    }
  }
  raise_on_error(status, "gather_rows");
}

// Positional arguments only: this runs for every linear of a decode step, where keyword parsing would show.
void linear(uintptr_t x, uintptr_t weight, uintptr_t bias, uintptr_t y, int64_t rows, int64_t in_features,
            int64_t out_features, int64_t x_stride, int64_t weight_stride, int64_t y_stride, int num_threads) {
  echo::LinearLaunch l{ptr<const float>(x), ptr<const float>(weight), ptr<const float>(bias), ptr<float>(y), rows,
                       in_features, out_features, x_stride, weight_stride, y_stride};
  echo::EchoStatus status;
  {
    py::gil_scoped_release release;
    status = echo::linear_cpu(l, num_threads);
  }
  raise_on_error(status, "linear");
}

void linear_bf16(uintptr_t x, uintptr_t weight, uintptr_t bias, uintptr_t y, int64_t rows, int64_t in_features,
                 int64_t out_features, int64_t x_stride, int64_t weight_stride, int64_t y_stride, int num_threads) {
  echo::LinearBf16Launch l{ptr<const uint16_t>(x), ptr<const uint16_t>(weight), ptr<const uint16_t>(bias),
                           ptr<uint16_t>(y), rows, in_features, out_features, x_stride, weight_stride, y_stride};
  echo::EchoStatus status;
  {
    py::gil_scoped_release release;
    status = echo::linear_bf16_cpu(l, num_threads);
  }
  raise_on_error(status, "linear_bf16");
}

template <typename T>
echo::DecodeAttentionArgs<T> attention_args(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out, uintptr_t q_row,
                                            uintptr_t key_offset, uintptr_t slots, int64_t num_seqs,
                                            int64_t num_heads, int64_t kv_heads, int64_t head_dim, int64_t q_stride,
                                            int64_t out_stride, int64_t kv_stride, float scale) {
  return {ptr<const T>(q),       ptr<const T>(k),     ptr<const T>(v),         ptr<T>(out),
          ptr<const int64_t>(q_row), ptr<const int64_t>(key_offset), ptr<const int64_t>(slots), num_seqs,
          num_heads,             kv_heads,            head_dim,                q_stride,
          out_stride,            kv_stride,           scale};
}

// Positional arguments only: this runs for every layer of a decode step. bf16: q, k, v and out hold bfloat16.
void decode_attention(uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t out, uintptr_t q_row, uintptr_t key_offset,
                      uintptr_t slots, int64_t num_seqs, int64_t num_heads, int64_t kv_heads, int64_t head_dim,
                      int64_t q_stride, int64_t out_stride, int64_t kv_stride, float scale, bool bf16,
                      int num_threads) {
  echo::EchoStatus status;
  {
    py::gil_scoped_release release;
    status = bf16 ? echo::decode_attention_bf16_cpu(
                        attention_args<uint16_t>(q, k, v, out, q_row, key_offset, slots, num_seqs, num_heads,
                                                 kv_heads, head_dim, q_stride, out_stride, kv_stride, scale),
                        num_threads)
                  : echo::decode_attention_cpu(
                        attention_args<float>(q, k, v, out, q_row, key_offset, slots, num_seqs, num_heads,
                                              kv_heads, head_dim, q_stride, out_stride, kv_stride, scale),
                        num_threads);
  }
  raise_on_error(status, "decode_attention");
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "echo native kernels (C++ CPU always; CUDA when built with a CUDA compiler)";
  m.def("has_cuda", &has_cuda, "True when this build contains the CUDA kernels");
  m.def("hardware_threads", [] { return static_cast<int>(std::thread::hardware_concurrency()); });
  m.def("log_mel", &log_mel, "Span log-mel (see csrc/echo_ops.h); pointers as integers", py::arg("on_cuda"),
        py::arg("n_fft"), py::arg("hop"), py::arg("n_mels"), py::arg("max_samples"), py::arg("radices"),
        py::arg("window"), py::arg("twiddle"), py::arg("rtwiddle"), py::arg("mel_first_bin"), py::arg("mel_num_bins"),
        py::arg("mel_offset"), py::arg("mel_weights"), py::arg("wave"), py::arg("span_start"), py::arg("span_len"),
        py::arg("out_offset"), py::arg("work_offset"), py::arg("num_spans"), py::arg("total_work"),
        py::arg("out_stride"), py::arg("out"), py::arg("frame_max"), py::arg("num_threads"), py::arg("stream"));
  m.def("gather_rows", &gather_rows, "Row gather of cached segments (see csrc/echo_ops.h)", py::arg("on_cuda"),
        py::arg("segments"), py::arg("row_offset"), py::arg("num_segments"), py::arg("total_rows"),
        py::arg("row_bytes"), py::arg("out"), py::arg("out_stride"), py::arg("unit"), py::arg("num_threads"),
        py::arg("stream"));
  m.def("linear", &linear, "Small-M float32 linear on the CPU (see csrc/echo_ops.h); pointers as integers");
  m.def("linear_bf16", &linear_bf16, "Small-M bfloat16 linear on the CPU (AVX-512-BF16); pointers as integers");
  m.def("decode_attention", &decode_attention,
        "Single-query float32/bf16 attention over the paged KV cache on the CPU (see csrc/echo_ops.h); pointers as "
        "integers");
  m.def("has_linear_bf16", &echo::linear_bf16_cpu_available, "True when this processor runs linear_bf16");
}
