// Branch-free exp for float and double, written so that `#pragma omp simd` loops vectorise it
// (no libm call, no -ffast-math needed).
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

// Flush-to-zero and denormals-are-zero for this thread while in scope (restored after). At small
// eps the scaling iterations multiply entries of K near the underflow threshold; on x86 every
// operation with a subnormal operand takes a slow microcode path (float32 solves ran ~5x slower).
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
