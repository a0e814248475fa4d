// The configuration of one MoE layer: the constructor arguments of the
// st-moe-pytorch module whose weights the layer holds. A single-layer
// checkpoint stores it as its `__metadata__["config_json"]`; a whole model
// stores one per layer (common/model_spec.h).
//
// Example config_json:
//   {"kind": "moe", "dim": 512, "num_experts": 16, "hidden_mult": 4,
//    "threshold_train": 0.2, "threshold_eval": 0.2,
//    "capacity_factor_train": 1.25, "capacity_factor_eval": 2.0,
//    "balance_loss_coef": 0.01, "router_z_loss_coef": 0.001}
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moe::common {

enum class LayerKind {
  kMoe,             // st_moe_pytorch.MoE
  kSparseMoeBlock,  // SparseMoEBlock: norms, feed-forwards, residuals, MoE
  kHierarchicalMoe  // f1a7959 HeirarchicalMoE (two-level routing)
};

const char* LayerKindName(LayerKind kind);

// The expert id of inner expert `inner` of outer expert `outer` in a
// two-level MoE with `num_inner` inner experts each: outer * Ei + inner. The
// one place this numbering lives (plans, metrics, checkpoint names).
inline int64_t FlatExpertId(int64_t outer, int64_t inner, int64_t num_inner) {
  return outer * num_inner + inner;
}

struct LayerConfig {
  LayerKind kind = LayerKind::kMoe;
  int64_t dim = 0;
  // Experts of the (outer) gate.
  int64_t num_experts = 0;
  // Experts of each inner gate; 0 for a single-level MoE. A sparse_moe_block
  // whose num_experts is a pair wraps a two-level MoE.
  int64_t num_experts_inner = 0;
  double hidden_mult = 4.0;
  double threshold_train = 0.2;  // Compared in float32 when routing.
  double threshold_eval = 0.2;
  double capacity_factor_train = 1.25;
  double capacity_factor_eval = 2.0;
  double balance_loss_coef = 1e-2;
  double router_z_loss_coef = 1e-3;
  // Informational: the mode the checkpoint's reference outputs were made in
  // ("eval", "train" or empty). Requests choose their own mode.
  std::string mode;

  bool hierarchical() const { return num_experts_inner > 0; }
  bool is_block() const { return kind == LayerKind::kSparseMoeBlock; }
  // Number of expert networks: E, or Eo * Ei for a two-level MoE.
  int64_t total_experts() const {
    return hierarchical() ? num_experts * num_experts_inner : num_experts;
  }
  // Parameters of one GEGLU expert: 3 h d + 3 h + d (its two linears, their
  // biases and the multiplicative bias), h = expert_hidden().
  int64_t expert_parameters() const;
  // Hidden size of the MoE experts: int(dim * hidden_mult * 2 / 3).
  int64_t expert_hidden() const;
  // Hidden size of the block feed-forwards (always hidden_mult 4).
  int64_t feed_forward_hidden() const;

  // The JSON form, as stored in config_json.
  std::string ToJson() const;
};

// Parses and validates one layer's JSON object. InvalidArgument naming the
// key for a missing, mistyped or out-of-range value (for example fewer than
// 2 experts, which top-2 routing cannot serve).
absl::StatusOr<LayerConfig> ParseLayerConfig(absl::string_view json);

// Validates a config built in code (the same checks as ParseLayerConfig).
absl::Status ValidateLayerConfig(const LayerConfig& config);

// The bounds every threshold and capacity factor obeys, in a checkpoint and
// in a request's overrides alike: a threshold is finite and >= 0, a capacity
// factor finite and > 0. InvalidArgument naming `what` otherwise.
absl::Status ValidateThreshold(absl::string_view what, double threshold);
absl::Status ValidateCapacityFactor(absl::string_view what,
                                    double capacity_factor);

}  // namespace moe::common
