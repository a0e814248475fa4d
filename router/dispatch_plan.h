// DispatchPlan: for every expert, the token rows it processes (in capacity
// slot order) and the combine weight of each: the sparse form of the
// reference's [B, n, E, C] dispatch and combine tensors, which are never
// built. Dispatch is a gather of plan rows; combine a weighted scatter-add
// (router/combine.h).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/types/span.h"
#include "common/expert_segment.h"
#include "router/top2_gating.h"

namespace moe::router {

struct DispatchPlan {
  int64_t num_experts = 0;  // experts of the layer (E, or Eo * Ei)
  // The experts with entries, ascending; segment s covers entries
  // [s.offset, s.offset + s.count) of `row` and `weight`, and so the same
  // rows of the gathered token block that goes to the experts.
  std::vector<common::ExpertSegment> segments;
  std::vector<int64_t> row;   // Row of the flattened [tokens, d] input.
  std::vector<float> weight;  // Combine weight (> 0 for every entry).

  int64_t size() const { return static_cast<int64_t>(row.size()); }
  // Entries of `expert` (0 when it has none).
  int64_t count(int64_t expert) const;
};

// Plan of a single-level routing of layer `layer`: token (g, t) is row
// g * group_size + t. Kept choices whose weight is 0 carry nothing and are
// left out.
DispatchPlan BuildDispatchPlan(const RoutingResult& routing, int32_t layer);

// Plan of the inner level of a two-level MoE: group g of `inner` holds the
// slots of outer expert g / batch, so its expert e is plan expert
// FlatExpertId(g / batch, e, inner.num_experts). `slot_row[s]` is the input
// row in slot s (or -1 for an empty slot) and `slot_weight[s]` its outer
// combine weight, which multiplies the inner one.
DispatchPlan BuildInnerDispatchPlan(const RoutingResult& inner, int64_t batch,
                                    int64_t num_outer,
                                    absl::Span<const int64_t> slot_row,
                                    absl::Span<const float> slot_weight,
                                    int32_t layer);

}  // namespace moe::router
