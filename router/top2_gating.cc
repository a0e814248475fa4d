#include "router/top2_gating.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "router/capacity.h"

namespace moe::router {

namespace {

absl::Status CheckArguments(absl::Span<const float> probs, int64_t groups,
                            int64_t group_size, const GateParams& params,
                            absl::Span<const float> importance,
                            absl::Span<const float> uniforms) {
  const int64_t E = params.num_experts;
  if (E < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("top-2 routing needs at least 2 experts, got ", E));
  }
  if (groups < 1 || group_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("routing needs at least one group of one token, got ",
                     groups, " x ", group_size));
  }
  const int64_t tokens = groups * group_size;
  if (static_cast<int64_t>(probs.size()) != tokens * E) {
    return absl::InvalidArgumentError(absl::StrCat(
        "probs has ", probs.size(), " values, expected ", tokens * E));
  }
  if (!importance.empty() &&
      static_cast<int64_t>(importance.size()) != tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "importance has ", importance.size(), " values, expected ", tokens));
  }
  if (params.policy == SecondExpertPolicy::kRandom &&
      static_cast<int64_t>(uniforms.size()) != tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("the random policy needs ", tokens, " uniform draws, got ",
                     uniforms.size()));
  }
  return absl::OkStatus();
}

// The result's arrays, sized and zeroed.
RoutingResult EmptyResult(int64_t groups, int64_t group_size,
                          const GateParams& params) {
  const int64_t E = params.num_experts;
  const int64_t tokens = groups * group_size;
  RoutingResult r;
  r.groups = groups;
  r.group_size = group_size;
  r.num_experts = E;
  r.capacity = ExpertCapacity(group_size, params.capacity_factor, E);
  r.expert.assign(tokens * 2, 0);
  r.gate.assign(tokens * 2, 0.0f);
  r.position.assign(tokens * 2, 0);
  r.requested.assign(tokens * 2, 0);
  r.kept.assign(tokens * 2, 0);
  r.first_kept_count.assign(groups * E, 0);
  for (int k = 0; k < 2; ++k) {
    r.counts.kept_by_expert[k].assign(E, 0);
    r.counts.dropped_by_expert[k].assign(E, 0);
  }
  return r;
}

// Whether the policy requests the second choice of normalised gate `n2`
// (`uniform`: the token's draw, for kRandom).
bool SecondRequested(const GateParams& params, float n2, float uniform) {
  switch (params.policy) {
    case SecondExpertPolicy::kRandom:
      return uniform < n2 / std::max(params.threshold, kGateEps);
    case SecondExpertPolicy::kAll:
      return true;
    case SecondExpertPolicy::kNone:
      return false;
    case SecondExpertPolicy::kThreshold:
      return n2 > params.threshold;
  }
  return false;
}

// Top-2, normalisation and policy, token by token.
void ChooseTop2(absl::Span<const float> probs, const GateParams& params,
                absl::Span<const float> importance,
                absl::Span<const float> uniforms, RoutingResult& r) {
  const int64_t E = params.num_experts;
  const int64_t tokens = r.groups * r.group_size;
  for (int64_t tok = 0; tok < tokens; ++tok) {
    const float* p = probs.data() + tok * E;
    const bool allow_first = importance.empty() || importance[tok] == 1.0f;
    const bool allow_second = importance.empty() || importance[tok] > 0.0f;
    int32_t i1 = 0;
    for (int32_t e = 1; e < E; ++e) {
      if (p[e] > p[i1]) i1 = e;
    }
    // Excluding i1 only where the first choice is requested, as the
    // reference masks raw_gates with mask_1.
    int32_t i2 = -1;
    for (int32_t e = 0; e < E; ++e) {
      if (allow_first && e == i1) continue;
      if (i2 < 0 || p[e] > p[i2]) i2 = e;
    }
    const float g1 = allow_first ? p[i1] : 0.0f;
    const float g2 = p[i2];
    const float denom = (g1 + g2) + kGateEps;
    const float n1 = g1 / denom;
    const float n2 = g2 / denom;
    const bool second =
        allow_second &&
        SecondRequested(params, n2, uniforms.empty() ? 0.0f : uniforms[tok]);
    if (allow_second) {
      ++r.counts.tokens;
      if (!second) ++r.counts.second_skipped;
    }
    r.expert[tok * 2] = i1;
    r.expert[tok * 2 + 1] = i2;
    r.gate[tok * 2] = n1;
    r.gate[tok * 2 + 1] = n2;
    r.requested[tok * 2] = allow_first;
    r.requested[tok * 2 + 1] = second;
  }
}

// Positions and capacity, group by group: first choices claim slots before
// second choices, in sequence order.
void AssignPositions(RoutingResult& r) {
  const int64_t E = r.num_experts;
  std::vector<int64_t> counter(E);
  for (int64_t g = 0; g < r.groups; ++g) {
    std::fill(counter.begin(), counter.end(), 0);
    for (int64_t t = 0; t < r.group_size; ++t) {
      const int64_t i = r.Index(g, t, 0);
      if (!r.requested[i]) continue;
      const int32_t e = r.expert[i];
      r.position[i] = static_cast<int32_t>(counter[e]++);
      r.kept[i] = r.position[i] < r.capacity;
    }
    int32_t* kept_first = r.first_kept_count.data() + g * E;
    for (int64_t e = 0; e < E; ++e) {
      kept_first[e] = static_cast<int32_t>(std::min(counter[e], r.capacity));
    }
    std::fill(counter.begin(), counter.end(), 0);
    for (int64_t t = 0; t < r.group_size; ++t) {
      const int64_t i = r.Index(g, t, 1);
      if (!r.requested[i]) continue;
      const int32_t e = r.expert[i];
      r.position[i] = static_cast<int32_t>(kept_first[e] + counter[e]++);
      r.kept[i] = r.position[i] < r.capacity;
    }
  }
}

// The counts of requested, kept and dropped choices.
void CountChoices(RoutingResult& r) {
  RoutingCounts& c = r.counts;
  for (int64_t tok = 0; tok < r.groups * r.group_size; ++tok) {
    bool any_requested = false, any_kept = false;
    for (int k = 0; k < 2; ++k) {
      const int64_t i = tok * 2 + k;
      if (!r.requested[i]) continue;
      any_requested = true;
      ++c.requested[k];
      if (r.kept[i]) {
        any_kept = true;
        ++c.kept[k];
        ++c.kept_by_expert[k][r.expert[i]];
      } else {
        ++c.dropped[k];
        ++c.dropped_by_expert[k][r.expert[i]];
      }
    }
    if (any_requested && !any_kept) ++c.dropped_tokens;
  }
}

}  // namespace

absl::StatusOr<RoutingResult> RouteTop2(absl::Span<const float> probs,
                                        int64_t groups, int64_t group_size,
                                        const GateParams& params,
                                        absl::Span<const float> importance,
                                        absl::Span<const float> uniforms) {
  const absl::Status valid =
      CheckArguments(probs, groups, group_size, params, importance, uniforms);
  if (!valid.ok()) return valid;
  RoutingResult r = EmptyResult(groups, group_size, params);
  ChooseTop2(probs, params, importance, uniforms, r);
  AssignPositions(r);
  CountChoices(r);
  return r;
}

}  // namespace moe::router
