// cuda_sim: __half (IEEE binary16) with its conversions to and from float (round to nearest even).
#pragma once
#include <cstdint>
#include <cstring>

struct __half {
  uint16_t x;
};

inline float __half2float(__half h) {
  const uint32_t sign = uint32_t(h.x & 0x8000u) << 16, exp = (h.x >> 10) & 0x1fu, man = h.x & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;
  } else {  // subnormal half: normalise
    int e = -1;
    uint32_t mm = man;
    do {
      ++e;
      mm <<= 1;
    } while (!(mm & 0x400u));
    bits = sign | ((112u - e) << 23) | ((mm & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline __half __float2half(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  const uint16_t sign = uint16_t((b >> 16) & 0x8000u);
  const uint32_t abs = b & 0x7fffffffu;
  __half h;
  if (abs >= 0x7f800000u) {  // inf or NaN
    h.x = uint16_t(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u));
  } else if (abs >= 0x477ff000u) {  // rounds past 65504
    h.x = uint16_t(sign | 0x7c00u);
  } else if (abs < 0x33000001u) {  // below half the smallest subnormal
    h.x = sign;
  } else {
    const int e = int(abs >> 23) - 127;
    uint32_t man = (abs & 0x7fffffu) | 0x800000u;
    int shift = e >= -14 ? 13 : 13 + (-14 - e);
    uint32_t r = man >> shift, rem = man & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    const uint32_t out = e >= -14 ? ((uint32_t(e + 15) << 10) + (r - 0x400u)) : r;
    h.x = uint16_t(sign | out);  // a mantissa carry moves into the exponent, as it should
  }
  return h;
}

inline __half __ushort_as_half(unsigned short u) { return __half{u}; }
