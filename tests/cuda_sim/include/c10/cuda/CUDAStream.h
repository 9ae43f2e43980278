// cuda_sim: the current stream of the bindings (launches complete before they return).
#pragma once
#include <cuda_runtime.h>
namespace c10 {
namespace cuda {
struct CUDAStream {
  cudaStream_t stream() const { return nullptr; }
};
inline CUDAStream getCurrentCUDAStream() { return {}; }
}  // namespace cuda
}  // namespace c10
