#include "server/compute_flags.h"

#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"

ABSL_FLAG(std::string, compute_dtype, "float32",
          "Expert compute: float32 (exact to docs/numerics.md) or bfloat16 "
          "(weights held in bfloat16, GEMMs through oneDNN with float32 "
          "accumulation, about 1.6x faster where the CPU has AVX512_BF16; "
          "relative RMS error of y about 5e-3). Gating is float32 always.");
ABSL_FLAG(int, compute_threads_bf16, 0,
          "With --compute_dtype=bfloat16: LibTorch threads for its GEMMs "
          "(0: one per core).");

namespace moe::server {

absl::StatusOr<experts::CpuShardOptions> CpuShardOptionsFromFlags() {
  experts::CpuShardOptions options;
  const std::string name = absl::GetFlag(FLAGS_compute_dtype);
  if (name == "bfloat16") {
    options.compute = common::DType::kBFloat16;
  } else if (name != "float32") {
    return absl::InvalidArgumentError(absl::StrCat(
        "--compute_dtype: \"", name, "\" is not float32 or bfloat16"));
  }
  options.threads = absl::GetFlag(FLAGS_compute_threads_bf16);
  return options;
}

}  // namespace moe::server
