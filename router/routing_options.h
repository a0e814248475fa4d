// Per-request routing options (DESIGN.md section 4).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moe::router {

enum class Mode {
  kEval,   // threshold_eval, capacity_factor_eval
  kTrain,  // threshold_train, capacity_factor_train
};

// Which second choices are requested (SEMANTICS.md section 4). The first
// choice is always requested.
enum class SecondExpertPolicy {
  // Requested iff u < ĝ2 / max(threshold, 1e-9), u ~ U[0, 1) per token: the
  // reference's behaviour, in eval mode too.
  kRandom,
  kAll,        // Always requested.
  kNone,       // Never requested (top-1 routing with top-2 gates).
  kThreshold,  // Requested iff ĝ2 > threshold (deterministic).
};

const char* ModeName(Mode mode);
const char* PolicyName(SecondExpertPolicy policy);
absl::StatusOr<Mode> ParseMode(absl::string_view name);
absl::StatusOr<SecondExpertPolicy> ParsePolicy(absl::string_view name);

struct RoutingOptions {
  Mode mode = Mode::kEval;
  SecondExpertPolicy policy = SecondExpertPolicy::kRandom;
  // Overrides of the checkpoint's threshold / capacity factor for the mode.
  std::optional<float> threshold;
  std::optional<double> capacity_factor;
  // Seed for the RANDOM policy's draws: the first-level draws equal
  // `torch.manual_seed(seed); torch.rand(B, n)`. Without a seed (and without
  // explicit uniforms) each forward draws from a fresh random seed.
  std::optional<uint64_t> seed;
  // Explicit first-level uniforms for exact replay: float [B, n], or
  // [2, B, n] of which row 1 is used (as golden case D stores them).
  at::Tensor second_choice_uniforms;
};

}  // namespace moe::router
