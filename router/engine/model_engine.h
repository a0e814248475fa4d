// ModelEngine: every MoE layer of a model, found by name. The router holds
// one (and so do moe-run and the tests); the experts themselves run where
// an ExpertBackend sends them.
//
// Thread-safety: immutable after creation.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/checkpoint.h"
#include "common/model_spec.h"
#include "router/engine/layer_engine.h"

namespace moe::router {

class ModelEngine {
 public:
  // The gates, norms and feed-forwards of every layer of `checkpoint`.
  static absl::StatusOr<std::unique_ptr<ModelEngine>> Load(
      const common::Checkpoint& checkpoint);

  const common::ModelSpec& spec() const { return spec_; }
  const std::string& fingerprint() const { return fingerprint_; }
  int num_layers() const { return static_cast<int>(layers_.size()); }
  const LayerEngine& layer(int index) const { return *layers_[index]; }

  // The layer called `name` (common::ModelSpec::FindLayer's rules and
  // messages).
  absl::StatusOr<const LayerEngine*> FindLayer(absl::string_view name) const;

  // One forward of the first layer on [1, tokens] synthetic tokens whose
  // experts compute nothing, before the router serves: it grows the
  // allocator's heap to the working set of such a forward (gather and
  // output blocks, kept for reuse, common/allocator.h) and starts
  // LibTorch's kernels, which the first real forward otherwise pays for
  // (the plan stage of a first [4, 1024] forward took 40 ms, then 1.5-7).
  // Returns the time it took.
  absl::StatusOr<absl::Duration> WarmUp(int64_t tokens) const;

 private:
  ModelEngine() = default;
  common::ModelSpec spec_;
  std::string fingerprint_;
  std::vector<std::unique_ptr<LayerEngine>> layers_;
};

}  // namespace moe::router
