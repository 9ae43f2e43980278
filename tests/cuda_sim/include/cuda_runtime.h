// cuda_sim: the CUDA runtime API that the C ABI and the bindings use, for running the kernels of
// csrc/**/cuda/*.cu on the CPU in tests (see tests/cuda_sim/README.md). Host memory stands in
// for device memory; streams are ignored (every launch completes before it returns).
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
using uint3 = dim3;

typedef struct CUstream_st* cudaStream_t;
enum cudaError {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};
typedef enum cudaError cudaError_t;
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

namespace gfsim {
constexpr int kDefaultDynamicSmem = 48 * 1024;   // without the opt-in attribute
constexpr int kMaxDynamicSmem = 227 * 1024;      // the opt-in limit of an H100 (sm_90)
inline thread_local cudaError_t last_error = cudaSuccess;
inline thread_local std::string last_message;
inline std::map<const void*, int>& smem_optin() {
  static std::map<const void*, int> limits;
  return limits;
}
inline void fail(cudaError_t e, const std::string& why) {
  if (last_error == cudaSuccess) {
    last_error = e;
    last_message = why;
  }
}
}  // namespace gfsim

inline cudaError_t cudaGetLastError() {
  const cudaError_t e = gfsim::last_error;
  gfsim::last_error = cudaSuccess;
  return e;
}
inline cudaError_t cudaPeekAtLastError() { return gfsim::last_error; }

inline const char* cudaGetErrorString(cudaError_t e) {
  static thread_local std::string text;
  text = e == cudaSuccess ? "no error" : "cuda_sim error " + std::to_string(int(e)) + ": " + gfsim::last_message;
  return text.c_str();
}

template <typename F> cudaError_t cudaFuncSetAttribute(F* func, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 || value > gfsim::kMaxDynamicSmem) {
    gfsim::fail(cudaErrorInvalidValue, "cudaFuncSetAttribute: " + std::to_string(value) + " bytes");
    return cudaErrorInvalidValue;
  }
  gfsim::smem_optin()[reinterpret_cast<const void*>(func)] = value;
  return cudaSuccess;
}

enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };
namespace gfsim {
constexpr int kMultiProcessors = 4;  // small grids: the sim runs every block in turn
}
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int /*device*/) {
  if (attr != cudaDevAttrMultiProcessorCount) return cudaErrorInvalidValue;
  *value = gfsim::kMultiProcessors;
  return cudaSuccess;
}
