#include "common/float_bits.h"

#include <cstring>

namespace moe::common {
uint32_t Float32Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}

float Float32FromBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

float BFloat16ToFloat(uint16_t bits) {
  return Float32FromBits(static_cast<uint32_t>(bits) << 16);
}

uint16_t FloatToBFloat16(float value) {
  const uint32_t u = Float32Bits(value);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;  // NaN
  const uint32_t rounding = ((u >> 16) & 1u) + 0x7fffu;
  return static_cast<uint16_t>((u + rounding) >> 16);
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1f) {  // Inf or NaN
    return Float32FromBits(sign | 0x7f800000u | (mantissa << 13));
  }
  if (exponent == 0) {
    if (mantissa == 0) return Float32FromBits(sign);
    // Subnormal: normalise.
    int e = -1;
    do {
      ++e;
      mantissa <<= 1;
    } while ((mantissa & 0x400u) == 0);
    mantissa &= 0x3ffu;
    return Float32FromBits(sign | static_cast<uint32_t>(127 - 15 - e) << 23 |
                           mantissa << 13);
  }
  return Float32FromBits(sign | (exponent + 127 - 15) << 23 | mantissa << 13);
}

uint16_t FloatToHalf(float value) {
  const uint32_t u = Float32Bits(value);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // overflows to Inf
  if (abs < 0x38800000u) {
    // Subnormal or zero in half precision: scale so that the half's
    // smallest subnormal (2^-24) is one unit, then round to nearest even.
    if (abs < 0x33000000u) return sign;  // below half the smallest: 0
    const uint32_t exponent = abs >> 23;
    const uint32_t mantissa = (abs & 0x7fffffu) | 0x800000u;
    const int shift = 126 - static_cast<int>(exponent);  // 14..24
    const uint32_t kept = mantissa >> shift;
    const uint32_t rest = mantissa & ((1u << shift) - 1);
    const uint32_t half = 1u << (shift - 1);
    const uint32_t rounded =
        kept + ((rest > half || (rest == half && (kept & 1u))) ? 1u : 0u);
    return sign | static_cast<uint16_t>(rounded);
  }
  // Normal: rebias the exponent, round the mantissa to 10 bits.
  const uint32_t rebased = abs - ((127u - 15u) << 23);
  const uint32_t rounding = ((rebased >> 13) & 1u) + 0xfffu;
  return sign | static_cast<uint16_t>((rebased + rounding) >> 13);
}

}  // namespace moe::common
