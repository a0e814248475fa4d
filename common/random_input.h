// Seeded test inputs that need no LibTorch: the same seed gives the same
// values on every machine (std::mt19937_64, whose output the C++ standard
// fixes, through a Box-Muller transform written here).
#pragma once

#include <cstdint>
#include <vector>

#include "common/host_tensor.h"

namespace moe::common {

// `n` standard-normal float32 values.
std::vector<float> StandardNormal(int64_t n, uint64_t seed);

// A float32 tensor of `shape` filled with StandardNormal(numel, seed).
// REQUIRES: every dimension >= 0.
HostTensor RandomNormalTensor(const std::vector<int64_t>& shape, uint64_t seed);

}  // namespace moe::common
