#include "experts/composite_shard.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace moe::experts {

absl::StatusOr<std::unique_ptr<CompositeShard>> CompositeShard::Create(
    int64_t dim, std::vector<std::shared_ptr<const ExpertShard>> parts) {
  common::ExpertSet all;
  for (size_t i = 0; i < parts.size(); ++i) {
    const ExpertShard& p = *parts[i];
    if (p.dim() != dim) {
      return absl::InvalidArgumentError(
          absl::StrCat("expert part ", i, " has dim ", p.dim(), ", not ", dim));
    }
    if (p.device() != parts[0]->device() ||
        p.compute_dtype() != parts[0]->compute_dtype()) {
      return absl::InvalidArgumentError(
          absl::StrCat("expert part ", i, " runs on ", p.device().ToString(),
                       " in ", common::DTypeName(p.compute_dtype()),
                       "; part 0 on ", parts[0]->device().ToString(), " in ",
                       common::DTypeName(parts[0]->compute_dtype())));
    }
    for (const common::ExpertKey& key : p.experts().keys()) {
      if (all.Contains(key)) {
        return absl::InvalidArgumentError(absl::StrCat("expert ", key.expert,
                                                       " of layer ", key.layer,
                                                       " is in two parts"));
      }
      all.Add(key);
    }
  }
  return std::unique_ptr<CompositeShard>(
      new CompositeShard(dim, std::move(parts), std::move(all)));
}

bool CompositeShard::Hosts(common::ExpertKey key) const {
  return experts_.Contains(key);
}

int64_t CompositeShard::weight_bytes() const {
  int64_t bytes = 0;
  for (const auto& p : parts_) bytes += p->weight_bytes();
  return bytes;
}

Device CompositeShard::device() const {
  return parts_.empty() ? Device::Host() : parts_[0]->device();
}

common::DType CompositeShard::compute_dtype() const {
  return parts_.empty() ? common::DType::kFloat32 : parts_[0]->compute_dtype();
}

int64_t CompositeShard::device_memory_bytes() const {
  int64_t bytes = 0;
  for (const auto& p : parts_) bytes += p->device_memory_bytes();
  return bytes;
}

int64_t CompositeShard::max_rows_per_run() const {
  int64_t rows = ExpertShard::max_rows_per_run();
  for (const auto& p : parts_) rows = std::min(rows, p->max_rows_per_run());
  return rows;
}

absl::Status CompositeShard::RunChecked(
    const TokenRows& tokens, absl::Span<const common::ExpertSegment> segments,
    float* out, RunStats* stats) const {
  if (parts_.size() == 1) return parts_[0]->Run(tokens, segments, out, stats);
  std::vector<common::ExpertSegment> mine;
  std::vector<size_t> index;
  for (const auto& part : parts_) {
    mine.clear();
    index.clear();
    for (size_t i = 0; i < segments.size(); ++i) {
      if (part->Hosts(segments[i].key)) {
        mine.push_back(segments[i]);
        index.push_back(i);
      }
    }
    if (mine.empty()) continue;
    RunStats measured;
    MOE_RETURN_IF_ERROR(part->Run(tokens, mine, out, &measured));
    if (stats == nullptr) continue;
    stats->AddTotals(measured);
    for (size_t j = 0; j < index.size(); ++j) {
      stats->segment_seconds[index[j]] = measured.segment_seconds[j];
    }
  }
  return absl::OkStatus();
}

}  // namespace moe::experts
