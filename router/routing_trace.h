// The per-token routing of one level as named tensors, in the layouts of the
// golden files (`expected.*`), for files, responses and tests.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "router/top2_gating.h"

namespace moe::router {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// `lead_shape` splits the groups: {B} for a single level, {Eo, B} for the
// inner level of a two-level MoE (its product must equal routing.groups).
// Appends, each name prefixed with `prefix`:
//   gate_indices     int64 [2, lead..., S]   i1, i2
//   gates_normalized f32   [2, lead..., S]   ĝ1, ĝ2
//   gates            f32   [2, lead..., S]   combine weights G1, G2
//   positions        int64 [2, lead..., S]   slot index (0 where not requested)
//   routed_mask      int64 [lead..., S, 2]   requested
//   dropped_mask     int64 [lead..., S, 2]   requested but past capacity
//   first_choice_kept_count int64 [lead..., E]
//   expert_capacity  int64 []
// May throw c10::Error.
void AppendRoutingTrace(const RoutingResult& routing,
                        const std::vector<int64_t>& lead_shape,
                        const std::string& prefix, NamedTensors* out);

}  // namespace moe::router
