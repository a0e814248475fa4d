#include "common/torch/checkpoint_weights.h"

#include <ATen/ATen.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/torch/torch_convert.h"

namespace moe::common {
namespace {

absl::StatusOr<at::Tensor> ReadTensor(const Checkpoint& ckpt,
                                      const std::string& name) {
  MOE_ASSIGN_OR_RETURN(HostTensor host, ckpt.ReadParameter(name));
  return ToTorch(host);
}

// The five GEGLU tensors below `prefix`: an expert's net.{0,1,2} or a
// feed-forward's net.{1,2,3} (whose net.0 is the norm).
absl::StatusOr<ExpertWeights> ReadGeglu(const Checkpoint& ckpt,
                                        const std::string& prefix,
                                        bool feed_forward) {
  const char* const* names =
      feed_forward ? kFeedForwardParams + 1 : kExpertParams;
  ExpertWeights w;
  MOE_ASSIGN_OR_RETURN(w.w1, ReadTensor(ckpt, prefix + names[0]));
  MOE_ASSIGN_OR_RETURN(w.b1, ReadTensor(ckpt, prefix + names[1]));
  MOE_ASSIGN_OR_RETURN(w.mult_bias, ReadTensor(ckpt, prefix + names[2]));
  MOE_ASSIGN_OR_RETURN(w.w2, ReadTensor(ckpt, prefix + names[3]));
  MOE_ASSIGN_OR_RETURN(w.b2, ReadTensor(ckpt, prefix + names[4]));
  return w;
}

absl::Status Add(std::map<std::string, HostTensor>& out,
                 const std::string& name, const at::Tensor& t) {
  MOE_ASSIGN_OR_RETURN(HostTensor host, FromTorch(t.contiguous()));
  out[name] = std::move(host);
  return absl::OkStatus();
}

absl::Status AddGeglu(std::map<std::string, HostTensor>& out,
                      const std::string& prefix, const ExpertWeights& w,
                      bool feed_forward) {
  const char* const* names =
      feed_forward ? kFeedForwardParams + 1 : kExpertParams;
  MOE_RETURN_IF_ERROR(Add(out, prefix + names[0], w.w1));
  MOE_RETURN_IF_ERROR(Add(out, prefix + names[1], w.b1));
  MOE_RETURN_IF_ERROR(Add(out, prefix + names[2], w.mult_bias));
  MOE_RETURN_IF_ERROR(Add(out, prefix + names[3], w.w2));
  return Add(out, prefix + names[4], w.b2);
}

// The tensors of `layers` by full name (may throw c10::Error).
absl::Status CollectTensors(const ModelSpec& spec,
                            const std::vector<LayerWeights>& layers,
                            std::map<std::string, HostTensor>& tensors) {
  for (size_t l = 0; l < layers.size(); ++l) {
    const LayerSpec& layer = spec.layers[l];
    const LayerConfig& c = layer.config;
    const RouterWeights& r = layers[l].router;
    const std::string p = layer.prefix();
    const std::string moe = p + (c.is_block() ? "moe." : "");
    if (c.hierarchical()) {
      MOE_RETURN_IF_ERROR(
          Add(tensors, moe + "gate_outer.w_gating", r.gate.t()));
      MOE_RETURN_IF_ERROR(Add(tensors, moe + "gate_inner.w_gating",
                              r.inner_gate.transpose(1, 2)));
    } else {
      MOE_RETURN_IF_ERROR(Add(tensors, moe + "gate.to_gates.weight", r.gate));
    }
    if (c.is_block()) {
      MOE_RETURN_IF_ERROR(
          Add(tensors, p + "moe_prenorm.gamma", r.prenorm_gamma));
      for (const auto* ff : {&r.ff_before, &r.ff_after}) {
        if (!ff->has_value()) continue;
        const std::string prefix =
            p + (ff == &r.ff_before ? "ff_before." : "ff_after.");
        MOE_RETURN_IF_ERROR(
            Add(tensors, prefix + kFeedForwardParams[0], (*ff)->gamma));
        MOE_RETURN_IF_ERROR(
            AddGeglu(tensors, prefix, (*ff)->geglu, /*feed_forward=*/true));
      }
    }
    for (int64_t id = 0; id < c.total_experts(); ++id) {
      auto it = layers[l].experts.find(id);
      if (it == layers[l].experts.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat("WriteLayerWeights: layer \"", layer.name,
                         "\" expert ", id, " is missing"));
      }
      MOE_RETURN_IF_ERROR(AddGeglu(tensors, ExpertParamPrefix(layer, id),
                                   it->second, /*feed_forward=*/false));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<RouterWeights> LoadRouterWeights(const Checkpoint& ckpt,
                                                int layer) {
  if (layer < 0 || layer >= static_cast<int>(ckpt.spec().layers.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat(ckpt.path(), ": no layer ", layer));
  }
  const LayerParams& p = ckpt.layer_params(layer);
  RouterWeights w;
  MOE_ASSIGN_OR_RETURN(w.gate, ReadTensor(ckpt, p.gate));
  MOE_RETURN_IF_ERROR(TorchCall("load gates", [&] {
    if (p.gate_transposed) w.gate = w.gate.t().contiguous();
  }));
  if (!p.inner_gate.empty()) {
    MOE_ASSIGN_OR_RETURN(at::Tensor inner, ReadTensor(ckpt, p.inner_gate));
    // [Eo, d, Ei] -> [Eo, Ei, d]
    MOE_RETURN_IF_ERROR(TorchCall("load gates", [&] {
      w.inner_gate = inner.transpose(1, 2).contiguous();
    }));
  }
  if (!p.prenorm_gamma.empty()) {
    MOE_ASSIGN_OR_RETURN(w.prenorm_gamma, ReadTensor(ckpt, p.prenorm_gamma));
  }
  for (const std::string* ff : {&p.ff_before, &p.ff_after}) {
    if (ff->empty()) continue;
    FeedForwardWeights f;
    MOE_ASSIGN_OR_RETURN(f.gamma,
                         ReadTensor(ckpt, *ff + kFeedForwardParams[0]));
    MOE_ASSIGN_OR_RETURN(f.geglu, ReadGeglu(ckpt, *ff, /*feed_forward=*/true));
    (ff == &p.ff_before ? w.ff_before : w.ff_after) = std::move(f);
  }
  return w;
}

absl::StatusOr<ExpertWeights> LoadExpertWeights(const Checkpoint& ckpt,
                                                ExpertKey key) {
  const std::vector<LayerSpec>& layers = ckpt.spec().layers;
  if (key.layer < 0 || key.layer >= static_cast<int>(layers.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat(ckpt.path(), ": no layer ", key.layer));
  }
  const LayerSpec& layer = layers[key.layer];
  const int64_t total = layer.config.total_experts();
  if (key.expert < 0 || key.expert >= total) {
    return absl::InvalidArgumentError(absl::StrCat(
        ckpt.path(), ": expert ", key.expert, " requested but layer \"",
        layer.name, "\" has ", total, " experts (ids 0..", total - 1, ")"));
  }
  return ReadGeglu(ckpt, ExpertParamPrefix(layer, key.expert),
                   /*feed_forward=*/false);
}

absl::StatusOr<std::vector<ExpertMap>> LoadAllExperts(const Checkpoint& ckpt) {
  std::vector<ExpertMap> out(ckpt.spec().layers.size());
  for (size_t l = 0; l < out.size(); ++l) {
    const int64_t total = ckpt.spec().layers[l].config.total_experts();
    for (int64_t e = 0; e < total; ++e) {
      MOE_ASSIGN_OR_RETURN(
          out[l][e],
          LoadExpertWeights(ckpt, ExpertKey{static_cast<int32_t>(l), e}));
    }
  }
  return out;
}

absl::Status WriteLayerWeights(const std::string& path, const ModelSpec& spec,
                               const std::vector<LayerWeights>& layers) {
  if (layers.size() != spec.layers.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("WriteLayerWeights: ", layers.size(),
                     " layers of weights for ", spec.layers.size(), " layers"));
  }
  std::map<std::string, HostTensor> tensors;
  absl::Status collected;
  MOE_RETURN_IF_ERROR(TorchCall("WriteLayerWeights", [&] {
    collected = CollectTensors(spec, layers, tensors);
  }));
  MOE_RETURN_IF_ERROR(collected);
  return WriteCheckpoint(path, spec, std::move(tensors));
}

}  // namespace moe::common
