#include "router/api/forward_response.h"

#include <set>

#include "common/status_macros.h"
#include "common/torch/torch_convert.h"
#include "router/api/wire_tensors.h"

namespace moe::router {
namespace {

void FillLevel(const RoutingResult& r, moe::v1::LevelStats* s) {
  const RoutingCounts& c = r.counts;
  s->set_tokens(c.tokens);
  s->set_expert_capacity(r.capacity);
  s->set_kept_first(c.kept[0]);
  s->set_kept_second(c.kept[1]);
  s->set_dropped_first(c.dropped[0]);
  s->set_dropped_second(c.dropped[1]);
  s->set_second_skipped(c.second_skipped);
  s->set_dropped_tokens(c.dropped_tokens);
}

}  // namespace

absl::Status FillForwardResponse(const ForwardResult& r, common::DType y_dtype,
                                 bool trace,
                                 moe::v1::ForwardResponse* response) {
  MOE_RETURN_IF_ERROR(EncodeWireTensor(r.y, y_dtype, response->mutable_y()));
  moe::v1::Losses* losses = response->mutable_losses();
  losses->set_balance_loss(r.losses.balance_loss);
  losses->set_router_z_loss(r.losses.router_z_loss);
  losses->set_weighted_balance_loss(r.losses.weighted_balance_loss);
  losses->set_weighted_router_z_loss(r.losses.weighted_router_z_loss);
  losses->set_total_aux_loss(r.losses.total_aux_loss);
  moe::v1::RoutingStats* stats = response->mutable_stats();
  FillLevel(r.routing, stats->mutable_routing());
  if (r.inner) FillLevel(r.inner->routing, stats->mutable_inner());
  std::set<int64_t> lost;
  for (const ExpertLoss& loss : r.lost) lost.insert(loss.key.expert);
  for (int64_t e = 0; e < r.plan.num_experts; ++e) {
    stats->add_kept_per_expert(lost.count(e) ? 0 : r.plan.count(e));
  }
  stats->set_dropped_expert_unavailable(r.lost_assignments);
  response->set_degraded(!lost.empty());
  for (int64_t e : lost) response->add_failed_experts(e);
  if (!trace) return absl::OkStatus();
  const int64_t batch = r.y.size(0), seq = r.y.size(1);
  NamedTensors tensors;
  MOE_RETURN_IF_ERROR(common::TorchCall(
      "trace", [&] { tensors = ForwardTrace(r, batch, seq); }));
  for (auto& [name, tensor] : tensors) {
    moe::v1::NamedTensor* t = response->add_trace();
    t->set_name(name);
    MOE_ASSIGN_OR_RETURN(common::DType dtype,
                         common::FromScalarType(tensor.scalar_type()));
    MOE_RETURN_IF_ERROR(EncodeWireTensor(tensor, dtype, t->mutable_tensor()));
  }
  return absl::OkStatus();
}

}  // namespace moe::router
