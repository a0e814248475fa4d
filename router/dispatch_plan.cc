#include "router/dispatch_plan.h"

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
DispatchPlan Build(const RoutingResult& r, int64_t plan_experts,
                   Entry&& entry) {
  DispatchPlan plan;
  plan.num_experts = plan_experts;
  plan.offsets.assign(plan_experts + 1, 0);
  ForEachKept(r, [&](int64_t g, int64_t t, int64_t i) {
    int64_t expert, row;
    float weight;
    if (entry(g, t, i, &expert, &row, &weight)) ++plan.offsets[expert + 1];
  });
  for (int64_t e = 0; e < plan_experts; ++e) {
    plan.offsets[e + 1] += plan.offsets[e];
  }
  plan.row.resize(plan.offsets[plan_experts]);
  plan.weight.resize(plan.offsets[plan_experts]);
  std::vector<int64_t> cursor(plan.offsets.begin(), plan.offsets.end() - 1);
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

DispatchPlan BuildDispatchPlan(const RoutingResult& r) {
  return Build(r, r.num_experts,
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
                                    absl::Span<const float> slot_weight) {
  return Build(r, num_outer * r.num_experts,
               [&](int64_t g, int64_t t, int64_t i, int64_t* expert,
                   int64_t* row, float* weight) {
                 const int64_t slot = g * r.group_size + t;
                 if (slot_row[slot] < 0) return false;
                 *expert = (g / batch) * r.num_experts + r.expert[i];
                 *row = slot_row[slot];
                 *weight = slot_weight[slot] * r.gate[i];
                 return *weight != 0.0f;
               });
}

}  // namespace moe::router
