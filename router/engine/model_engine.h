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
  // The same of the checkpoint file at `path` (opened, checked, closed).
  static absl::StatusOr<std::unique_ptr<ModelEngine>> Load(
      const std::string& path);

  const common::ModelSpec& spec() const { return spec_; }
  const std::string& fingerprint() const { return fingerprint_; }
  int num_layers() const { return static_cast<int>(layers_.size()); }
  const LayerEngine& layer(int index) const { return *layers_[index]; }

  // The layer called `name` (common::ModelSpec::FindLayer's rules and
  // messages).
  absl::StatusOr<const LayerEngine*> FindLayer(absl::string_view name) const;

  // One forward of the first layer on [1, tokens] synthetic tokens (up to
  // kWarmUpTokens, within `max_tokens`) whose experts compute nothing,
  // before the router serves: it grows the allocator's heap to the working
  // set of such a forward (gather and output blocks, kept for reuse,
  // common/allocator.h) and starts LibTorch's kernels, which the first real
  // forward otherwise pays for (BENCHMARKS.md has the first forward's
  // stages with and without it). Logs what it did and how long it took.
  static constexpr int64_t kWarmUpTokens = 4096;
  absl::Status WarmUp(int64_t max_tokens) const;

 private:
  ModelEngine() = default;
  common::ModelSpec spec_;
  std::string fingerprint_;
  std::vector<std::unique_ptr<LayerEngine>> layers_;
};

}  // namespace moe::router
