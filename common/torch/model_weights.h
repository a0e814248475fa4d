// Parameter tensors of one MoE layer as LibTorch tensors. Plain data:
// float32, contiguous, CPU unless moved. The numerics that use them live in
// experts/ and router/; common/torch/checkpoint_weights.h loads them.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <optional>

namespace moe::common {

// One GEGLU expert (docs/numerics.md, "Expert"), h = hidden size, d = dim.
struct ExpertWeights {
  at::Tensor w1;         // [2h, d]: rows 0..h-1 value half, h..2h-1 gate half
  at::Tensor b1;         // [2h]
  at::Tensor mult_bias;  // [h]
  at::Tensor w2;         // [d, h]
  at::Tensor b2;         // [d]
};

// The pre-normed feed-forward of a SparseMoEBlock: RMSNorm then GEGLU.
struct FeedForwardWeights {
  at::Tensor gamma;  // [d]
  ExpertWeights geglu;
};

// What the router holds of a layer: gates and, for blocks, the norms and
// feed-forwards.
struct RouterWeights {
  // [E, d] (logits = x · gateᵀ); for a two-level MoE, the outer gate [Eo, d].
  at::Tensor gate;
  // Two-level MoE only: the inner gates [Eo, Ei, d].
  at::Tensor inner_gate;
  // SparseMoEBlock only.
  at::Tensor prenorm_gamma;  // [d]
  std::optional<FeedForwardWeights> ff_before;
  std::optional<FeedForwardWeights> ff_after;
};

// A layer's experts by id (o * Ei + i for a two-level MoE).
using ExpertMap = std::map<int64_t, ExpertWeights>;

// Everything of one layer.
struct LayerWeights {
  RouterWeights router;
  ExpertMap experts;
};

}  // namespace moe::common
