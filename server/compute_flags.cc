#include "server/compute_flags.h"

#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "common/torch/checkpoint_weights.h"
#ifdef MOE_HAVE_CUDA
#include "experts/cuda/cuda_expert_shard.h"
#endif

ABSL_FLAG(std::string, compute_dtype, "float32",
          "Expert compute: float32 (exact to docs/numerics.md) or bfloat16 "
          "(weights held in bfloat16, GEMMs through oneDNN with float32 "
          "accumulation; relative RMS error of y about 5e-3). Measured "
          "1.6-2.8x faster than float32 on CPUs with AVX512_BF16 where "
          "OpenBLAS runs AVX2 kernels, 0.7x where it runs its AVX-512 ones "
          "(BENCHMARKS.md). Gating is float32 always.");
ABSL_FLAG(int, compute_threads_bf16, 0,
          "With --compute_dtype=bfloat16: LibTorch threads for its GEMMs "
          "(0: one per core).");

namespace moe::server {
namespace {
#ifdef MOE_HAVE_CUDA
constexpr bool kCudaBuilt = true;
#else
constexpr bool kCudaBuilt = false;
#endif
}  // namespace

absl::StatusOr<experts::CpuShardOptions> CpuShardOptionsFromFlags() {
  experts::CpuShardOptions options;
  const std::string name = absl::GetFlag(FLAGS_compute_dtype);
  if (!common::ParseDTypeName(name, &options.compute) ||
      (options.compute != common::DType::kFloat32 &&
       options.compute != common::DType::kBFloat16)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--compute_dtype: \"", name, "\" is not float32 or bfloat16"));
  }
  options.threads = absl::GetFlag(FLAGS_compute_threads_bf16);
  return options;
}

bool CudaBuilt() { return kCudaBuilt; }

namespace {

absl::StatusOr<std::unique_ptr<experts::ExpertShard>> CpuShard(
    const common::Checkpoint& ckpt, const common::ExpertSet& experts) {
  MOE_ASSIGN_OR_RETURN(experts::CpuShardOptions cpu,
                       CpuShardOptionsFromFlags());
  std::map<common::ExpertKey, common::ExpertWeights> weights;
  for (const common::ExpertKey& key : experts.keys()) {
    MOE_ASSIGN_OR_RETURN(weights[key], common::LoadExpertWeights(ckpt, key));
  }
  MOE_ASSIGN_OR_RETURN(
      auto shard, experts::CpuExpertShard::Create(std::move(weights), cpu));
  return std::unique_ptr<experts::ExpertShard>(std::move(shard));
}

}  // namespace

absl::StatusOr<std::unique_ptr<experts::ExpertShard>> MakeExpertShard(
    const common::Checkpoint& ckpt, const common::ExpertSet& experts,
    const ShardRequest& request) {
  const std::string& flag = request.device_flag;
  DeviceChoice choice = request.device;
  if (!choice.automatic && choice.device.kind == experts::Device::Kind::kHost) {
    return absl::InvalidArgumentError(
        "--device=host: the reference experts are moe-expert-gpu's; "
        "moe-expert runs cpu (LibTorch) or cuda");
  }
  if (!choice.automatic && choice.device.is_gpu() && !CudaBuilt()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--device=", flag,
        ": this binary was built without the CUDA backend (configure with "
        "the CUDA toolkit installed; -DMOE_CUDA=on makes its absence an "
        "error)"));
  }
#ifdef MOE_HAVE_CUDA
  if (choice.automatic) {
    std::string why;
    if (experts::gpu::VisibleDevices(&why) > 0) {
      choice.device = experts::Device::Cuda(0);
      MOE_LOG(INFO) << "--device=auto: a CUDA device is visible; using cuda:0";
    } else {
      choice.device = experts::Device::Cpu();
      MOE_LOG(INFO) << "--device=auto: " << why << "; using the CPU";
    }
  }
  if (choice.device.is_gpu()) {
    MOE_ASSIGN_OR_RETURN(experts::CpuShardOptions cpu,
                         CpuShardOptionsFromFlags());
    experts::gpu::GpuOptions options;
    options.device = choice.device.ordinal;
    options.compute = cpu.compute;
    options.streams = request.gpu_streams;
    options.small_rows = request.gpu_small_rows;
    options.max_rows = request.max_rows;
    auto shard = experts::CudaExpertShard::Load(ckpt, experts, options);
    if (!shard.ok()) {
      return absl::Status(
          shard.status().code(),
          absl::StrCat("--device=", flag, ": ", shard.status().message()));
    }
    return std::unique_ptr<experts::ExpertShard>(std::move(*shard));
  }
#else
  if (choice.automatic) {
    MOE_LOG(INFO) << "--device=auto: built without the CUDA backend; using "
                     "the CPU";
  }
#endif
  return CpuShard(ckpt, experts);
}

}  // namespace moe::server
