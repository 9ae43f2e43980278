// Device helpers shared by the CUDA entropic-OT kernels (sinkhorn_kernels.cu, sinkhorn_features.cu,
// sinkhorn_fused.cu): -inf, exp / log by precision (and base-2 forms, exp2 one hardware instruction),
// conversions of a cost entry to the compute type, and the online log-sum-exp step and merge of
// (max, sum) pairs.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math_constants.h>

namespace gfot {

template <typename T> __device__ __forceinline__ T neg_inf();
template <> __device__ __forceinline__ float neg_inf<float>() { return -CUDART_INF_F; }
template <> __device__ __forceinline__ double neg_inf<double>() { return -CUDART_INF; }

template <typename T> __device__ __forceinline__ T cvt(float v) { return T(v); }
template <typename T> __device__ __forceinline__ T cvt(double v) { return T(v); }
template <typename T> __device__ __forceinline__ T cvt(__half v) { return T(__half2float(v)); }
template <typename T> __device__ __forceinline__ T cvt(__nv_bfloat16 v) { return T(__bfloat162float(v)); }
template <typename T, typename TC> __device__ __forceinline__ T load_as(const TC* p) { return cvt<T>(*p); }

__device__ __forceinline__ float gexp(float x) { return expf(x); }
__device__ __forceinline__ double gexp(double x) { return exp(x); }
__device__ __forceinline__ float glog(float x) { return logf(x); }
__device__ __forceinline__ double glog(double x) { return log(x); }

// Base 2: exp(x) = 2^(x log2 e), log(x) = ln 2 log2(x).
constexpr double kLog2e = 1.4426950408889634, kLn2 = 0.6931471805599453;
// ex2.approx.ftz: one MUFU.EX2 (expf / exp2f add a multiply and a denormal-range fix-up: four
// instructions more); relative error ~2^-22; results below 2^-126 flush to 0.
__device__ __forceinline__ float gexp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ double gexp2(double x) { return exp2(x); }
__device__ __forceinline__ float glog2(float x) { return log2f(x); }
__device__ __forceinline__ double glog2(double x) { return log2(x); }

// (mx, s) <- the running (max, sum of exp(. - max)) with z added.
template <typename T> __device__ __forceinline__ void online(T& mx, T& s, T z) {
  if (z > mx) {
    s = s * gexp(mx - z) + T(1);
    mx = z;
  } else if (z != neg_inf<T>()) {
    s += gexp(z - mx);
  }
}
// (mx, s) <- the running (max, sum) with U terms z added: one rescale for the U (they come from
// independent loads, issued together by the streaming kernels so that U are in flight a thread).
template <typename T, int U> __device__ __forceinline__ void online_block(T& mx, T& s, const T (&z)[U]) {
  T bm = z[0];
#pragma unroll
  for (int u = 1; u < U; ++u) bm = max(bm, z[u]);
  if (bm == neg_inf<T>()) return;
  if (bm > mx) {
    s = mx == neg_inf<T>() ? T(0) : s * gexp(mx - bm);
    mx = bm;
  }
#pragma unroll
  for (int u = 0; u < U; ++u) s += gexp(z[u] - mx);  // exp(-inf) = 0
}
// (mx, s) <- the merge of two running (max, sum) pairs.
template <typename T> __device__ __forceinline__ void merge(T& mx, T& s, T mx2, T s2) {
  const T nm = max(mx, mx2);
  if (nm == neg_inf<T>()) return;
  s = (mx == neg_inf<T>() ? T(0) : s * gexp(mx - nm)) + (mx2 == neg_inf<T>() ? T(0) : s2 * gexp(mx2 - nm));
  mx = nm;
}

}  // namespace gfot
