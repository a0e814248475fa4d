#include "router/losses.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace moe::router {
namespace {

bool FirstAllowed(absl::Span<const float> importance, int64_t token) {
  return importance.empty() || importance[token] == 1.0f;
}

}  // namespace

double BalanceLoss(absl::Span<const float> probs, const RoutingResult& r,
                   absl::Span<const float> importance) {
  const int64_t E = r.num_experts, S = r.group_size;
  std::vector<double> f(E), P(E);
  double sum = 0;
  for (int64_t g = 0; g < r.groups; ++g) {
    std::fill(f.begin(), f.end(), 0.0);
    std::fill(P.begin(), P.end(), 0.0);
    for (int64_t t = 0; t < S; ++t) {
      const int64_t tok = g * S + t;
      if (!FirstAllowed(importance, tok)) continue;
      f[r.expert[r.Index(g, t, 0)]] += 1.0;
      const float* p = probs.data() + tok * E;
      for (int64_t e = 0; e < E; ++e) P[e] += p[e];
    }
    for (int64_t e = 0; e < E; ++e) sum += (f[e] / S) * (P[e] / S);
  }
  const double mean = sum / static_cast<double>(r.groups * E);
  return mean * static_cast<double>(E * E);
}

double RouterZLoss(absl::Span<const float> logits, int64_t num_experts,
                   absl::Span<const float> importance) {
  const int64_t tokens = static_cast<int64_t>(logits.size()) / num_experts;
  double sum = 0, weight = 0;
  for (int64_t tok = 0; tok < tokens; ++tok) {
    if (!FirstAllowed(importance, tok)) continue;
    const float* l = logits.data() + tok * num_experts;
    double m = l[0];
    for (int64_t e = 1; e < num_experts; ++e) m = std::max(m, double{l[e]});
    double s = 0;
    for (int64_t e = 0; e < num_experts; ++e) s += std::exp(l[e] - m);
    const double lse = m + std::log(s);
    sum += lse * lse;
    weight += 1.0;
  }
  if (importance.empty()) return tokens > 0 ? sum / tokens : 0.0;
  return sum / std::max(weight, 1e-5);
}

void WeighLosses(double balance_coef, double z_coef, AuxLosses* losses) {
  losses->weighted_balance_loss = balance_coef * losses->balance_loss;
  losses->weighted_router_z_loss = z_coef * losses->router_z_loss;
  losses->total_aux_loss =
      losses->weighted_balance_loss + losses->weighted_router_z_loss;
}

}  // namespace moe::router
