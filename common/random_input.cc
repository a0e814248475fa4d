#include "common/random_input.h"

#include <cmath>
#include <cstring>
#include <random>

namespace moe::common {

std::vector<float> StandardNormal(int64_t n, uint64_t seed) {
  std::mt19937_64 gen(seed);
  // 53 random bits -> a double in (0, 1].
  auto uniform = [&gen] {
    return (static_cast<double>(gen() >> 11) + 1.0) *
           (1.0 / 9007199254740992.0);
  };
  std::vector<float> out(static_cast<size_t>(n));
  constexpr double kTwoPi = 6.283185307179586;
  for (int64_t i = 0; i < n; i += 2) {
    const double r = std::sqrt(-2.0 * std::log(uniform()));
    const double theta = kTwoPi * uniform();
    out[i] = static_cast<float>(r * std::cos(theta));
    if (i + 1 < n) out[i + 1] = static_cast<float>(r * std::sin(theta));
  }
  return out;
}

HostTensor RandomNormalTensor(const std::vector<int64_t>& shape,
                              uint64_t seed) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  const std::vector<float> values = StandardNormal(n, seed);
  HostTensor t;
  t.dtype = DType::kFloat32;
  t.shape = shape;
  t.data.assign(reinterpret_cast<const char*>(values.data()),
                values.size() * sizeof(float));
  return t;
}

}  // namespace moe::common
