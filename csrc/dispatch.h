// Error codes and the host/device qualifier macro shared by every native op. Kernels never throw: launchers
// return an EchoStatus that bindings.cpp turns into a Python exception with the CUDA error string.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define ECHO_HD __host__ __device__ __forceinline__
#else
#define ECHO_HD inline
#endif

namespace echo {

enum EchoStatus : int {
  kOk = 0,
  kInvalidArgument = 1,
  kCudaError = 2,       // detail in last_cuda_error()
  kNotCompiled = 3,     // the CUDA path was asked for but this build has none
  kNotSupported = 4,    // this processor lacks the instructions the op needs
};

}  // namespace echo
