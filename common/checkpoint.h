// Loads a moe-serve checkpoint: a safetensors file whose tensor names are
// st-moe-pytorch state_dict names and whose `__metadata__["config_json"]`
// holds the ModelConfig.
//
// Accepted spellings (SEMANTICS.md section 12):
//   gate.to_gates.weight [E, d]   (HEAD)  or  gate.w_gating [d, E]  (f1a7959)
//   experts.experts.{i}.net.{0,1,2}.*               single-level experts
//   gate_outer.w_gating [d, Eo], gate_inner.w_gating [Eo, d, Ei],
//   experts.{o}.experts.{i}.net.{0,1,2}.*           two-level MoE
//   moe. prefix, moe_prenorm.gamma, ff_before.*, ff_after.*   SparseMoEBlock
// Tensors named input.*, output.*, expected.* and alt.* (test vectors), and the
// gate threshold buffers, are not parameters and are ignored. Every parameter
// is checked against the config; a missing, unexpected or misshapen one is an
// InvalidArgument naming the file and the tensor. Weights in F16/BF16/F64 are
// converted to float32.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "common/model_weights.h"

namespace moe::common {

struct LoadOptions {
  // Load the gates, norms and feed-forwards.
  bool router = true;
  // Experts to load: nullopt loads all; an empty list loads none. The bytes of
  // other experts are never read (their names and shapes are still checked).
  std::optional<std::vector<int64_t>> experts;
};

struct Checkpoint {
  std::string path;
  ModelConfig config;
  RouterWeights router;  // Empty tensors unless LoadOptions::router.
  ExpertMap experts;     // The requested experts.
};

// Reads only the config of a checkpoint.
absl::StatusOr<ModelConfig> ReadCheckpointConfig(const std::string& path);

absl::StatusOr<Checkpoint> LoadCheckpoint(const std::string& path,
                                          const LoadOptions& options = {});

// The state_dict name prefix of expert `id` ("experts.experts.3.net." or
// "experts.1.experts.0.net.", with "moe." in front for a block).
std::string ExpertParamPrefix(const ModelConfig& config, int64_t id);

// Writes a checkpoint in the HEAD spelling (gate.to_gates.weight) or, for a
// two-level MoE, the f1a7959 spelling. `experts` must hold every expert.
absl::Status WriteCheckpoint(const std::string& path, const ModelConfig& config,
                             const RouterWeights& router,
                             const ExpertMap& experts);

}  // namespace moe::common
