// The inner level of a two-level MoE (docs/numerics.md, "Two-level MoE"):
// the outer routing's capacity slots, their importance, every outer
// expert's inner gate over its slots, the inner routing and the inner
// losses. The outer level is an ordinary top-2 routing (router/top2_gating.h).
#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "router/top2_gating.h"

namespace moe::router {

struct InnerLevel {
  // Routing over the slots: groups ordered [Eo, B], group size C_o.
  RoutingResult routing;
  at::Tensor logits, probs;  // [Eo * B * C_o, Ei]
  // Per slot [Eo, B, C_o]: the input row it holds (-1 when empty), its
  // importance (0, 0.5 or 1) and its outer combine weight.
  std::vector<int64_t> slot_row;
  std::vector<float> slot_importance;
  std::vector<float> slot_weight;
  // Raw inner losses (added to the outer ones by the caller).
  double balance_loss = 0;
  double router_z_loss = 0;
};

// `outer`: the outer routing of a [batch, seq] input; `h`: the input rows
// [batch * seq, d] float32; `inner_gate`: [Eo, Ei, d]. `params` are the
// outer level's (policy, threshold, capacity factor), reused with Ei
// experts. With the random policy the inner uniforms [Eo, B, C_o] are drawn
// from `gen`. May throw c10::Error.
absl::StatusOr<InnerLevel> RouteInnerLevel(const RoutingResult& outer,
                                           const at::Tensor& h,
                                           const at::Tensor& inner_gate,
                                           int64_t batch, int64_t seq,
                                           GateParams params,
                                           at::Generator& gen);

}  // namespace moe::router
