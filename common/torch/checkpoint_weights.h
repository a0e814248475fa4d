// LibTorch tensors from and to checkpoints (common/checkpoint.h): what the
// router loads of a layer, what a worker loads of an expert, and the writer
// the demo model and tests use.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/checkpoint.h"
#include "common/expert_segment.h"
#include "common/model_spec.h"
#include "common/torch/model_weights.h"

namespace moe::common {

// The gates, norms and feed-forwards of layer `layer` (float32, CPU; the
// f1a7959 gate [d, E] is transposed to [E, d], the inner gates to
// [Eo, Ei, d]).
absl::StatusOr<RouterWeights> LoadRouterWeights(const Checkpoint& checkpoint,
                                                int layer);

// One expert. InvalidArgument for a layer or expert id out of range.
absl::StatusOr<ExpertWeights> LoadExpertWeights(const Checkpoint& checkpoint,
                                                ExpertKey key);

// Every expert of every layer, for the in-process engine.
absl::StatusOr<std::vector<ExpertMap>> LoadAllExperts(
    const Checkpoint& checkpoint);

// Writes `layers` (one per spec layer, every expert present) in the HEAD
// spelling (gate.to_gates.weight; the f1a7959 spelling for two-level gates),
// through common::WriteCheckpoint.
absl::Status WriteLayerWeights(const std::string& path, const ModelSpec& spec,
                               const std::vector<LayerWeights>& layers);

}  // namespace moe::common
