// cuda_sim: __nv_bfloat16 with its conversions to and from float (round to nearest even).
#pragma once
#include <cstdint>
#include <cstring>

struct __nv_bfloat16 {
  uint16_t x;
};

inline float __bfloat162float(__nv_bfloat16 h) {
  const uint32_t bits = uint32_t(h.x) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

inline __nv_bfloat16 __float2bfloat16(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  __nv_bfloat16 h;
  if ((b & 0x7fffffffu) > 0x7f800000u) {
    h.x = uint16_t((b >> 16) | 0x40u);  // quiet NaN
  } else {
    h.x = uint16_t((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
  }
  return h;
}

inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return __nv_bfloat16{u}; }
