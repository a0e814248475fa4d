#include "common/checkpoint.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <map>
#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/safetensors.h"
#include "common/status_macros.h"
#include "common/torch_convert.h"

namespace moe::common {
namespace {

constexpr const char* kIgnoredPrefixes[] = {"input.", "output.", "expected.",
                                            "alt."};
constexpr const char* kExpertParams[] = {"net.0.weight", "net.0.bias",
                                         "net.1.mult_bias", "net.2.weight",
                                         "net.2.bias"};
constexpr const char* kFeedForwardParams[] = {"net.0.gamma",  "net.1.weight",
                                              "net.1.bias",   "net.2.mult_bias",
                                              "net.3.weight", "net.3.bias"};
constexpr size_t kMaxNamesInMessage = 8;

std::string NameList(const std::vector<std::string>& names) {
  std::vector<std::string> shown(
      names.begin(),
      names.begin() + std::min(names.size(), kMaxNamesInMessage));
  std::string out = absl::StrJoin(shown, ", ");
  if (names.size() > shown.size()) {
    absl::StrAppend(&out, " (and ", names.size() - shown.size(), " more)");
  }
  return out;
}

std::vector<int64_t> ExpertShape(const char* param, int64_t d, int64_t h) {
  const std::string p = param;
  if (p == "net.0.weight") return {2 * h, d};
  if (p == "net.0.bias") return {2 * h};
  if (p == "net.1.mult_bias") return {h};
  if (p == "net.2.weight") return {d, h};
  return {d};  // net.2.bias
}

// The parameters a config implies: name -> shape. Gate spellings are resolved
// against the file; feed-forwards are included when the file has any of them.
class ParamPlan {
 public:
  ParamPlan(const ModelConfig& config, const SafetensorsReader& reader)
      : config_(config), reader_(reader) {}

  absl::Status Build() {
    const int64_t d = config_.dim;
    const std::string p = config_.is_block() ? "moe." : "";
    if (config_.hierarchical()) {
      const int64_t eo = config_.num_experts, ei = config_.num_experts_inner;
      MOE_RETURN_IF_ERROR(ResolveGate(p + "gate_outer.", eo));
      Expect(p + "gate_inner.w_gating", {eo, d, ei});
      inner_gate_ = p + "gate_inner.w_gating";
    } else {
      MOE_RETURN_IF_ERROR(ResolveGate(p + "gate.", config_.num_experts));
    }
    for (int64_t id = 0; id < config_.total_experts(); ++id) {
      const std::string prefix = ExpertParamPrefix(config_, id);
      for (const char* param : kExpertParams) {
        Expect(prefix + param, ExpertShape(param, d, config_.expert_hidden()));
      }
    }
    if (config_.is_block()) {
      Expect("moe_prenorm.gamma", {d});
      for (const char* ff : {"ff_before.", "ff_after."}) {
        if (!HasAnyWithPrefix(ff)) continue;
        has_ff_.insert(ff);
        const int64_t h4 = config_.feed_forward_hidden();
        Expect(absl::StrCat(ff, "net.0.gamma"), {d});
        Expect(absl::StrCat(ff, "net.1.weight"), {2 * h4, d});
        Expect(absl::StrCat(ff, "net.1.bias"), {2 * h4});
        Expect(absl::StrCat(ff, "net.2.mult_bias"), {h4});
        Expect(absl::StrCat(ff, "net.3.weight"), {d, h4});
        Expect(absl::StrCat(ff, "net.3.bias"), {d});
      }
    }
    // Threshold buffers (HEAD): not parameters, but their shape is checked.
    for (const char* buffer : {"threshold_train", "threshold_eval"}) {
      buffers_[absl::StrCat(p, config_.hierarchical() ? "gate_outer." : "gate.",
                            buffer)] = {2};
    }
    return Check();
  }

  const std::string& gate_name() const { return gate_; }
  bool gate_transposed() const { return gate_transposed_; }
  const std::string& inner_gate_name() const { return inner_gate_; }
  bool has_ff(const std::string& prefix) const {
    return has_ff_.count(prefix) != 0;
  }

 private:
  void Expect(const std::string& name, std::vector<int64_t> shape) {
    expected_[name] = std::move(shape);
  }

  bool HasAnyWithPrefix(absl::string_view prefix) const {
    for (const TensorEntry& e : reader_.tensors()) {
      if (absl::StartsWith(e.name, prefix)) return true;
    }
    return false;
  }

  // `prefix` is "gate." or "gate_outer.": accepts to_gates.weight [E, d] or
  // w_gating [d, E], not both.
  absl::Status ResolveGate(const std::string& prefix, int64_t experts) {
    const std::string head = prefix + "to_gates.weight";
    const std::string seed = prefix + "w_gating";
    const bool has_head = reader_.Find(head) != nullptr;
    const bool has_seed = reader_.Find(seed) != nullptr;
    if (has_head && has_seed) {
      return absl::InvalidArgumentError(
          absl::StrCat(reader_.path(), ": both \"", head, "\" and \"", seed,
                       "\" are present; keep one gate spelling"));
    }
    if (has_seed) {
      gate_ = seed;
      gate_transposed_ = true;
      Expect(seed, {config_.dim, experts});
    } else {
      gate_ = head;
      Expect(head, {experts, config_.dim});
    }
    return absl::OkStatus();
  }

  absl::Status Check() const {
    std::vector<std::string> missing, unexpected, shape_errors;
    for (const auto& [name, shape] : expected_) {
      const TensorEntry* e = reader_.Find(name);
      if (e == nullptr) {
        missing.push_back(name);
      } else if (e->shape != shape) {
        shape_errors.push_back(
            absl::StrCat("\"", name, "\" has shape ", ShapeToString(e->shape),
                         ", expected ", ShapeToString(shape)));
      } else if (!IsFloatingPoint(e->dtype)) {
        shape_errors.push_back(absl::StrCat(
            "\"", name, "\" has dtype ", SafetensorsDTypeName(e->dtype),
            ", expected a floating-point type"));
      }
    }
    for (const TensorEntry& e : reader_.tensors()) {
      if (expected_.count(e.name) != 0) continue;
      bool ignored = false;
      for (const char* prefix : kIgnoredPrefixes) {
        ignored = ignored || absl::StartsWith(e.name, prefix);
      }
      auto buffer = buffers_.find(e.name);
      if (buffer != buffers_.end()) {
        if (e.shape != buffer->second) {
          shape_errors.push_back(absl::StrCat(
              "\"", e.name, "\" has shape ", ShapeToString(e.shape),
              ", expected ", ShapeToString(buffer->second)));
        }
        ignored = true;
      }
      if (!ignored) unexpected.push_back(e.name);
    }
    const std::string what = absl::StrCat(
        " (config: kind=", ModelKindName(config_.kind), ", dim=", config_.dim,
        ", num_experts=", config_.num_experts,
        config_.hierarchical() ? absl::StrCat("x", config_.num_experts_inner)
                               : "",
        ", expert hidden=", config_.expert_hidden(), ")");
    if (!shape_errors.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(reader_.path(), ": ", NameList(shape_errors), what));
    }
    if (!missing.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          reader_.path(), ": missing parameters: ", NameList(missing), what));
    }
    if (!unexpected.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(reader_.path(),
                       ": unexpected tensors: ", NameList(unexpected), what));
    }
    return absl::OkStatus();
  }

  const ModelConfig& config_;
  const SafetensorsReader& reader_;
  std::map<std::string, std::vector<int64_t>> expected_;
  std::map<std::string, std::vector<int64_t>> buffers_;
  std::string gate_;
  bool gate_transposed_ = false;
  std::string inner_gate_;
  std::set<std::string> has_ff_;
};

absl::StatusOr<at::Tensor> ReadFloat(const SafetensorsReader& reader,
                                     const std::string& name) {
  MOE_ASSIGN_OR_RETURN(HostTensor host, reader.Read(name));
  MOE_ASSIGN_OR_RETURN(at::Tensor t, ToTorch(host));
  at::Tensor out;
  MOE_RETURN_IF_ERROR(TorchCall("convert parameter",
                                [&] { out = t.to(at::kFloat).contiguous(); }));
  return out;
}

absl::StatusOr<ExpertWeights> ReadExpert(const SafetensorsReader& reader,
                                         const std::string& prefix,
                                         bool feed_forward) {
  ExpertWeights w;
  const char* names[5];
  if (feed_forward) {
    names[0] = "net.1.weight", names[1] = "net.1.bias";
    names[2] = "net.2.mult_bias", names[3] = "net.3.weight";
    names[4] = "net.3.bias";
  } else {
    for (int i = 0; i < 5; ++i) names[i] = kExpertParams[i];
  }
  MOE_ASSIGN_OR_RETURN(w.w1, ReadFloat(reader, prefix + names[0]));
  MOE_ASSIGN_OR_RETURN(w.b1, ReadFloat(reader, prefix + names[1]));
  MOE_ASSIGN_OR_RETURN(w.mult_bias, ReadFloat(reader, prefix + names[2]));
  MOE_ASSIGN_OR_RETURN(w.w2, ReadFloat(reader, prefix + names[3]));
  MOE_ASSIGN_OR_RETURN(w.b2, ReadFloat(reader, prefix + names[4]));
  return w;
}

absl::StatusOr<ModelConfig> ConfigOf(const SafetensorsReader& reader) {
  auto it = reader.metadata().find("config_json");
  if (it == reader.metadata().end()) {
    return absl::InvalidArgumentError(absl::StrCat(
        reader.path(),
        ": no __metadata__[\"config_json\"]; not a moe-serve checkpoint "
        "(tools/export_checkpoint.py makes one from a PyTorch state_dict)"));
  }
  absl::StatusOr<ModelConfig> config = ParseModelConfig(it->second);
  if (!config.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(reader.path(), ": ", config.status().message()));
  }
  return config;
}

absl::Status AddTensor(SafetensorsWriter& writer, const std::string& name,
                       const at::Tensor& t) {
  MOE_ASSIGN_OR_RETURN(HostTensor host, FromTorch(t.contiguous()));
  return writer.Add(name, std::move(host));
}

absl::Status AddExpert(SafetensorsWriter& writer, const std::string& prefix,
                       const ExpertWeights& w, bool feed_forward) {
  const int base = feed_forward ? 1 : 0;
  MOE_RETURN_IF_ERROR(
      AddTensor(writer, absl::StrCat(prefix, "net.", base, ".weight"), w.w1));
  MOE_RETURN_IF_ERROR(
      AddTensor(writer, absl::StrCat(prefix, "net.", base, ".bias"), w.b1));
  MOE_RETURN_IF_ERROR(
      AddTensor(writer, absl::StrCat(prefix, "net.", base + 1, ".mult_bias"),
                w.mult_bias));
  MOE_RETURN_IF_ERROR(AddTensor(
      writer, absl::StrCat(prefix, "net.", base + 2, ".weight"), w.w2));
  return AddTensor(writer, absl::StrCat(prefix, "net.", base + 2, ".bias"),
                   w.b2);
}

}  // namespace

std::string ExpertParamPrefix(const ModelConfig& config, int64_t id) {
  const std::string p = config.is_block() ? "moe." : "";
  if (config.hierarchical()) {
    return absl::StrCat(p, "experts.", id / config.num_experts_inner,
                        ".experts.", id % config.num_experts_inner, ".");
  }
  return absl::StrCat(p, "experts.experts.", id, ".");
}

absl::StatusOr<ModelConfig> ReadCheckpointConfig(const std::string& path) {
  MOE_ASSIGN_OR_RETURN(auto reader, SafetensorsReader::Open(path));
  return ConfigOf(*reader);
}

absl::StatusOr<Checkpoint> LoadCheckpoint(const std::string& path,
                                          const LoadOptions& options) {
  MOE_ASSIGN_OR_RETURN(auto reader, SafetensorsReader::Open(path));
  Checkpoint ckpt;
  ckpt.path = path;
  MOE_ASSIGN_OR_RETURN(ckpt.config, ConfigOf(*reader));
  const ModelConfig& config = ckpt.config;
  ParamPlan plan(config, *reader);
  MOE_RETURN_IF_ERROR(plan.Build());

  if (options.router) {
    MOE_ASSIGN_OR_RETURN(at::Tensor gate, ReadFloat(*reader, plan.gate_name()));
    if (plan.gate_transposed()) gate = gate.t().contiguous();
    ckpt.router.gate = gate;
    if (config.hierarchical()) {
      MOE_ASSIGN_OR_RETURN(at::Tensor inner,
                           ReadFloat(*reader, plan.inner_gate_name()));
      // [Eo, d, Ei] -> [Eo, Ei, d]
      ckpt.router.inner_gate = inner.transpose(1, 2).contiguous();
    }
    if (config.is_block()) {
      MOE_ASSIGN_OR_RETURN(ckpt.router.prenorm_gamma,
                           ReadFloat(*reader, "moe_prenorm.gamma"));
      for (const std::string ff : {"ff_before.", "ff_after."}) {
        if (!plan.has_ff(ff)) continue;
        FeedForwardWeights w;
        MOE_ASSIGN_OR_RETURN(w.gamma, ReadFloat(*reader, ff + "net.0.gamma"));
        MOE_ASSIGN_OR_RETURN(w.geglu,
                             ReadExpert(*reader, ff, /*feed_forward=*/true));
        (ff == "ff_before." ? ckpt.router.ff_before : ckpt.router.ff_after) =
            std::move(w);
      }
    }
  }

  std::vector<int64_t> ids;
  if (options.experts.has_value()) {
    ids = *options.experts;
  } else {
    for (int64_t id = 0; id < config.total_experts(); ++id) ids.push_back(id);
  }
  for (int64_t id : ids) {
    if (id < 0 || id >= config.total_experts()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": expert ", id, " requested but the model has ",
                       config.total_experts(), " experts (ids 0..",
                       config.total_experts() - 1, ")"));
    }
    if (ckpt.experts.count(id) != 0) continue;
    MOE_ASSIGN_OR_RETURN(
        ExpertWeights w,
        ReadExpert(*reader, ExpertParamPrefix(config, id), false));
    ckpt.experts.emplace(id, std::move(w));
  }
  return ckpt;
}

absl::Status WriteCheckpoint(const std::string& path, const ModelConfig& config,
                             const RouterWeights& router,
                             const ExpertMap& experts) {
  MOE_RETURN_IF_ERROR(ValidateModelConfig(config));
  SafetensorsWriter writer;
  writer.SetMetadata("config_json", config.ToJson());
  writer.SetMetadata("format", "moe-serve-checkpoint-v1");
  const std::string p = config.is_block() ? "moe." : "";
  if (config.hierarchical()) {
    MOE_RETURN_IF_ERROR(
        AddTensor(writer, p + "gate_outer.w_gating", router.gate.t()));
    MOE_RETURN_IF_ERROR(AddTensor(writer, p + "gate_inner.w_gating",
                                  router.inner_gate.transpose(1, 2)));
  } else {
    MOE_RETURN_IF_ERROR(
        AddTensor(writer, p + "gate.to_gates.weight", router.gate));
  }
  if (config.is_block()) {
    MOE_RETURN_IF_ERROR(
        AddTensor(writer, "moe_prenorm.gamma", router.prenorm_gamma));
    if (router.ff_before) {
      MOE_RETURN_IF_ERROR(
          AddTensor(writer, "ff_before.net.0.gamma", router.ff_before->gamma));
      MOE_RETURN_IF_ERROR(
          AddExpert(writer, "ff_before.", router.ff_before->geglu, true));
    }
    if (router.ff_after) {
      MOE_RETURN_IF_ERROR(
          AddTensor(writer, "ff_after.net.0.gamma", router.ff_after->gamma));
      MOE_RETURN_IF_ERROR(
          AddExpert(writer, "ff_after.", router.ff_after->geglu, true));
    }
  }
  for (int64_t id = 0; id < config.total_experts(); ++id) {
    auto it = experts.find(id);
    if (it == experts.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("WriteCheckpoint: expert ", id, " is missing"));
    }
    MOE_RETURN_IF_ERROR(
        AddExpert(writer, ExpertParamPrefix(config, id), it->second, false));
  }
  return writer.WriteFile(path);
}

}  // namespace moe::common
