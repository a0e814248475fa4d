// Per-request routing options and their one validation, used alike by the
// in-process engine and the router service (whose proto codec is
// router/api/options_codec.h).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/host_tensor.h"

namespace moe::router {

enum class Mode {
  kEval,   // threshold_eval, capacity_factor_eval
  kTrain,  // threshold_train, capacity_factor_train
};

// Which second choices are requested (docs/numerics.md, "Second-expert
// policy"). The first choice is always requested.
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
  // Seed for the random policy's draws: the first-level draws equal
  // `torch.manual_seed(seed); torch.rand(B, n)`. Without a seed (and without
  // explicit uniforms) each forward draws from a fresh random seed.
  std::optional<uint64_t> seed;
  // Explicit first-level uniforms for exact replay: a float tensor [B, n],
  // or [2, B, n] of which row 1 is used (as golden case D stores them).
  std::optional<common::HostTensor> second_choice_uniforms;
};

// The one check of routing options, for an input of `batch` x `tokens`:
// threshold and capacity factor within common::ValidateThreshold /
// ValidateCapacityFactor's bounds; uniforms only with the random policy, of
// a float dtype, of shape [batch, tokens] or [2, batch, tokens], finite and
// in [0, 1]. InvalidArgument naming the option.
absl::Status ValidateRoutingOptions(const RoutingOptions& options,
                                    int64_t batch, int64_t tokens);

// The first-level uniforms of validated options as [batch * tokens] floats
// (row 1 of a [2, B, n] tensor).
// REQUIRES: options.second_choice_uniforms and ValidateRoutingOptions().
std::vector<float> FirstLevelUniforms(const RoutingOptions& options);

}  // namespace moe::router
