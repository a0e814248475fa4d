// Experts as plain float32 arrays, without LibTorch: loading them from a
// checkpoint, and the shard that runs them on the host with the plain C++
// reference expert (experts/cuda/host_expert.h: exact, accumulating in
// double, slow). This is what the LibTorch-free worker (moe-expert-gpu)
// loads for its GPU shard, and runs with --device=host where no GPU is.
#pragma once

#include <map>
#include <memory>

#include "absl/status/statusor.h"
#include "common/checkpoint.h"
#include "common/expert_segment.h"
#include "common/expert_set.h"
#include "experts/cuda/host_expert.h"
#include "experts/expert_shard.h"

namespace moe::experts {

using HostExpertMap = std::map<common::ExpertKey, gpu::HostExpert>;

// Expert `key` of `checkpoint` (each tensor checked against its digest and
// for finite values as Checkpoint::ReadParameter does). InvalidArgument
// naming the layer or expert when the checkpoint has no such expert.
absl::StatusOr<gpu::HostExpert> LoadHostExpert(
    const common::Checkpoint& checkpoint, common::ExpertKey key);

// Every expert of `experts` (at least one: InvalidArgument otherwise).
absl::StatusOr<HostExpertMap> LoadHostExperts(
    const common::Checkpoint& checkpoint, const common::ExpertSet& experts);

// Runs its experts on the host, in float32 with double accumulation: the
// reference, for tests and machines without a GPU (slow: a few GFLOP/s).
class ReferenceExpertShard final : public ExpertShard {
 public:
  // InvalidArgument for an empty map or experts whose dims disagree.
  static absl::StatusOr<std::unique_ptr<ReferenceExpertShard>> Create(
      HostExpertMap experts);

  bool Hosts(common::ExpertKey key) const override {
    return experts_.count(key) != 0;
  }
  common::ExpertSet experts() const override;
  int64_t dim() const override { return dim_; }
  int64_t weight_bytes() const override { return weight_bytes_; }
  Device device() const override { return Device::Host(); }
  // Its per-call buffers grow with the rows of one Run().
  int64_t max_rows_per_run() const override { return 4096; }
  common::DType compute_dtype() const override {
    return common::DType::kFloat32;
  }

 protected:
  absl::Status RunChecked(const TokenRows& tokens,
                          absl::Span<const common::ExpertSegment> segments,
                          float* out, RunStats* stats) const override;

 private:
  ReferenceExpertShard(HostExpertMap experts, int64_t dim, int64_t weight_bytes)
      : experts_(std::move(experts)), dim_(dim), weight_bytes_(weight_bytes) {}

  const HostExpertMap experts_;
  const int64_t dim_;
  const int64_t weight_bytes_;
};

}  // namespace moe::experts
