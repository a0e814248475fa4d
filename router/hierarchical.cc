#include "router/hierarchical.h"

#include <ATen/ATen.h>

#include <cstring>

#include "common/status_macros.h"
#include "router/losses.h"

namespace moe::router {
namespace {

at::Tensor LongTensor(const std::vector<int64_t>& values) {
  at::Tensor t = at::empty({static_cast<int64_t>(values.size())}, at::kLong);
  if (!values.empty()) {
    std::memcpy(t.data_ptr<int64_t>(), values.data(),
                values.size() * sizeof(int64_t));
  }
  return t;
}

absl::Span<const float> FloatSpan(const at::Tensor& t) {
  return absl::Span<const float>(t.data_ptr<float>(), t.numel());
}

}  // namespace

absl::StatusOr<InnerLevel> RouteInnerLevel(const RoutingResult& outer,
                                           const at::Tensor& h,
                                           const at::Tensor& inner_gate,
                                           int64_t batch, int64_t seq,
                                           GateParams params,
                                           at::Generator& gen) {
  const int64_t eo = inner_gate.size(0), ei = inner_gate.size(1);
  const int64_t co = outer.capacity;
  const int64_t slots = eo * batch * co;
  InnerLevel in;
  in.slot_row.assign(slots, -1);
  in.slot_importance.assign(slots, 0.0f);
  in.slot_weight.assign(slots, 0.0f);
  // Slots [Eo, B, C_o]: the row each holds, its weight and importance.
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t t = 0; t < seq; ++t) {
      for (int k = 0; k < 2; ++k) {
        const int64_t i = outer.Index(b, t, k);
        const float w = outer.CombineWeight(i);
        if (w == 0.0f) continue;
        const int64_t s =
            (outer.expert[i] * batch + b) * co + outer.position[i];
        in.slot_row[s] = b * seq + t;
        in.slot_weight[s] = w;
        in.slot_importance[s] = 0.5f * ((w > 0.5f ? 1.0f : 0.0f) + 1.0f);
      }
    }
  }
  std::vector<std::vector<int64_t>> rows_of(eo), slots_of(eo);
  for (int64_t s = 0; s < slots; ++s) {
    if (in.slot_row[s] < 0) continue;
    rows_of[s / (batch * co)].push_back(in.slot_row[s]);
    slots_of[s / (batch * co)].push_back(s);
  }
  // Inner logits: zero for empty slots, as the reference's zero vectors.
  in.logits = at::zeros({slots, ei}, at::kFloat);
  for (int64_t o = 0; o < eo; ++o) {
    if (rows_of[o].empty()) continue;
    at::Tensor xs = h.index_select(0, LongTensor(rows_of[o]));
    in.logits.index_copy_(0, LongTensor(slots_of[o]),
                          at::matmul(xs, inner_gate[o].t()));
  }
  in.probs = at::softmax(in.logits, -1).contiguous();
  std::vector<float> uniforms;
  if (params.policy == SecondExpertPolicy::kRandom) {
    at::Tensor u = at::rand({eo, batch, co}, gen);
    uniforms.assign(u.data_ptr<float>(), u.data_ptr<float>() + u.numel());
  }
  params.num_experts = ei;
  MOE_ASSIGN_OR_RETURN(in.routing,
                       RouteTop2(FloatSpan(in.probs), eo * batch, co, params,
                                 in.slot_importance, uniforms));
  in.balance_loss =
      BalanceLoss(FloatSpan(in.probs), in.routing, in.slot_importance);
  in.router_z_loss = RouterZLoss(FloatSpan(in.logits), ei, in.slot_importance);
  return in;
}

}  // namespace moe::router
