// ModelSpec: what a checkpoint holds. A model is one or more MoE layers,
// each the tensors under a name prefix ("blocks.3.ff." for layer
// "blocks.3.ff") with its own LayerConfig; all layers share the model dim.
//
// config_json of a whole model:
//   {"name": "toy-lm", "dim": 512, "layers": [
//     {"name": "blocks.0.ff", "kind": "moe", "num_experts": 16, ...},
//     {"name": "blocks.1.ff", "kind": "sparse_moe_block", ...}]}
// A file whose config_json is one layer's object (every checkpoint before
// whole-model serving, and every golden file) is a model of one layer named
// "" whose tensors carry no prefix.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/layer_config.h"

namespace moe::common {

// The longest layer name (a tensor-name prefix) a model or a request may
// carry.
inline constexpr size_t kMaxLayerNameBytes = 256;

struct LayerSpec {
  std::string name;  // "" only for the single layer of a one-layer file
  LayerConfig config;
  // The tensor-name prefix: the name and a dot ("" for the unnamed layer).
  std::string prefix() const { return name.empty() ? "" : name + "."; }
};

struct ModelSpec {
  std::string name;
  int64_t dim = 0;
  std::vector<LayerSpec> layers;

  // The index of layer `layer`. An empty name selects the only layer of a
  // one-layer model. InvalidArgument when the name is empty and there are
  // several layers, or when it cannot be a layer name (longer than
  // kMaxLayerNameBytes, or a byte outside letters, digits, '_', '.', '/',
  // '-': quoted and cut in the message); NotFound for an unknown name. The
  // messages list a few valid names.
  absl::StatusOr<int> FindLayer(absl::string_view layer) const;

  // Up to `limit` layer names, quoted and comma-separated, "(and N more)".
  std::string LayerNames(size_t limit = 5) const;

  // config_json: the layer object for an unnamed single layer, else the
  // whole-model form above.
  std::string ToJson() const;
};

// Parses config_json in either form. `default_name` names a model whose
// JSON has no "name" (a one-layer file: its file name, say). InvalidArgument
// naming the layer and key for a bad layer, layers that disagree on dim,
// duplicate or malformed layer names (letters, digits, '_', '.', '/', '-').
absl::StatusOr<ModelSpec> ParseModelSpec(absl::string_view config_json,
                                         absl::string_view default_name);

// The checks of ParseModelSpec for a spec built in code.
absl::Status ValidateModelSpec(const ModelSpec& spec);

}  // namespace moe::common
