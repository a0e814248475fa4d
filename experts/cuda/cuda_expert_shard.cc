#include "experts/cuda/cuda_expert_shard.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace moe::experts {

absl::Status FromGpuStatus(const gpu::Status& status) {
  switch (status.code()) {
    case gpu::Code::kOk:
      return absl::OkStatus();
    case gpu::Code::kInvalidArgument:
      return absl::InvalidArgumentError(status.message());
    case gpu::Code::kResourceExhausted:
      return absl::ResourceExhaustedError(status.message());
    case gpu::Code::kFailedPrecondition:
      return absl::FailedPreconditionError(status.message());
    case gpu::Code::kInternal:
      break;
  }
  return absl::InternalError(status.message());
}

absl::StatusOr<std::unique_ptr<CudaExpertShard>> CudaExpertShard::Create(
    const HostExpertMap& experts, const gpu::GpuOptions& options) {
  if (experts.empty()) {
    return absl::InvalidArgumentError("a GPU shard needs at least one expert");
  }
  std::vector<gpu::HostExpert> host;
  std::map<common::ExpertKey, int32_t> index;
  std::vector<int64_t> hidden;
  for (const auto& [key, e] : experts) {
    index[key] = static_cast<int32_t>(host.size());
    hidden.push_back(e.hidden);
    host.push_back(e);
  }
  std::unique_ptr<gpu::GpuExperts> g;
  MOE_RETURN_IF_ERROR(
      FromGpuStatus(gpu::GpuExperts::Create(host, options, &g)));
  return std::unique_ptr<CudaExpertShard>(
      new CudaExpertShard(std::move(index), std::move(hidden), std::move(g)));
}

absl::StatusOr<std::unique_ptr<CudaExpertShard>> CudaExpertShard::Load(
    const common::Checkpoint& checkpoint, const common::ExpertSet& experts,
    const gpu::GpuOptions& options) {
  MOE_ASSIGN_OR_RETURN(HostExpertMap host,
                       LoadHostExperts(checkpoint, experts));
  return Create(host, options);
}

common::ExpertSet CudaExpertShard::experts() const {
  common::ExpertSet out;
  for (const auto& [key, unused] : index_) out.Add(key);
  return out;
}

Device CudaExpertShard::device() const {
  return Device::Cuda(gpu_->device().ordinal);
}

common::DType CudaExpertShard::compute_dtype() const {
  return gpu_->options().compute;
}

absl::Status CudaExpertShard::RunChecked(
    const TokenRows& tokens, absl::Span<const common::ExpertSegment> segments,
    float* out, RunStats* stats) const {
  std::vector<gpu::PlanSegment> plan;
  plan.reserve(segments.size());
  for (const common::ExpertSegment& s : segments) {
    plan.push_back({index_.at(s.key), s.offset, s.count});
  }
  gpu::CallTiming timing;
  MOE_RETURN_IF_ERROR(FromGpuStatus(
      gpu_->Run(tokens.dtype, tokens.data, tokens.rows, plan, out, &timing)));
  if (stats != nullptr) {
    stats->compute_seconds = timing.compute_seconds;
    stats->copy_in_seconds = timing.copy_in_seconds;
    stats->copy_out_seconds = timing.copy_out_seconds;
    stats->small_rows_passes = timing.small_rows_passes;
    stats->gemm_passes = timing.passes - timing.small_rows_passes;
    double work = 0;
    for (const gpu::PlanSegment& s : plan) {
      work += static_cast<double>(s.count) * hidden_[s.expert];
    }
    for (size_t i = 0; i < plan.size() && work > 0; ++i) {
      stats->segment_seconds[i] = timing.compute_seconds *
                                  static_cast<double>(plan[i].count) *
                                  hidden_[plan[i].expert] / work;
    }
  }
  return absl::OkStatus();
}

}  // namespace moe::experts
