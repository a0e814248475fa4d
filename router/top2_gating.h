// Top-2 gating with capacity, exactly as docs/numerics.md §3-5 define it:
// top-2 selection (ties to the lowest expert index), normalisation
// ĝk = gk / (g1 + g2 + 1e-9) in float32, the second-expert policy, per-group
// capacity, positions (first choices claim slots before second choices, in
// sequence order; dropped choices still advance the counters), keep/drop.
// Gates are not renormalised after dropping.
//
// With `importance` (the inner level of a two-level MoE, docs/numerics.md
// §11.4), the first choice is requested only where importance == 1 and the
// second only where importance > 0; where the first is not requested, the
// "second" choice is the top expert.
//
// Pure C++: no LibTorch, no allocation beyond the result.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "router/routing_options.h"

namespace moe::router {

inline constexpr float kGateEps = 1e-9f;

struct GateParams {
  int64_t num_experts = 0;
  SecondExpertPolicy policy = SecondExpertPolicy::kRandom;
  float threshold = 0.2f;
  double capacity_factor = 2.0;
};

// Counts over one routing level.
struct RoutingCounts {
  int64_t tokens = 0;  // Tokens (slots) with at least one choice allowed.
  int64_t requested[2] = {0, 0};
  int64_t kept[2] = {0, 0};
  int64_t dropped[2] = {0, 0};  // Requested, but past capacity.
  // Second choices allowed but not requested by the policy (not drops).
  int64_t second_skipped = 0;
  // Tokens that requested at least one choice and kept none: their MoE output
  // is zero (a block's residual still carries them).
  int64_t dropped_tokens = 0;
  // [choice][expert]
  std::vector<int64_t> kept_by_expert[2];
  std::vector<int64_t> dropped_by_expert[2];
};

// Routing of `groups` groups of `group_size` tokens each. Per-choice arrays
// are indexed by Index(g, t, k) = (g * group_size + t) * 2 + k.
struct RoutingResult {
  int64_t groups = 0;
  int64_t group_size = 0;
  int64_t num_experts = 0;
  int64_t capacity = 0;
  std::vector<int32_t> expert;    // i_k
  std::vector<float> gate;        // ĝ_k (before policy and capacity)
  std::vector<int32_t> position;  // pos_k; 0 where not requested
  std::vector<uint8_t> requested;
  std::vector<uint8_t> kept;
  // K[g, e]: first choices expert e kept in group g. [groups * num_experts]
  std::vector<int32_t> first_kept_count;
  RoutingCounts counts;

  int64_t Index(int64_t g, int64_t t, int k) const {
    return (g * group_size + t) * 2 + k;
  }
  // G_k: the combine weight, ĝ_k if requested and kept, else 0.
  float CombineWeight(int64_t i) const { return kept[i] ? gate[i] : 0.0f; }
};

// probs: [groups * group_size * num_experts] softmax outputs, row-major.
// importance: empty, or [groups * group_size] values in {0, 0.5, 1}.
// uniforms: [groups * group_size] draws in [0, 1); required for kRandom,
// ignored otherwise.
// InvalidArgument for inconsistent sizes, fewer than 2 experts or a missing
// uniforms array.
absl::StatusOr<RoutingResult> RouteTop2(absl::Span<const float> probs,
                                        int64_t groups, int64_t group_size,
                                        const GateParams& params,
                                        absl::Span<const float> importance,
                                        absl::Span<const float> uniforms);

}  // namespace moe::router
