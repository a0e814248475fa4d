// CompositeShard: one ExpertShard made of several, each hosting its own
// experts: what a worker whose experts change at run time serves
// (experts/service/placement.h). The experts kept from one placement to
// the next stay in their parts; only the new ones are loaded.
//
// Run() gives each part the segments of its experts (in their order; one
// part with every segment is called directly). Parts must agree on dim,
// device and compute dtype (checked by Create()). With no part the shard
// hosts nothing: every segment is refused, dim() is the model's.
//
// Thread-safety: immutable after Create(); Run() may be called concurrently.
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "experts/expert_shard.h"

namespace moe::experts {

class CompositeShard final : public ExpertShard {
 public:
  // InvalidArgument when parts disagree on dim, device or compute dtype,
  // host a common expert, or when a part's dim is not `dim`.
  static absl::StatusOr<std::unique_ptr<CompositeShard>> Create(
      int64_t dim, std::vector<std::shared_ptr<const ExpertShard>> parts);

  const std::vector<std::shared_ptr<const ExpertShard>>& parts() const {
    return parts_;
  }

  bool Hosts(common::ExpertKey key) const override;
  common::ExpertSet experts() const override { return experts_; }
  int64_t dim() const override { return dim_; }
  int64_t weight_bytes() const override;
  // The parts' device (the host's with no part).
  Device device() const override;
  // The parts' (float32 with no part).
  common::DType compute_dtype() const override;
  int64_t device_memory_bytes() const override;
  // The smallest of the parts'.
  int64_t max_rows_per_run() const override;

 protected:
  absl::Status RunChecked(const TokenRows& tokens,
                          absl::Span<const common::ExpertSegment> segments,
                          float* out, RunStats* stats) const override;

 private:
  CompositeShard(int64_t dim,
                 std::vector<std::shared_ptr<const ExpertShard>> parts,
                 common::ExpertSet experts)
      : dim_(dim), parts_(std::move(parts)), experts_(std::move(experts)) {}

  const int64_t dim_;
  const std::vector<std::shared_ptr<const ExpertShard>> parts_;
  const common::ExpertSet experts_;
};

}  // namespace moe::experts
