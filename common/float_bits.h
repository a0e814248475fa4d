// float32 <-> IEEE binary16 and bfloat16 bit patterns, in plain C++ (no
// abseil), so that the GPU backend's host side and moe-gpu-check share
// them with the rest of the project.
#pragma once

#include <cstdint>

namespace moe::common {

// A float32's bit pattern, and back.
uint32_t Float32Bits(float f);
float Float32FromBits(uint32_t u);

// IEEE binary16 and bfloat16 bit patterns <-> float32. FromFloat rounds to
// the nearest value, ties to even; NaN stays NaN, values beyond the range
// become infinities.
float HalfToFloat(uint16_t bits);
uint16_t FloatToHalf(float value);
float BFloat16ToFloat(uint16_t bits);
uint16_t FloatToBFloat16(float value);

}  // namespace moe::common
