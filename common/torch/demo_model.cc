#include "common/torch/demo_model.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/torch/checkpoint_weights.h"
#include "common/torch/torch_convert.h"

namespace moe::common {
namespace {

at::Tensor Uniform(at::IntArrayRef shape, double bound, at::Generator& gen) {
  return at::empty(shape, at::kFloat).uniform_(-bound, bound, gen);
}

ExpertWeights RandomGeglu(int64_t d, int64_t h, at::Generator& gen) {
  ExpertWeights w;
  const double b1 = 1.0 / std::sqrt(static_cast<double>(2 * h));
  const double b2 = 1.0 / std::sqrt(static_cast<double>(d));
  w.w1 = Uniform({2 * h, d}, b1, gen);
  w.b1 = Uniform({2 * h}, b1, gen);
  w.mult_bias = at::ones({h}, at::kFloat);
  w.w2 = Uniform({d, h}, b2, gen);
  w.b2 = Uniform({d}, b2, gen);
  return w;
}

}  // namespace

LayerConfig DefaultDemoConfig() {
  LayerConfig c;
  c.kind = LayerKind::kMoe;
  c.dim = 512;
  c.num_experts = 16;
  c.hidden_mult = 4;
  c.threshold_train = 0.2;
  c.threshold_eval = 0.2;
  c.capacity_factor_train = 1.25;
  c.capacity_factor_eval = 2.0;
  c.balance_loss_coef = 1e-2;
  c.router_z_loss_coef = 1e-3;
  return c;
}

ModelSpec DemoModelSpec(const LayerConfig& config, int layers) {
  ModelSpec spec;
  spec.name = "demo";
  spec.dim = config.dim;
  for (int i = 0; i < layers; ++i) {
    spec.layers.push_back(
        {layers == 1 ? "" : absl::StrCat("layers.", i, ".ff"), config});
  }
  return spec;
}

absl::StatusOr<LayerWeights> BuildDemoLayer(const LayerConfig& config,
                                            uint64_t seed) {
  MOE_RETURN_IF_ERROR(ValidateLayerConfig(config));
  LayerWeights model;
  MOE_RETURN_IF_ERROR(TorchCall("BuildDemoModel", [&] {
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    const int64_t d = config.dim;
    if (config.hierarchical()) {
      model.router.gate = at::randn({config.num_experts, d}, gen);
      model.router.inner_gate =
          at::randn({config.num_experts, config.num_experts_inner, d}, gen);
    } else {
      model.router.gate = Uniform({config.num_experts, d},
                                  1.0 / std::sqrt(static_cast<double>(d)), gen);
    }
    if (config.is_block()) {
      model.router.prenorm_gamma = at::ones({d}, at::kFloat);
      for (auto* ff : {&model.router.ff_before, &model.router.ff_after}) {
        FeedForwardWeights w;
        w.gamma = at::ones({d}, at::kFloat);
        w.geglu = RandomGeglu(d, config.feed_forward_hidden(), gen);
        *ff = std::move(w);
      }
    }
    for (int64_t id = 0; id < config.total_experts(); ++id) {
      model.experts[id] = RandomGeglu(d, config.expert_hidden(), gen);
    }
  }));
  return model;
}

absl::Status WriteDemoCheckpoint(const std::string& path,
                                 const LayerConfig& config, int layers,
                                 uint64_t seed) {
  if (layers < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("a model needs at least one layer, not ", layers));
  }
  const ModelSpec spec = DemoModelSpec(config, layers);
  std::vector<LayerWeights> weights;
  for (int i = 0; i < layers; ++i) {
    MOE_ASSIGN_OR_RETURN(LayerWeights w, BuildDemoLayer(config, seed + i));
    weights.push_back(std::move(w));
  }
  return WriteLayerWeights(path, spec, weights);
}

}  // namespace moe::common
