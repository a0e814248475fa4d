#include "server/compute_flags.h"

#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#ifdef MOE_HAVE_CUDA
#include "experts/cuda/cuda_expert_shard.h"
#endif

ABSL_FLAG(std::string, compute_dtype, "float32",
          "Expert compute: float32 (exact to docs/numerics.md) or bfloat16 "
          "(weights held in bfloat16, GEMMs through oneDNN with float32 "
          "accumulation, about 1.6x faster where the CPU has AVX512_BF16; "
          "relative RMS error of y about 5e-3). Gating is float32 always.");
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

absl::StatusOr<DeviceChoice> ParseDevice(absl::string_view flag) {
  DeviceChoice choice;
  if (flag == "auto") return choice;
  if (flag == "cpu") {
    choice.kind = DeviceChoice::Kind::kCpu;
    return choice;
  }
  if (flag == "cuda") {
    choice.kind = DeviceChoice::Kind::kCuda;
    return choice;
  }
  if (absl::StartsWith(flag, "cuda:") &&
      absl::SimpleAtoi(flag.substr(5), &choice.ordinal) &&
      choice.ordinal >= 0) {
    choice.kind = DeviceChoice::Kind::kCuda;
    return choice;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "--device: \"", flag, "\" is not auto, cpu, cuda or cuda:N"));
}

bool CudaBuilt() { return kCudaBuilt; }

absl::StatusOr<std::unique_ptr<experts::ExpertShard>> MakeExpertShard(
    absl::string_view device,
    std::map<common::ExpertKey, common::ExpertWeights> weights,
    int64_t max_rows, int gpu_streams) {
  MOE_ASSIGN_OR_RETURN(DeviceChoice choice, ParseDevice(device));
  MOE_ASSIGN_OR_RETURN(experts::CpuShardOptions cpu,
                       CpuShardOptionsFromFlags());
  if (choice.kind == DeviceChoice::Kind::kCuda && !CudaBuilt()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "--device=", device,
        ": this binary was built without the CUDA backend (configure with "
        "the CUDA toolkit installed; -DMOE_CUDA=on makes its absence an "
        "error)"));
  }
#ifdef MOE_HAVE_CUDA
  if (choice.kind == DeviceChoice::Kind::kAuto) {
    std::string why;
    if (experts::gpu::VisibleDevices(&why) > 0) {
      choice.kind = DeviceChoice::Kind::kCuda;
      MOE_LOG(INFO) << "--device=auto: a CUDA device is visible; using cuda:0";
    } else {
      MOE_LOG(INFO) << "--device=auto: " << why << "; using the CPU";
    }
  }
  if (choice.kind == DeviceChoice::Kind::kCuda) {
    experts::gpu::GpuOptions options;
    options.device = choice.ordinal;
    options.compute = cpu.compute;
    options.streams = gpu_streams;
    options.max_rows = max_rows;
    absl::StatusOr<std::unique_ptr<experts::CudaExpertShard>> shard =
        experts::CudaExpertShard::Create(weights, options);
    if (!shard.ok()) {
      return absl::Status(
          shard.status().code(),
          absl::StrCat("--device=", device, ": ", shard.status().message()));
    }
    return std::unique_ptr<experts::ExpertShard>(std::move(*shard));
  }
#else
  if (choice.kind == DeviceChoice::Kind::kAuto) {
    MOE_LOG(INFO) << "--device=auto: built without the CUDA backend; using "
                     "the CPU";
  }
#endif
  MOE_ASSIGN_OR_RETURN(
      auto shard, experts::CpuExpertShard::Create(std::move(weights), cpu));
  return std::unique_ptr<experts::ExpertShard>(std::move(shard));
}

}  // namespace moe::server
