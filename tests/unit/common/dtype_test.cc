#include "common/dtype.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

namespace moe::common {
namespace {

// Every value class: zeros, subnormals of both formats, normals, the edges
// of the half range, ties, infinities.
std::vector<float> Samples() {
  std::vector<float> v = {0.0f,
                          -0.0f,
                          1.0f,
                          -2.5f,
                          65504.0f,
                          65519.0f,
                          65520.0f,
                          1e-8f,
                          6e-8f,
                          3e-5f,
                          1e-40f,
                          3.3e-39f,
                          1.0009765625f,
                          1.00048828125f,
                          std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity(),
                          1e30f};
  at::Tensor r = at::randn({4000}) * 50;
  at::Tensor s = at::randn({4000}).mul_(1e-5);
  for (at::Tensor t : {r, s}) {
    for (int64_t i = 0; i < t.numel(); ++i) v.push_back(t[i].item<float>());
  }
  return v;
}

// Both conversions agree with LibTorch's bit for bit.
TEST(DTypeTest, HalfAndBFloat16MatchLibTorch) {
  const std::vector<float> values = Samples();
  at::Tensor f = at::from_blob(const_cast<float*>(values.data()),
                               {static_cast<int64_t>(values.size())});
  at::Tensor half = f.to(at::kHalf).contiguous();
  at::Tensor bf16 = f.to(at::kBFloat16).contiguous();
  const auto* h = static_cast<const uint16_t*>(half.data_ptr());
  const auto* b = static_cast<const uint16_t*>(bf16.data_ptr());
  for (size_t i = 0; i < values.size(); ++i) {
    EXPECT_EQ(FloatToHalf(values[i]), h[i]) << values[i];
    EXPECT_EQ(FloatToBFloat16(values[i]), b[i]) << values[i];
    const float back = half.to(at::kFloat)[i].item<float>();
    EXPECT_EQ(HalfToFloat(h[i]), back) << values[i];
    EXPECT_EQ(BFloat16ToFloat(b[i]), bf16.to(at::kFloat)[i].item<float>());
  }
  EXPECT_TRUE(std::isnan(HalfToFloat(FloatToHalf(std::nanf("")))));
  EXPECT_TRUE(std::isnan(BFloat16ToFloat(FloatToBFloat16(std::nanf("")))));
}

TEST(DTypeTest, BufferConversionsRoundTrip) {
  const std::vector<float> values = {1.0f, -3.0f, 0.5f, 1024.0f};
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    std::vector<char> bytes(values.size() * ElementSize(dtype));
    ConvertFromFloat32(values.data(), 4, dtype, bytes.data());
    std::vector<float> back(4);
    ConvertToFloat32(dtype, bytes.data(), 4, back.data());
    EXPECT_EQ(back, values) << SafetensorsDTypeName(dtype);
  }
  const double d[] = {0.25, -8.0};
  float out[2];
  ConvertToFloat32(DType::kFloat64, d, 2, out);
  EXPECT_EQ(out[0], 0.25f);
  EXPECT_EQ(out[1], -8.0f);
}

// Zero elements with the null pointers of empty buffers: nothing happens
// (memcpy must not see them; UBSan checks it in the sanitizer build, and the
// oip_json fuzzer found it through an empty JSON tensor).
TEST(DTypeTest, ConvertingNothingTouchesNothing) {
  for (DType dtype :
       {DType::kFloat32, DType::kBFloat16, DType::kFloat16, DType::kFloat64}) {
    ConvertToFloat32(dtype, nullptr, 0, nullptr);
  }
  for (DType dtype : {DType::kFloat32, DType::kBFloat16, DType::kFloat16}) {
    ConvertFromFloat32(nullptr, 0, dtype, nullptr);
  }
}

}  // namespace
}  // namespace moe::common
