#include "server/gpu_compute_flags.h"

#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "experts/host_experts.h"
#ifdef MOE_HAVE_CUDA
#include "experts/cuda/cuda_expert_shard.h"
#endif

ABSL_FLAG(std::string, compute_dtype, "float32",
          "Expert compute: float32 (exact to docs/numerics.md) or bfloat16 "
          "(a CUDA device only: weights and GEMMs in bfloat16 with float32 "
          "accumulation).");

namespace moe::server {
namespace {

absl::StatusOr<common::DType> ComputeDType() {
  const std::string name = absl::GetFlag(FLAGS_compute_dtype);
  common::DType dtype;
  if (!common::ParseDTypeName(name, &dtype) ||
      (dtype != common::DType::kFloat32 && dtype != common::DType::kBFloat16)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--compute_dtype: \"", name, "\" is not float32 or bfloat16"));
  }
  return dtype;
}

// The device auto stands for: cuda:0 when there is one, else the host.
experts::Device AutoDevice() {
#ifdef MOE_HAVE_CUDA
  std::string why;
  if (experts::gpu::VisibleDevices(&why) > 0) {
    MOE_LOG(INFO) << "--device=auto: a CUDA device is visible; using cuda:0";
    return experts::Device::Cuda(0);
  }
  MOE_LOG(WARNING) << "--device=auto: " << why
                   << "; using the host's reference experts, which are exact "
                      "but slow (a few GFLOP/s): for tests, not for serving";
#else
  MOE_LOG(WARNING) << "--device=auto: built without the CUDA backend; using "
                      "the host's reference experts, which are exact but "
                      "slow (a few GFLOP/s): for tests, not for serving";
#endif
  return experts::Device::Host();
}

absl::StatusOr<std::unique_ptr<experts::ExpertShard>> CudaShard(
    const common::Checkpoint& ckpt, const common::ExpertSet& experts,
    const ShardRequest& request, experts::Device device,
    common::DType compute) {
#ifdef MOE_HAVE_CUDA
  experts::gpu::GpuOptions options;
  options.device = device.ordinal;
  options.compute = compute;
  options.streams = request.gpu_streams;
  options.small_rows = request.gpu_small_rows;
  options.max_rows = request.max_rows;
  MOE_ASSIGN_OR_RETURN(auto shard,
                       experts::CudaExpertShard::Load(ckpt, experts, options));
  return std::unique_ptr<experts::ExpertShard>(std::move(shard));
#else
  (void)ckpt, (void)experts, (void)request, (void)device, (void)compute;
  return absl::FailedPreconditionError(
      "this binary was built without the CUDA backend (configure with the "
      "CUDA toolkit installed; -DMOE_CUDA=on makes its absence an error)");
#endif
}

}  // namespace

absl::StatusOr<std::unique_ptr<experts::ExpertShard>> MakeGpuWorkerShard(
    const common::Checkpoint& ckpt, const common::ExpertSet& experts,
    const ShardRequest& request) {
  MOE_ASSIGN_OR_RETURN(common::DType compute, ComputeDType());
  const experts::Device device =
      request.device.automatic ? AutoDevice() : request.device.device;
  switch (device.kind) {
    case experts::Device::Kind::kCpu:
      return absl::InvalidArgumentError(
          "--device=cpu: moe-expert-gpu has no LibTorch CPU experts; use "
          "--device=host (the reference experts) or moe-expert");
    case experts::Device::Kind::kHost: {
      if (compute != common::DType::kFloat32) {
        return absl::InvalidArgumentError(
            "--compute_dtype=bfloat16 needs a CUDA device; the host's "
            "reference experts compute in float32");
      }
      MOE_ASSIGN_OR_RETURN(experts::HostExpertMap host,
                           experts::LoadHostExperts(ckpt, experts));
      MOE_ASSIGN_OR_RETURN(
          auto shard, experts::ReferenceExpertShard::Create(std::move(host)));
      return std::unique_ptr<experts::ExpertShard>(std::move(shard));
    }
    case experts::Device::Kind::kCuda:
      break;
  }
  absl::StatusOr<std::unique_ptr<experts::ExpertShard>> shard =
      CudaShard(ckpt, experts, request, device, compute);
  if (!shard.ok()) {
    return absl::Status(shard.status().code(),
                        absl::StrCat("--device=", request.device_flag, ": ",
                                     shard.status().message()));
  }
  return shard;
}

}  // namespace moe::server
