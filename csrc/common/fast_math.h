// Branch-free exp (float, double) and log (float), written so that `#pragma omp simd` loops
// vectorise them (no libm call, no -ffast-math needed).
//
// exp(x) = 2^k * exp(r),  k = round(x / ln2),  r = x - k ln2  (|r| <= ln2/2, ln2 split hi+lo).
// exp(r): float  -> Cephes degree-6 minimax polynomial (about 1 ulp);
//         double -> Cephes Pade form 1 + 2 r P(r^2) / (Q(r^2) - r P(r^2)) (about 1 ulp).
// Rounding uses the "magic shifter" trick (1.5 * 2^mantissa_bits): adding it leaves round(x/ln2)
// in the low mantissa bits, so 2^k is built with integer adds and shifts only.
// Inputs are clamped to the normal range: below it the result is a tiny positive number
// (~1e-38 / ~1e-308) instead of 0, harmless in the sums it is used for (every log-sum-exp here
// shifts by its maximum, so the largest term is 1). -inf is clamped the same way.
#pragma once
#include <cstdint>
#include <cstring>
#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#endif

namespace gf {

static inline float exp_fast(float x) {
  const float lo = -87.0f, hi = 88.0f;
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const float shifter = 12582912.0f;  // 1.5 * 2^23
  const float kf = x * 1.44269504088896341f + shifter;
  const float k = kf - shifter;
  float r = x - k * 0.693359375f;
  r = r - k * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t ki, si;
  std::memcpy(&ki, &kf, 4);
  std::memcpy(&si, &shifter, 4);
  const int32_t bits = (ki - si + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}

static inline double exp_fast(double x) {
  const double lo = -708.0, hi = 709.0;
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const double shifter = 6755399441055744.0;  // 1.5 * 2^52
  const double kf = x * 1.4426950408889634074 + shifter;
  const double k = kf - shifter;
  double r = x - k * 6.93145751953125e-1;
  r = r - k * 1.42860682030941723212e-6;
  const double rr = r * r;
  double p = 1.26177193074810590878e-4;
  p = p * rr + 3.02994407707441961300e-2;
  p = p * rr + 9.99999999999999999910e-1;
  p = p * r;
  double q = 3.00198505138664455042e-6;
  q = q * rr + 2.52448340349684104192e-3;
  q = q * rr + 2.27265548208155028766e-1;
  q = q * rr + 2.00000000000000000009e0;
  const double e = 1.0 + 2.0 * p / (q - p);
  int64_t ki, si;
  std::memcpy(&ki, &kf, 8);
  std::memcpy(&si, &shifter, 8);
  const int64_t bits = (ki - si + 1023) << 52;
  double scale;
  std::memcpy(&scale, &bits, 8);
  return e * scale;
}

// log(x) for normal x > 0 (about 1 ulp; Cephes logf): x = 2^e * f with f in [sqrt(1/2), sqrt(2)),
// log x = e ln2 + log1p(f - 1), log1p by a degree-9 minimax polynomial; ln2 split hi + lo.
// x = 0 (or a flushed subnormal) returns a finite -88.7 so that 0 * log_fast(0) is 0; x < 0,
// inf and NaN are not supported.
static inline float log_fast(float x) {
  int32_t i;
  std::memcpy(&i, &x, 4);
  int32_t e = ((i >> 23) & 0xff) - 127;
  const int32_t mi = (i & 0x007fffff) | 0x3f800000;  // mantissa in [1, 2)
  float f;
  std::memcpy(&f, &mi, 4);
  const bool big = f > 1.41421356237f;
  f = big ? 0.5f * f : f;
  e = big ? e + 1 : e;
  const float ef = float(e);
  f = f - 1.0f;
  const float z = f * f;
  float y = 7.0376836292e-2f;
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z;
  y = y + ef * -2.12194440e-4f;
  y = y - 0.5f * z;
  return (f + y) + ef * 0.693359375f;
}

// Flush-to-zero and denormals-are-zero for this thread while in scope (restored after). At small
// eps the scaling iterations multiply entries of K near the underflow threshold; on x86 every
// operation with a subnormal operand takes a slow microcode path (float32 solves ran several times
// slower: docs/PERFORMANCE.md, "Scaling domain against log domain").
// Values below 1e-38 (float32) / 1e-308 (float64) of the plan's scale carry no information.
class FlushDenormals {
 public:
#if defined(__SSE__) || defined(__x86_64__)
  FlushDenormals() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040); }  // FTZ | DAZ
  ~FlushDenormals() { _mm_setcsr(saved_); }

 private:
  unsigned saved_;
#else
  FlushDenormals() = default;
#endif
};

}  // namespace gf
