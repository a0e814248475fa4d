// Auxiliary losses (docs/numerics.md §6-8 and §11.7). moe-serve computes
// them in both modes: in eval they are a monitoring signal, while the
// reference returns zeros there.
#pragma once

#include <cstdint>

#include "absl/types/span.h"
#include "router/top2_gating.h"

namespace moe::router {

struct AuxLosses {
  double balance_loss = 0;            // raw L_bal
  double router_z_loss = 0;           // raw L_z
  double weighted_balance_loss = 0;   // balance_loss_coef * L_bal
  double weighted_router_z_loss = 0;  // router_z_loss_coef * L_z
  double total_aux_loss = 0;          // sum of the two weighted losses
};

// L_bal = E² · mean_{g,e}(f[g,e] · P[g,e]) with
//   f[g,e] = (1/S) Σ_t A1 · 1[i1 = e]   (first choices before capacity)
//   P[g,e] = (1/S) Σ_t A1 · p[g,t,e]
// where A1 = (importance == 1), or 1 everywhere when importance is empty.
// probs: [groups * group_size * E] of the routing that produced `routing`.
double BalanceLoss(absl::Span<const float> probs, const RoutingResult& routing,
                   absl::Span<const float> importance);

// L_z = Σ_t A1 · (logsumexp_e l[t, e])² / max(Σ_t A1, 1e-5); with empty
// importance, the mean over all tokens.
double RouterZLoss(absl::Span<const float> logits, int64_t num_experts,
                   absl::Span<const float> importance);

// Fills the weighted fields and the total from the raw ones.
void WeighLosses(double balance_coef, double z_coef, AuxLosses* losses);

}  // namespace moe::router
