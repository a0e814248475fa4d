#include "router/dispatch_plan.h"

#include <algorithm>

#include "common/layer_config.h"

namespace moe::router {
namespace {

// Visits the kept choices of `r` in slot order within each expert: group by
// group, first choices in sequence order, then second choices.
template <typename Fn>
void ForEachKept(const RoutingResult& r, Fn&& fn) {
  for (int64_t g = 0; g < r.groups; ++g) {
    for (int k = 0; k < 2; ++k) {
      for (int64_t t = 0; t < r.group_size; ++t) {
        const int64_t i = r.Index(g, t, k);
        if (r.kept[i] && r.gate[i] != 0.0f) fn(g, t, i);
      }
    }
  }
}

// Two passes: count per plan expert, then fill.
template <typename Entry>
DispatchPlan Build(const RoutingResult& r, int64_t plan_experts, int32_t layer,
                   Entry&& entry) {
  DispatchPlan plan;
  plan.num_experts = plan_experts;
  std::vector<int64_t> counts(plan_experts, 0);
  ForEachKept(r, [&](int64_t g, int64_t t, int64_t i) {
    int64_t expert, row;
    float weight;
    if (entry(g, t, i, &expert, &row, &weight)) ++counts[expert];
  });
  std::vector<int64_t> cursor(plan_experts, 0);
  int64_t offset = 0;
  for (int64_t e = 0; e < plan_experts; ++e) {
    cursor[e] = offset;
    if (counts[e] > 0) {
      plan.segments.push_back({{layer, e}, offset, counts[e]});
      offset += counts[e];
    }
  }
  plan.row.resize(offset);
  plan.weight.resize(offset);
  ForEachKept(r, [&](int64_t g, int64_t t, int64_t i) {
    int64_t expert, row;
    float weight;
    if (!entry(g, t, i, &expert, &row, &weight)) return;
    const int64_t at = cursor[expert]++;
    plan.row[at] = row;
    plan.weight[at] = weight;
  });
  return plan;
}

}  // namespace

int64_t DispatchPlan::count(int64_t expert) const {
  auto it = std::lower_bound(segments.begin(), segments.end(), expert,
                             [](const common::ExpertSegment& s, int64_t e) {
                               return s.key.expert < e;
                             });
  return it != segments.end() && it->key.expert == expert ? it->count : 0;
}

DispatchPlan BuildDispatchPlan(const RoutingResult& r, int32_t layer) {
  return Build(r, r.num_experts, layer,
               [&r](int64_t g, int64_t t, int64_t i, int64_t* expert,
                    int64_t* row, float* weight) {
                 *expert = r.expert[i];
                 *row = g * r.group_size + t;
                 *weight = r.gate[i];
                 return true;
               });
}

DispatchPlan BuildInnerDispatchPlan(const RoutingResult& r, int64_t batch,
                                    int64_t num_outer,
                                    absl::Span<const int64_t> slot_row,
                                    absl::Span<const float> slot_weight,
                                    int32_t layer) {
  return Build(r, num_outer * r.num_experts, layer,
               [&](int64_t g, int64_t t, int64_t i, int64_t* expert,
                   int64_t* row, float* weight) {
                 const int64_t slot = g * r.group_size + t;
                 if (slot_row[slot] < 0) return false;
                 *expert = common::FlatExpertId(g / batch, r.expert[i],
                                                r.num_experts);
                 *row = slot_row[slot];
                 *weight = slot_weight[slot] * r.gate[i];
                 return *weight != 0.0f;
               });
}

}  // namespace moe::router
