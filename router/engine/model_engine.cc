#include "router/engine/model_engine.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>

#include "absl/time/clock.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "common/torch/checkpoint_weights.h"
#include "common/torch/torch_convert.h"

namespace moe::router {
namespace {

// A backend whose experts contribute nothing (for WarmUp).
class NoExperts final : public ExpertBackend {
 public:
  absl::Status Run(const ExpertWork&, BackendReport*) override {
    return absl::OkStatus();
  }
};

}  // namespace

absl::StatusOr<std::unique_ptr<ModelEngine>> ModelEngine::Load(
    const common::Checkpoint& checkpoint) {
  auto model = std::unique_ptr<ModelEngine>(new ModelEngine());
  model->spec_ = checkpoint.spec();
  model->fingerprint_ = checkpoint.fingerprint();
  for (size_t i = 0; i < model->spec_.layers.size(); ++i) {
    const int32_t index = static_cast<int32_t>(i);
    MOE_ASSIGN_OR_RETURN(common::RouterWeights weights,
                         common::LoadRouterWeights(checkpoint, index));
    MOE_ASSIGN_OR_RETURN(
        std::unique_ptr<LayerEngine> layer,
        LayerEngine::Create(index, model->spec_.layers[i], std::move(weights)));
    model->layers_.push_back(std::move(layer));
  }
  return model;
}

absl::StatusOr<std::unique_ptr<ModelEngine>> ModelEngine::Load(
    const std::string& path) {
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<common::Checkpoint> checkpoint,
                       common::Checkpoint::Open(path));
  return Load(*checkpoint);
}

absl::StatusOr<const LayerEngine*> ModelEngine::FindLayer(
    absl::string_view name) const {
  MOE_ASSIGN_OR_RETURN(int index, spec_.FindLayer(name));
  return layers_[index].get();
}

absl::Status ModelEngine::WarmUp(int64_t max_tokens) const {
  const absl::Time start = absl::Now();
  const int64_t tokens = std::min(max_tokens, kWarmUpTokens);
  if (layers_.empty() || tokens < 1) return absl::OkStatus();
  at::Tensor x;
  MOE_RETURN_IF_ERROR(common::TorchCall("warm-up input", [&] {
    common::UseIntraOpThreads(1);
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(1);
    x = at::randn({1, tokens, spec_.dim}, gen);
  }));
  RoutingOptions options;
  options.seed = 1;
  NoExperts backend;
  MOE_RETURN_IF_ERROR(layers_[0]->Forward(x, options, backend).status());
  MOE_LOG(INFO) << "warm-up: one forward of " << tokens << " tokens in "
                << absl::FormatDuration(
                       absl::Trunc(absl::Now() - start, absl::Milliseconds(1)));
  return absl::OkStatus();
}

}  // namespace moe::router
