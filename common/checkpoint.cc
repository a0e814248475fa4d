#include "common/checkpoint.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/fingerprint.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace moe::common {
namespace {

using Json = nlohmann::json;

constexpr const char* kTestVectorPrefixes[] = {"input.", "output.", "expected.",
                                               "alt."};
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

std::vector<int64_t> ExpertShape(absl::string_view param, int64_t d,
                                 int64_t h) {
  if (param == "net.0.weight") return {2 * h, d};
  if (param == "net.0.bias") return {2 * h};
  if (param == "net.1.mult_bias") return {h};
  if (param == "net.2.weight") return {d, h};
  return {d};  // net.2.bias
}

std::string Describe(const LayerSpec& layer) {
  const LayerConfig& c = layer.config;
  return absl::StrCat(
      " (layer ", layer.name.empty() ? "(unnamed)" : "\"" + layer.name + "\"",
      ": kind=", LayerKindName(c.kind), ", dim=", c.dim,
      ", num_experts=", c.num_experts,
      c.hierarchical() ? absl::StrCat("x", c.num_experts_inner) : "",
      ", expert hidden=", c.expert_hidden(), ")");
}

// The tensors one layer implies (full name -> shape), with the gate spelling
// and the feed-forwards resolved against the file.
class LayerPlan {
 public:
  LayerPlan(const LayerSpec& layer, const SafetensorsReader& reader)
      : layer_(layer), reader_(reader) {}

  absl::Status Build() {
    const LayerConfig& c = layer_.config;
    const int64_t d = c.dim;
    const std::string p = layer_.prefix();
    const std::string moe = p + (c.is_block() ? "moe." : "");
    if (c.hierarchical()) {
      MOE_RETURN_IF_ERROR(ResolveGate(moe + "gate_outer.", c.num_experts));
      params_.inner_gate = moe + "gate_inner.w_gating";
      Expect(params_.inner_gate, {c.num_experts, d, c.num_experts_inner});
    } else {
      MOE_RETURN_IF_ERROR(ResolveGate(moe + "gate.", c.num_experts));
    }
    for (int64_t id = 0; id < c.total_experts(); ++id) {
      const std::string prefix = ExpertParamPrefix(layer_, id);
      for (const char* param : kExpertParams) {
        Expect(prefix + param, ExpertShape(param, d, c.expert_hidden()));
      }
    }
    if (c.is_block()) {
      params_.prenorm_gamma = p + "moe_prenorm.gamma";
      Expect(params_.prenorm_gamma, {d});
      for (std::string* ff : {&params_.ff_before, &params_.ff_after}) {
        const std::string prefix =
            p + (ff == &params_.ff_before ? "ff_before." : "ff_after.");
        if (!HasAnyWithPrefix(prefix)) continue;
        *ff = prefix;
        const int64_t h4 = c.feed_forward_hidden();
        Expect(prefix + "net.0.gamma", {d});
        Expect(prefix + "net.1.weight", {2 * h4, d});
        Expect(prefix + "net.1.bias", {2 * h4});
        Expect(prefix + "net.2.mult_bias", {h4});
        Expect(prefix + "net.3.weight", {d, h4});
        Expect(prefix + "net.3.bias", {d});
      }
    }
    // Threshold buffers (HEAD): not parameters, but their shape is checked.
    for (const char* buffer : {"threshold_train", "threshold_eval"}) {
      buffers_[absl::StrCat(moe, c.hierarchical() ? "gate_outer." : "gate.",
                            buffer)] = {2};
    }
    return Check();
  }

  const LayerParams& params() const { return params_; }
  bool Claims(const std::string& name) const {
    return expected_.count(name) != 0 || buffers_.count(name) != 0;
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

  // `prefix` ends in "gate." or "gate_outer.": accepts to_gates.weight
  // [E, d] or w_gating [d, E], not both.
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
      params_.gate = seed;
      params_.gate_transposed = true;
      Expect(seed, {layer_.config.dim, experts});
    } else {
      params_.gate = head;
      Expect(head, {experts, layer_.config.dim});
    }
    return absl::OkStatus();
  }

  absl::Status Check() const {
    std::vector<std::string> missing, shape_errors;
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
    for (const auto& [name, shape] : buffers_) {
      const TensorEntry* e = reader_.Find(name);
      if (e != nullptr && e->shape != shape) {
        shape_errors.push_back(
            absl::StrCat("\"", name, "\" has shape ", ShapeToString(e->shape),
                         ", expected ", ShapeToString(shape)));
      }
    }
    if (!shape_errors.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          reader_.path(), ": ", NameList(shape_errors), Describe(layer_)));
    }
    if (!missing.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          reader_.path(), ": missing parameters: ", NameList(missing),
          Describe(layer_)));
    }
    return absl::OkStatus();
  }

  const LayerSpec& layer_;
  const SafetensorsReader& reader_;
  std::map<std::string, std::vector<int64_t>> expected_;
  std::map<std::string, std::vector<int64_t>> buffers_;
  LayerParams params_;
};

std::string FileStem(const std::string& path) {
  return std::filesystem::path(path).stem().string();
}

absl::StatusOr<std::map<std::string, std::string>> StoredDigests(
    const SafetensorsReader& reader) {
  std::map<std::string, std::string> out;
  auto it = reader.metadata().find("tensor_sha256");
  if (it == reader.metadata().end()) return out;
  Json root = Json::parse(it->second, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded() || !root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(reader.path(),
                     ": __metadata__[\"tensor_sha256\"] is not a JSON "
                     "object of tensor name -> SHA-256"));
  }
  for (auto e = root.begin(); e != root.end(); ++e) {
    if (!e.value().is_string() || e.value().get<std::string>().size() != 64) {
      return absl::InvalidArgumentError(
          absl::StrCat(reader.path(), ": tensor_sha256[\"", e.key(),
                       "\"] is not a SHA-256 hex digest"));
    }
    out[e.key()] = e.value().get<std::string>();
  }
  return out;
}

}  // namespace

bool IsTestVector(absl::string_view name) {
  for (const char* prefix : kTestVectorPrefixes) {
    if (absl::StartsWith(name, prefix)) return true;
  }
  return false;
}

std::string ExpertParamPrefix(const LayerSpec& layer, int64_t id) {
  const LayerConfig& c = layer.config;
  const std::string p = layer.prefix() + (c.is_block() ? "moe." : "");
  if (c.hierarchical()) {
    // The inverse of FlatExpertId.
    return absl::StrCat(p, "experts.", id / c.num_experts_inner, ".experts.",
                        id % c.num_experts_inner, ".");
  }
  return absl::StrCat(p, "experts.experts.", id, ".");
}

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(
    const std::string& path) {
  auto ckpt = std::unique_ptr<Checkpoint>(new Checkpoint());
  MOE_ASSIGN_OR_RETURN(ckpt->reader_, SafetensorsReader::Open(path));
  const SafetensorsReader& reader = *ckpt->reader_;
  auto config = reader.metadata().find("config_json");
  if (config == reader.metadata().end()) {
    return absl::InvalidArgumentError(absl::StrCat(
        path,
        ": no __metadata__[\"config_json\"]; not a moe-serve checkpoint "
        "(tools/export_checkpoint.py makes one from a PyTorch state_dict)"));
  }
  absl::StatusOr<ModelSpec> spec =
      ParseModelSpec(config->second, FileStem(path));
  if (!spec.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", spec.status().message()));
  }
  ckpt->spec_ = std::move(*spec);

  // Every layer's tensors, then whatever no layer claims.
  std::vector<LayerPlan> plans;
  plans.reserve(ckpt->spec_.layers.size());
  for (const LayerSpec& layer : ckpt->spec_.layers) {
    plans.emplace_back(layer, reader);
    MOE_RETURN_IF_ERROR(plans.back().Build());
    ckpt->params_.push_back(plans.back().params());
  }
  std::vector<std::string> unexpected;
  std::vector<TensorDigest> digests;
  for (const TensorEntry& e : reader.tensors()) {
    if (IsTestVector(e.name)) continue;
    digests.push_back({e.name, e.dtype, e.shape, ""});
    bool claimed = false;
    for (const LayerPlan& plan : plans)
      claimed = claimed || plan.Claims(e.name);
    if (!claimed) unexpected.push_back(e.name);
  }
  if (!unexpected.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": unexpected tensors: ", NameList(unexpected),
                     " (the model's layers: ", ckpt->spec_.LayerNames(), ")"));
  }

  MOE_ASSIGN_OR_RETURN(ckpt->digests_, StoredDigests(reader));
  ckpt->stored_ = !ckpt->digests_.empty();
  for (TensorDigest& d : digests) {
    if (ckpt->stored_) {
      auto it = ckpt->digests_.find(d.name);
      if (it == ckpt->digests_.end()) {
        return absl::InvalidArgumentError(absl::StrCat(
            path, ": tensor_sha256 has no digest for \"", d.name, "\""));
      }
      d.sha256 = it->second;
    } else {
      MOE_ASSIGN_OR_RETURN(HostTensor t, reader.Read(d.name));
      d.sha256 = Sha256Hex(t.data);
      ckpt->digests_[d.name] = d.sha256;
    }
  }
  ckpt->fingerprint_ = ModelFingerprint(config->second, digests);
  auto stored = reader.metadata().find("fingerprint");
  if (stored != reader.metadata().end() &&
      stored->second != ckpt->fingerprint_) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": the stored fingerprint ", stored->second,
        " does not match the file's config and tensor digests (",
        ckpt->fingerprint_, "): the file was modified after export"));
  }
  return ckpt;
}

absl::StatusOr<HostTensor> Checkpoint::ReadParameter(
    const std::string& name) const {
  MOE_ASSIGN_OR_RETURN(HostTensor raw, reader_->Read(name));
  auto digest = digests_.find(name);
  if (digest == digests_.end() || Sha256Hex(raw.data) != digest->second) {
    return absl::DataLossError(absl::StrCat(
        path(), ": tensor \"", name,
        "\" does not match its SHA-256 digest (the file is corrupt or was "
        "modified)"));
  }
  if (!IsFloatingPoint(raw.dtype)) {
    return absl::InvalidArgumentError(
        absl::StrCat(path(), ": tensor \"", name, "\" is not floating point"));
  }
  MOE_ASSIGN_OR_RETURN(const int64_t n, NumElements(raw.shape));
  HostTensor out;
  out.shape = raw.shape;
  out.data.resize(static_cast<size_t>(n) * sizeof(float));
  float* values = reinterpret_cast<float*>(out.data.data());
  ConvertToFloat32(raw.dtype, raw.data.data(), n, values);
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(values[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat(path(), ": tensor \"", name, "\" holds ", values[i],
                       " at flat index ", i, "; weights must be finite"));
    }
  }
  return out;
}

absl::Status WriteCheckpoint(const std::string& path, const ModelSpec& spec,
                             std::map<std::string, HostTensor> tensors) {
  MOE_RETURN_IF_ERROR(ValidateModelSpec(spec));
  const std::string config_json = spec.ToJson();
  std::vector<TensorDigest> digests;
  Json sha = Json::object();
  for (const auto& [name, t] : tensors) {
    if (IsTestVector(name)) continue;
    digests.push_back({name, t.dtype, t.shape, Sha256Hex(t.data)});
    sha[name] = digests.back().sha256;
  }
  SafetensorsWriter writer;
  writer.SetMetadata("config_json", config_json);
  writer.SetMetadata("format", "moe-serve-checkpoint-v1");
  writer.SetMetadata("tensor_sha256", sha.dump());
  writer.SetMetadata("fingerprint", ModelFingerprint(config_json, digests));
  for (auto& [name, t] : tensors) {
    MOE_RETURN_IF_ERROR(writer.Add(name, std::move(t)));
  }
  // Checked before it replaces `path`.
  const std::string tmp = absl::StrCat(path, ".new.", ::getpid());
  MOE_RETURN_IF_ERROR(writer.WriteFile(tmp));
  absl::StatusOr<std::unique_ptr<Checkpoint>> check = Checkpoint::Open(tmp);
  if (!check.ok()) {
    std::remove(tmp.c_str());
    return check.status();
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp.c_str());
    return absl::InternalError(
        absl::StrCat(path, ": cannot write: ", std::strerror(err)));
  }
  return absl::OkStatus();
}

}  // namespace moe::common
