#include "experts/expert_shard.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace moe::experts {

absl::Status ExpertShard::CheckSegments(
    int64_t rows, absl::Span<const common::ExpertSegment> segments) const {
  for (size_t i = 0; i < segments.size(); ++i) {
    const common::ExpertSegment& s = segments[i];
    if (!Hosts(s.key)) {
      return absl::FailedPreconditionError(
          absl::StrCat("segments[", i, "]: expert ", s.key.expert, " of layer ",
                       s.key.layer, " is not hosted here"));
    }
    if (s.offset < 0 || s.count < 0 || s.offset > rows ||
        s.count > rows - s.offset) {
      return absl::InvalidArgumentError(
          absl::StrCat("segments[", i, "]: rows [", s.offset, ", +", s.count,
                       ") lie outside the ", rows, " token rows"));
    }
  }
  return absl::OkStatus();
}

absl::Status ExpertShard::Run(const TokenRows& tokens,
                              absl::Span<const common::ExpertSegment> segments,
                              float* out, RunStats* stats) const {
  if (tokens.rows < 0 || (tokens.rows > 0 && tokens.data == nullptr)) {
    return absl::InvalidArgumentError("expert tokens: no rows");
  }
  if (tokens.dtype != common::DType::kFloat32 &&
      tokens.dtype != common::DType::kBFloat16 &&
      tokens.dtype != common::DType::kFloat16) {
    return absl::InvalidArgumentError(absl::StrCat(
        "expert tokens: dtype ", common::SafetensorsDTypeName(tokens.dtype),
        " is not float32, bfloat16 or float16"));
  }
  MOE_RETURN_IF_ERROR(CheckSegments(tokens.rows, segments));
  if (stats != nullptr) *stats = RunStats{std::vector<double>(segments.size())};
  return RunChecked(tokens, segments, out, stats);
}

}  // namespace moe::experts
