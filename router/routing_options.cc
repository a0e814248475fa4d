#include "router/routing_options.h"

#include <cmath>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/layer_config.h"
#include "common/status_macros.h"

namespace moe::router {

const char* ModeName(Mode mode) {
  return mode == Mode::kTrain ? "train" : "eval";
}

const char* PolicyName(SecondExpertPolicy policy) {
  switch (policy) {
    case SecondExpertPolicy::kRandom:
      return "random";
    case SecondExpertPolicy::kAll:
      return "all";
    case SecondExpertPolicy::kNone:
      return "none";
    case SecondExpertPolicy::kThreshold:
      return "threshold";
  }
  return "unknown";
}

absl::StatusOr<Mode> ParseMode(absl::string_view name) {
  const std::string lower = absl::AsciiStrToLower(name);
  if (lower == "eval") return Mode::kEval;
  if (lower == "train") return Mode::kTrain;
  return absl::InvalidArgumentError(
      absl::StrCat("mode: \"", name, "\" is not one of eval, train"));
}

absl::StatusOr<SecondExpertPolicy> ParsePolicy(absl::string_view name) {
  const std::string lower = absl::AsciiStrToLower(name);
  for (SecondExpertPolicy p :
       {SecondExpertPolicy::kRandom, SecondExpertPolicy::kAll,
        SecondExpertPolicy::kNone, SecondExpertPolicy::kThreshold}) {
    if (lower == PolicyName(p)) return p;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "policy: \"", name, "\" is not one of random, all, none, threshold"));
}

absl::Status ValidateRoutingOptions(const RoutingOptions& o, int64_t batch,
                                    int64_t tokens) {
  if (o.threshold.has_value()) {
    MOE_RETURN_IF_ERROR(
        common::ValidateThreshold("options.threshold", *o.threshold));
  }
  if (o.capacity_factor.has_value()) {
    MOE_RETURN_IF_ERROR(common::ValidateCapacityFactor(
        "options.capacity_factor", *o.capacity_factor));
  }
  if (!o.second_choice_uniforms.has_value()) return absl::OkStatus();
  const common::HostTensor& u = *o.second_choice_uniforms;
  if (o.policy != SecondExpertPolicy::kRandom) {
    return absl::InvalidArgumentError(absl::StrCat(
        "options.second_choice_uniforms: given, but the policy is ",
        PolicyName(o.policy), "; they apply to the random policy only"));
  }
  const std::vector<int64_t> two_d = {batch, tokens};
  const std::vector<int64_t> three_d = {2, batch, tokens};
  if (u.shape != two_d && u.shape != three_d) {
    return absl::InvalidArgumentError(absl::StrCat(
        "options.second_choice_uniforms: shape ",
        common::ShapeToString(u.shape), " does not match the input; expected [",
        batch, ", ", tokens, "] or [2, ", batch, ", ", tokens, "]"));
  }
  if (u.dtype != common::DType::kFloat32 &&
      u.dtype != common::DType::kFloat16 &&
      u.dtype != common::DType::kBFloat16 &&
      u.dtype != common::DType::kFloat64) {
    return absl::InvalidArgumentError(
        "options.second_choice_uniforms: must be a floating-point tensor");
  }
  const int64_t n = batch * tokens * (u.shape.size() == 3 ? 2 : 1);
  if (static_cast<int64_t>(u.data.size()) !=
      n * static_cast<int64_t>(common::ElementSize(u.dtype))) {
    return absl::InvalidArgumentError(
        "options.second_choice_uniforms: data size does not match the shape");
  }
  std::vector<float> values(static_cast<size_t>(n));
  common::ConvertToFloat32(u.dtype, u.data.data(), n, values.data());
  for (float v : values) {
    if (!(v >= 0.0f && v <= 1.0f)) {
      return absl::InvalidArgumentError(
          "options.second_choice_uniforms: values must be finite and in "
          "[0, 1]");
    }
  }
  return absl::OkStatus();
}

std::vector<float> FirstLevelUniforms(const RoutingOptions& o) {
  const common::HostTensor& u = *o.second_choice_uniforms;
  int64_t n = 1;
  for (int64_t d : u.shape) n *= d;
  std::vector<float> all(static_cast<size_t>(n));
  common::ConvertToFloat32(u.dtype, u.data.data(), n, all.data());
  if (u.shape.size() == 3) {
    // Row 1 of [2, B, n]; row 0 (the first choice) is never used.
    all.erase(all.begin(), all.begin() + n / 2);
  }
  return all;
}

}  // namespace moe::router
