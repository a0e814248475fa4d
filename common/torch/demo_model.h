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
#include "absl/status/statusor.h"
#include "common/layer_config.h"
#include "common/model_spec.h"
#include "common/torch/model_weights.h"

namespace moe::common {

// The README configuration of st-moe-pytorch.
LayerConfig DefaultDemoConfig();

// The demo model: `layers` layers of `config`, named "layers.<i>.ff" (a
// single layer keeps the unnamed one-layer form).
ModelSpec DemoModelSpec(const LayerConfig& config, int layers);

// Builds the weights of one layer (block layers get both feed-forwards).
absl::StatusOr<LayerWeights> BuildDemoLayer(const LayerConfig& config,
                                            uint64_t seed);

// Builds and writes a checkpoint of DemoModelSpec(config, layers); layer i
// is BuildDemoLayer(config, seed + i).
absl::Status WriteDemoCheckpoint(const std::string& path,
                                 const LayerConfig& config, int layers,
                                 uint64_t seed);

}  // namespace moe::common
