#include "router/engine/model_engine.h"

#include "common/status_macros.h"
#include "common/torch/checkpoint_weights.h"

namespace moe::router {

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

absl::StatusOr<const LayerEngine*> ModelEngine::FindLayer(
    absl::string_view name) const {
  MOE_ASSIGN_OR_RETURN(int index, spec_.FindLayer(name));
  return layers_[index].get();
}

}  // namespace moe::router
