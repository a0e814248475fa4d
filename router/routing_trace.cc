#include "router/routing_trace.h"

#include <ATen/ATen.h>

namespace moe::router {
namespace {

std::vector<int64_t> Concat(std::vector<int64_t> a,
                            const std::vector<int64_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

}  // namespace

void AppendRoutingTrace(const RoutingResult& r,
                        const std::vector<int64_t>& lead_shape,
                        const std::string& prefix, NamedTensors* out) {
  const int64_t tokens = r.groups * r.group_size;
  const std::vector<int64_t> per_token = Concat(lead_shape, {r.group_size});
  const std::vector<int64_t> by_choice = Concat({2}, per_token);
  const std::vector<int64_t> token_major = Concat(per_token, {2});

  at::Tensor indices = at::empty(by_choice, at::kLong);
  at::Tensor normalized = at::empty(by_choice, at::kFloat);
  at::Tensor gates = at::empty(by_choice, at::kFloat);
  at::Tensor positions = at::empty(by_choice, at::kLong);
  at::Tensor routed = at::empty(token_major, at::kLong);
  at::Tensor dropped = at::empty(token_major, at::kLong);
  int64_t* ip = indices.data_ptr<int64_t>();
  float* np = normalized.data_ptr<float>();
  float* gp = gates.data_ptr<float>();
  int64_t* pp = positions.data_ptr<int64_t>();
  int64_t* rp = routed.data_ptr<int64_t>();
  int64_t* dp = dropped.data_ptr<int64_t>();
  for (int64_t tok = 0; tok < tokens; ++tok) {
    for (int k = 0; k < 2; ++k) {
      const int64_t i = tok * 2 + k;
      const int64_t c = k * tokens + tok;
      ip[c] = r.expert[i];
      np[c] = r.gate[i];
      gp[c] = r.CombineWeight(i);
      pp[c] = r.position[i];
      rp[i] = r.requested[i];
      dp[i] = r.requested[i] && !r.kept[i];
    }
  }
  at::Tensor kept_count =
      at::empty(Concat(lead_shape, {r.num_experts}), at::kLong);
  int64_t* kp = kept_count.data_ptr<int64_t>();
  for (size_t i = 0; i < r.first_kept_count.size(); ++i) {
    kp[i] = r.first_kept_count[i];
  }
  out->emplace_back(prefix + "gate_indices", indices);
  out->emplace_back(prefix + "gates_normalized", normalized);
  out->emplace_back(prefix + "gates", gates);
  out->emplace_back(prefix + "positions", positions);
  out->emplace_back(prefix + "routed_mask", routed);
  out->emplace_back(prefix + "dropped_mask", dropped);
  out->emplace_back(prefix + "first_choice_kept_count", kept_count);
  out->emplace_back(prefix + "expert_capacity",
                    at::scalar_tensor(r.capacity, at::kLong));
}

}  // namespace moe::router
