// CudaExpertShard: the ExpertShard of a worker whose experts run on a CUDA
// device (GpuExperts, gpu_experts.h), built only where the CUDA toolkit
// was found (MOE_CUDA). It turns the shard's keys into the GPU backend's
// expert indices and its Status into absl::Status, and reports each call's
// device time: a segment's share of the call's compute time is its share
// of the call's multiply-adds.
//
// Example:
//   MOE_ASSIGN_OR_RETURN(HostExpertMap w, LoadHostExperts(ckpt, selection));
//   MOE_ASSIGN_OR_RETURN(auto shard, CudaExpertShard::Create(w, options));
//
// No LibTorch: moe-expert-gpu links it without.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/expert_segment.h"
#include "experts/cuda/gpu_experts.h"
#include "experts/expert_shard.h"
#include "experts/host_experts.h"

namespace moe::experts {

class CudaExpertShard final : public ExpertShard {
 public:
  // Copies `experts` to options.device. FailedPrecondition when no CUDA
  // device (or not that one) is visible; ResourceExhausted when they do not
  // fit; InvalidArgument for an empty map or dims that disagree.
  static absl::StatusOr<std::unique_ptr<CudaExpertShard>> Create(
      const HostExpertMap& experts, const gpu::GpuOptions& options);
  // Create() of `experts` read from `checkpoint` (LoadHostExperts).
  static absl::StatusOr<std::unique_ptr<CudaExpertShard>> Load(
      const common::Checkpoint& checkpoint, const common::ExpertSet& experts,
      const gpu::GpuOptions& options);

  bool Hosts(common::ExpertKey key) const override {
    return index_.count(key) != 0;
  }
  common::ExpertSet experts() const override;
  int64_t dim() const override { return gpu_->dim(); }
  int64_t weight_bytes() const override {
    return static_cast<int64_t>(gpu_->weight_bytes());
  }
  Device device() const override;
  common::DType compute_dtype() const override;
  int64_t device_memory_bytes() const override {
    return static_cast<int64_t>(gpu_->arena_bytes());
  }

 protected:
  absl::Status RunChecked(const TokenRows& tokens,
                          absl::Span<const common::ExpertSegment> segments,
                          float* out, RunStats* stats) const override;

 private:
  CudaExpertShard(std::map<common::ExpertKey, int32_t> index,
                  std::vector<int64_t> hidden,
                  std::unique_ptr<gpu::GpuExperts> gpu)
      : index_(std::move(index)),
        hidden_(std::move(hidden)),
        gpu_(std::move(gpu)) {}

  const std::map<common::ExpertKey, int32_t> index_;
  const std::vector<int64_t> hidden_;  // by index
  const std::unique_ptr<gpu::GpuExperts> gpu_;
};

// The GPU backend's status as an absl::Status of the same code.
absl::Status FromGpuStatus(const gpu::Status& status);

}  // namespace moe::experts
