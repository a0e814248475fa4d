// A seeded, randomly initialised model for the embedded default and for
// benchmarks. Defaults are the README configuration of st-moe-pytorch:
// dim 512, 16 experts, hidden_mult 4, thresholds 0.2, capacity factors 1.25
// (train) / 2.0 (eval).
//
// Initialisation follows st-moe-pytorch: gate Linear U(±1/√d) (f1a7959's
// randn for two-level gates); expert Linears U(±out_features^-½) for weight
// and bias; mult_bias and gamma 1. The same seed gives the same weights.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "common/model_config.h"
#include "common/model_weights.h"

namespace moe::common {

// The README configuration of st-moe-pytorch.
ModelConfig DefaultDemoConfig();

struct DemoModel {
  RouterWeights router;
  ExpertMap experts;
};

// Builds the weights for `config` (block models get both feed-forwards).
absl::StatusOr<DemoModel> BuildDemoModel(const ModelConfig& config,
                                         uint64_t seed);

// Builds and writes a checkpoint.
absl::Status WriteDemoCheckpoint(const std::string& path,
                                 const ModelConfig& config, uint64_t seed);

}  // namespace moe::common
