#include "experts/host_experts.h"

#include <chrono>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace moe::experts {
namespace {

absl::StatusOr<std::vector<float>> ReadFloats(const common::Checkpoint& ckpt,
                                              const std::string& name) {
  MOE_ASSIGN_OR_RETURN(common::HostTensor t, ckpt.ReadParameter(name));
  std::vector<float> out(t.data.size() / sizeof(float));
  common::ConvertToFloat32(common::DType::kFloat32, t.data.data(),
                           static_cast<int64_t>(out.size()), out.data());
  return out;
}

}  // namespace

absl::StatusOr<gpu::HostExpert> LoadHostExpert(const common::Checkpoint& ckpt,
                                               common::ExpertKey key) {
  const std::vector<common::LayerSpec>& layers = ckpt.spec().layers;
  if (key.layer < 0 || key.layer >= static_cast<int>(layers.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat(ckpt.path(), ": no layer ", key.layer));
  }
  const common::LayerSpec& layer = layers[key.layer];
  const int64_t total = layer.config.total_experts();
  if (key.expert < 0 || key.expert >= total) {
    return absl::InvalidArgumentError(absl::StrCat(
        ckpt.path(), ": expert ", key.expert, " requested but layer \"",
        layer.name, "\" has ", total, " experts (ids 0..", total - 1, ")"));
  }
  const std::string prefix = common::ExpertParamPrefix(layer, key.expert);
  gpu::HostExpert e;
  e.dim = ckpt.spec().dim;
  e.hidden = layer.config.expert_hidden();
  std::vector<float>* arrays[5] = {&e.w1, &e.b1, &e.mult_bias, &e.w2, &e.b2};
  for (int i = 0; i < 5; ++i) {
    MOE_ASSIGN_OR_RETURN(*arrays[i],
                         ReadFloats(ckpt, prefix + common::kExpertParams[i]));
  }
  if (!gpu::WellFormed(e)) {
    return absl::InvalidArgumentError(absl::StrCat(
        ckpt.path(), ": ", prefix, "*: the shapes of its tensors disagree"));
  }
  return e;
}

absl::StatusOr<HostExpertMap> LoadHostExperts(
    const common::Checkpoint& ckpt, const common::ExpertSet& experts) {
  if (experts.empty()) {
    return absl::InvalidArgumentError("no expert to load");
  }
  HostExpertMap out;
  for (const common::ExpertKey& key : experts.keys()) {
    MOE_ASSIGN_OR_RETURN(out[key], LoadHostExpert(ckpt, key));
  }
  return out;
}

absl::StatusOr<std::unique_ptr<ReferenceExpertShard>>
ReferenceExpertShard::Create(HostExpertMap experts) {
  if (experts.empty()) {
    return absl::InvalidArgumentError("a host shard needs at least one expert");
  }
  const int64_t dim = experts.begin()->second.dim;
  int64_t bytes = 0;
  for (const auto& [key, e] : experts) {
    if (!gpu::WellFormed(e) || e.dim != dim) {
      return absl::InvalidArgumentError(absl::StrCat(
          "expert ", key.expert, " of layer ", key.layer,
          ": its arrays do not match its dim and hidden size, or its dim ",
          "differs from the others'"));
    }
    bytes +=
        static_cast<int64_t>((e.w1.size() + e.b1.size() + e.mult_bias.size() +
                              e.w2.size() + e.b2.size()) *
                             sizeof(float));
  }
  return std::unique_ptr<ReferenceExpertShard>(
      new ReferenceExpertShard(std::move(experts), dim, bytes));
}

common::ExpertSet ReferenceExpertShard::experts() const {
  common::ExpertSet out;
  for (const auto& [key, unused] : experts_) out.Add(key);
  return out;
}

absl::Status ReferenceExpertShard::RunChecked(
    const TokenRows& tokens, absl::Span<const common::ExpertSegment> segments,
    float* out, RunStats* stats) const {
  const auto call_start = std::chrono::steady_clock::now();
  std::vector<float> rows;
  for (size_t i = 0; i < segments.size(); ++i) {
    const common::ExpertSegment& s = segments[i];
    if (s.count == 0) continue;
    const auto start = std::chrono::steady_clock::now();
    const size_t element = common::ElementSize(tokens.dtype);
    rows.resize(static_cast<size_t>(s.count * dim_));
    common::ConvertToFloat32(
        tokens.dtype,
        static_cast<const char*>(tokens.data) + s.offset * dim_ * element,
        s.count * dim_, rows.data());
    gpu::ReferenceForward(experts_.at(s.key), rows.data(), s.count,
                          out + s.offset * dim_);
    if (stats != nullptr) {
      stats->segment_seconds[i] = std::chrono::duration<double>(
                                      std::chrono::steady_clock::now() - start)
                                      .count();
    }
  }
  if (stats != nullptr) {
    stats->compute_seconds = std::chrono::duration<double>(
                                 std::chrono::steady_clock::now() - call_start)
                                 .count();
  }
  return absl::OkStatus();
}

}  // namespace moe::experts
