// Span log-mel arithmetic, written once as host+device inline functions. The CPU launcher (mel_cpu.cpp) and the
// CUDA launcher (mel_cuda.cu) are only loops / grids around these, so CPU tests cover the arithmetic the GPU runs.
//
// One "span" is a run of samples treated as its own clip, exactly as WhisperFeatureExtractor treats a clip: the
// span (truncated to max_samples) is zero-padded to max_samples and reflect-padded by n_fft/2 at both ends, then
// framed every hop samples. Frame t covers virtual indices [t*hop - n_fft/2, t*hop + n_fft/2). The real FFT of
// size n_fft runs as a complex FFT of size n_fft/2 (even/odd packing) with a mixed-radix Stockham loop whose
// twiddles come precomputed from the caller.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "dispatch.h"

namespace echo {
namespace mel {

constexpr int kMaxRadices = 16;
constexpr int kMaxRadix = 16;    // larger prime factors are rejected by the plan builder
constexpr int kMaxFft = 512;     // n_fft upper bound (per-thread scratch sizes); Whisper-family configs use 400
constexpr int kMaxMels = 256;

struct Cpx {
  float re, im;
};

// Everything a frame computation needs; pointers live on the same device as the launcher that uses them.
struct MelParams {
  int n_fft;            // even
  int hop;
  int n_mels;
  int n_bins;           // n_fft / 2 + 1
  int64_t max_samples;  // the extractor's pad/truncate length (chunk_length * sampling_rate)
  int64_t max_frames;   // max_samples / hop: frames the extractor keeps
  int num_radices;
  int radices[kMaxRadices];  // factorisation of m = n_fft / 2, applied in this order
  const float* window;       // [n_fft] periodic Hann
  const Cpx* twiddle;        // [m]  exp(-2*pi*i*k/m)
  const Cpx* rtwiddle;       // [m]  exp(-2*pi*i*k/n_fft), for the real-FFT post-processing
  const int* mel_first_bin;  // [n_mels] first non-zero bin of each filter
  const int* mel_num_bins;   // [n_mels] non-zero bins of each filter
  const int* mel_offset;     // [n_mels] offset of each filter's weights in mel_weights
  const float* mel_weights;  // packed non-zero filter weights
};

// Sample i of the span's virtual padded signal (see the file comment). `len` is already min(span, max_samples).
ECHO_HD float virtual_sample(const float* x, int64_t len, int64_t max_samples, int64_t i) {
  if (i < 0) i = -i;
  if (i >= max_samples) i = 2 * (max_samples - 1) - i;
  return i < len ? x[i] : 0.0f;
}

// The frame arithmetic below is written once over a lane type V: the CUDA kernel uses V = float (one frame per
// thread); the CPU launcher uses an 8-wide vector-extension type, so one call computes 8 frames in SIMD. Lanes<V>
// supplies the few operations that differ between the two (bit casts, compare masks, conversions).
template <typename V>
struct Lanes;

template <>
struct Lanes<float> {
  using Int = int32_t;
  static constexpr int kCount = 1;
  ECHO_HD static Int as_int(float x) { Int i; memcpy(&i, &x, sizeof(i)); return i; }
  ECHO_HD static float as_float(Int i) { float x; memcpy(&x, &i, sizeof(x)); return x; }
  ECHO_HD static Int less_mask(float a, float b) { return a < b ? -1 : 0; }  // all ones where a < b
  ECHO_HD static float to_float(Int i) { return static_cast<float>(i); }
  ECHO_HD static float max(float a, float b) { return a > b ? a : b; }
};

// log10 for x > 0, branch-free: x = 2^e * mant with mant in [sqrt(1/2), sqrt(2)), then ln(mant) = t - t^2/2 +
// t^3 P(t), t = mant - 1, with the classic single-precision minimax polynomial (relative error about 1e-7, far
// inside the 1e-4 feature budget). libm's log10f is neither vectorisable nor identical on host and device.
template <typename V>
ECHO_HD V log10_pos(V x) {
  using T = Lanes<V>;
  using I = typename T::Int;
  const I bits = T::as_int(x);
  I e = (bits >> 23) - 126;
  V mant = T::as_float((bits & 0x007fffff) | 0x3f000000);  // in [0.5, 1)
  const I small = T::less_mask(mant, 0.70710678f);
  e = e + small;                                                 // mask is -1 where mant is moved to [1, 1.41)
  const V t = mant + T::as_float(T::as_int(mant) & small) - 1.0f;  // 2*mant - 1 where small, else mant - 1
  const V z = t * t;
  V y = t * 7.0376836292e-2f - 1.1514610310e-1f;
  y = y * t + 1.1676998740e-1f;
  y = y * t - 1.2420140846e-1f;
  y = y * t + 1.4249322787e-1f;
  y = y * t - 1.6668057665e-1f;
  y = y * t + 2.0000714765e-1f;
  y = y * t - 2.4999993993e-1f;
  y = y * t + 3.3333331174e-1f;
  y = y * t * z - 0.5f * z;
  return (t + y + T::to_float(e) * 0.69314718056f) * 0.43429448190f;  // ln(x) / ln(10)
}

// Windowed frames t0 .. t0+lanes-1 of a span, packed for the half-size complex FFT: z[k] = (x[2k], x[2k+1]) * w.
template <typename V>
ECHO_HD void load_frames(const float* x, int64_t len, int64_t t0, const MelParams& p, V* zr, V* zi) {
  constexpr int L = Lanes<V>::kCount;
  const int m = p.n_fft / 2;
  float* fr = reinterpret_cast<float*>(zr);
  float* fi = reinterpret_cast<float*>(zi);
  for (int l = 0; l < L; ++l) {
    const int64_t begin = (t0 + l) * p.hop - p.n_fft / 2;
    if (begin >= 0 && begin + p.n_fft <= len) {  // interior frame: no padding logic
      const float* f = x + begin;
      for (int k = 0; k < m; ++k) {
        fr[k * L + l] = f[2 * k] * p.window[2 * k];
        fi[k * L + l] = f[2 * k + 1] * p.window[2 * k + 1];
      }
    } else {
      for (int k = 0; k < m; ++k) {
        fr[k * L + l] = virtual_sample(x, len, p.max_samples, begin + 2 * k) * p.window[2 * k];
        fi[k * L + l] = virtual_sample(x, len, p.max_samples, begin + 2 * k + 1) * p.window[2 * k + 1];
      }
    }
  }
}

// Size-R DFT in place on (xr, xi): X[q] = sum_r x[r] exp(-2*pi*i*q*r/R). Radices 2, 4 and 5 (all that
// n_fft = 400 needs) are written out; fft() sends any other radix to stage_generic.
template <int R, typename V>
ECHO_HD void butterfly(V* xr, V* xi) {
  if constexpr (R == 2) {
    const V ar = xr[0], ai = xi[0];
    xr[0] = ar + xr[1]; xi[0] = ai + xi[1];
    xr[1] = ar - xr[1]; xi[1] = ai - xi[1];
  } else if constexpr (R == 4) {
    const V s02r = xr[0] + xr[2], s02i = xi[0] + xi[2], d02r = xr[0] - xr[2], d02i = xi[0] - xi[2];
    const V s13r = xr[1] + xr[3], s13i = xi[1] + xi[3], d13r = xr[1] - xr[3], d13i = xi[1] - xi[3];
    xr[0] = s02r + s13r; xi[0] = s02i + s13i;
    xr[1] = d02r + d13i; xi[1] = d02i - d13r;  // d02 - i*d13
    xr[2] = s02r - s13r; xi[2] = s02i - s13i;
    xr[3] = d02r - d13i; xi[3] = d02i + d13r;  // d02 + i*d13
  } else if constexpr (R == 5) {
    const float c1 = 0.30901699437f, c2 = -0.80901699437f, s1 = 0.95105651630f, s2 = 0.58778525229f;
    const V t1r = xr[1] + xr[4], t1i = xi[1] + xi[4], t2r = xr[2] + xr[3], t2i = xi[2] + xi[3];
    const V t3r = xr[1] - xr[4], t3i = xi[1] - xi[4], t4r = xr[2] - xr[3], t4i = xi[2] - xi[3];
    const V a1r = xr[0] + t1r * c1 + t2r * c2, a1i = xi[0] + t1i * c1 + t2i * c2;
    const V a2r = xr[0] + t1r * c2 + t2r * c1, a2i = xi[0] + t1i * c2 + t2i * c1;
    const V b1r = t3r * s1 + t4r * s2, b1i = t3i * s1 + t4i * s2;
    const V b2r = t3r * s2 - t4r * s1, b2i = t3i * s2 - t4i * s1;
    xr[0] = xr[0] + t1r + t2r; xi[0] = xi[0] + t1i + t2i;
    xr[1] = a1r + b1i; xi[1] = a1i - b1r;  // a1 - i*b1
    xr[2] = a2r + b2i; xi[2] = a2i - b2r;  // a2 - i*b2
    xr[3] = a2r - b2i; xi[3] = a2i + b2r;  // a2 + i*b2
    xr[4] = a1r - b1i; xi[4] = a1i + b1r;  // a1 + i*b1
  }
}

// One Stockham stage (decimation in time) with radix R after strides ns: reads a[j + r*m/R], applies twiddle
// exp(-2*pi*i*r*(j%ns)/(ns*R)), runs a size-R DFT, writes b[(j/ns)*ns*R + j%ns + q*ns]. Natural order out.
// j runs as (block, k) pairs, so there is no division per element, and the first stage (ns == 1, where every
// twiddle is 1) skips the complex multiplies.
template <int R, typename V>
ECHO_HD void stage(const V* sr, const V* si, V* dr, V* di, int ns, const MelParams& p) {
  const int m = p.n_fft / 2, stride = m / R, tw_step = m / (ns * R);
  for (int j0 = 0; j0 < stride; j0 += ns) {
    const int out0 = j0 * R;  // (j / ns) * ns * R
    for (int k = 0; k < ns; ++k) {
      const int j = j0 + k;
      V xr[R], xi[R];
      if (ns == 1) {
        for (int r = 0; r < R; ++r) {
          xr[r] = sr[j + r * stride];
          xi[r] = si[j + r * stride];
        }
      } else {
        xr[0] = sr[j];
        xi[0] = si[j];
        for (int r = 1; r < R; ++r) {
          const Cpx w = p.twiddle[r * k * tw_step];  // index < m
          const V a = sr[j + r * stride], b = si[j + r * stride];
          xr[r] = a * w.re - b * w.im;
          xi[r] = a * w.im + b * w.re;
        }
      }
      butterfly<R>(xr, xi);
      for (int q = 0; q < R; ++q) {
        dr[out0 + k + q * ns] = xr[q];
        di[out0 + k + q * ns] = xi[q];
      }
    }
  }
}

// The same stage for a radix without a written-out butterfly: a direct size-R DFT with table twiddles.
template <typename V>
ECHO_HD void stage_generic(const V* sr, const V* si, V* dr, V* di, int R, int ns, const MelParams& p) {
  const int m = p.n_fft / 2, stride = m / R, tw_step = m / (ns * R);
  for (int j = 0; j < stride; ++j) {
    const int k = j % ns;
    V xr[kMaxRadix], xi[kMaxRadix];
    for (int r = 0; r < R; ++r) {
      const Cpx w = p.twiddle[r * k * tw_step];
      const V a = sr[j + r * stride], b = si[j + r * stride];
      xr[r] = a * w.re - b * w.im;
      xi[r] = a * w.im + b * w.re;
    }
    const int out = (j / ns) * ns * R + k;
    for (int q = 0; q < R; ++q) {
      V accr = xr[0], acci = xi[0];
      for (int r = 1; r < R; ++r) {
        const Cpx w = p.twiddle[(q * r * stride) % m];  // exp(-2*pi*i*q*r/R)
        accr = accr + xr[r] * w.re - xi[r] * w.im;
        acci = acci + xr[r] * w.im + xi[r] * w.re;
      }
      dr[out + q * ns] = accr;
      di[out + q * ns] = acci;
    }
  }
}

// Complex FFT of size m = n_fft/2 on (ar, ai) using scratch (br, bi); the result lands back in (ar, ai).
template <typename V>
ECHO_HD void fft(V* ar, V* ai, V* br, V* bi, const MelParams& p) {
  const int m = p.n_fft / 2;
  V *sr = ar, *si = ai, *dr = br, *di = bi;
  int ns = 1;
  for (int s = 0; s < p.num_radices; ++s) {
    const int R = p.radices[s];
    if (R == 2) stage<2>(sr, si, dr, di, ns, p);
    else if (R == 4) stage<4>(sr, si, dr, di, ns, p);
    else if (R == 5) stage<5>(sr, si, dr, di, ns, p);
    else stage_generic(sr, si, dr, di, R, ns, p);
    V* t = sr; sr = dr; dr = t;
    t = si; si = di; di = t;
    ns *= R;
  }
  if (sr != ar) {
    for (int i = 0; i < m; ++i) {
      ar[i] = sr[i];
      ai[i] = si[i];
    }
  }
}

// Power |X[k]|^2, k in [0, m], of the real n_fft-point transform from the packed half-size one Z:
// E = (Z[k] + conj Z[m-k]) / 2, O = (Z[k] - conj Z[m-k]) / 2i, X[k] = E + exp(-2*pi*i*k/n_fft) O.
template <typename V>
ECHO_HD void split_power(const V* zr, const V* zi, const MelParams& p, V* power) {
  const int m = p.n_fft / 2;
  for (int k = 0; k <= m; ++k) {
    const int a = k == m ? 0 : k, b = k == 0 ? 0 : m - k;
    const Cpx w = k < m ? p.rtwiddle[k] : Cpx{-1.0f, 0.0f};
    const V ar = zr[a], ai = zi[a], br = zr[b], bi = -zi[b];  // b = conj(Z[m-k])
    const V er = (ar + br) * 0.5f, ei = (ai + bi) * 0.5f;
    const V or_ = (ai - bi) * 0.5f, oi = (br - ar) * 0.5f;
    const V xr = er + or_ * w.re - oi * w.im;
    const V xi = ei + oi * w.re + or_ * w.im;
    power[k] = xr * xr + xi * xi;
  }
}

// log10 of mel filter f's energy, floored at 1e-10 as the extractor does.
template <typename V>
ECHO_HD V mel_log10(const V* power, int f, const MelParams& p) {
  const V* pw = power + p.mel_first_bin[f];
  const float* w = p.mel_weights + p.mel_offset[f];
  V acc = pw[0] * 0.0f;
  for (int b = 0; b < p.mel_num_bins[f]; ++b) acc = acc + pw[b] * w[b];
  return log10_pos(Lanes<V>::max(acc, acc * 0.0f + 1e-10f));
}

// The extractor's final step on one value: clamp to (span max - 8), then (x + 4) / 4.
ECHO_HD float normalise(float v, float span_max) {
  const float floor_v = span_max - 8.0f;
  return ((v > floor_v ? v : floor_v) + 4.0f) * 0.25f;
}

}  // namespace mel
}  // namespace echo
