// CpuExpertShard: experts on the CPU through LibTorch. float32 compute
// (OpenBLAS GEMMs) is the default and the docs/numerics.md contract;
// bfloat16 compute (opt-in) holds every weight once in bfloat16, converts
// the tokens on arrival and runs the GEMMs through oneDNN (AVX512_BF16 where
// the CPU has it) with float32 accumulation; GELU and the products run on
// bfloat16 values; outputs are float32 either way.
//
// Example:
//   MOE_ASSIGN_OR_RETURN(auto shard, CpuExpertShard::Create(std::move(w)));
//   MOE_RETURN_IF_ERROR(shard->Run({kFloat32, x, rows}, segments, out));
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/expert_segment.h"
#include "common/torch/model_weights.h"
#include "experts/expert_shard.h"
#include "experts/skinny_linear.h"

namespace moe::experts {

struct CpuShardOptions {
  // kFloat32 or kBFloat16.
  common::DType compute = common::DType::kFloat32;
  // For bfloat16: LibTorch's intra-op threads, which oneDNN's GEMMs use
  // (process-wide; 0: one per core). float32 sets them to one: its GEMMs
  // run on OpenBLAS's own threads.
  int threads = 0;
};

class CpuExpertShard final : public ExpertShard {
 public:
  // Takes ownership of `experts`. InvalidArgument if the map is empty, the
  // experts' dims disagree (hidden sizes may differ between layers) or the
  // compute dtype is neither float32 nor bfloat16.
  static absl::StatusOr<std::unique_ptr<CpuExpertShard>> Create(
      std::map<common::ExpertKey, common::ExpertWeights> experts,
      const CpuShardOptions& options = {});

  bool Hosts(common::ExpertKey key) const override {
    return experts_.count(key) != 0;
  }
  common::ExpertSet experts() const override;
  int64_t dim() const override { return dim_; }
  int64_t weight_bytes() const override { return weight_bytes_; }
  Device device() const override { return Device::Cpu(); }
  common::DType compute_dtype() const override { return compute_; }
  // As many rows as keep the GEGLU scratch of one Run() within what the
  // shard keeps between calls (about 24 MiB): 2048 for the README
  // configuration in float32.
  int64_t max_rows_per_run() const override { return max_rows_per_run_; }

 protected:
  absl::Status RunChecked(const TokenRows& tokens,
                          absl::Span<const common::ExpertSegment> segments,
                          float* out, RunStats* stats) const override;

 private:
  CpuExpertShard(std::map<common::ExpertKey, common::ExpertWeights> experts,
                 int64_t dim, int64_t weight_bytes, common::DType compute,
                 int threads, int64_t max_rows_per_run);

  // GEGLU scratch buffers between calls (for bfloat16 also the bfloat16
  // outputs), one per concurrent caller.
  struct Scratch {
    at::Tensor hidden;  // [rows, 2h] of the compute dtype
    at::Tensor out;     // bfloat16 only: [rows, d]
    at::Tensor tokens;  // tokens converted to the compute dtype: [rows, d]
  };
  Scratch TakeScratch() const;
  void ReturnScratch(Scratch s) const;

  // float32 compute, every segment at most kSkinnyMaxRows rows, on a CPU
  // with the skinny kernel: the whole call without LibTorch (SkinnyGeglu on
  // the weights' raw arrays): a decode-sized call's LibTorch operators cost
  // several times its arithmetic.
  bool RunsSkinny(absl::Span<const common::ExpertSegment> segments) const;
  void RunSkinny(const TokenRows& tokens,
                 absl::Span<const common::ExpertSegment> segments, float* out,
                 RunStats* stats) const;

  const std::map<common::ExpertKey, common::ExpertWeights> experts_;
  // float32 compute: the same weights as raw arrays (empty for bfloat16).
  std::map<common::ExpertKey, SkinnyExpert> skinny_;
  const int64_t dim_;
  const int64_t weight_bytes_;
  const common::DType compute_;
  const int threads_;  // LibTorch intra-op threads in the calling thread
  const int64_t max_rows_per_run_;
  mutable absl::Mutex scratch_mu_;
  mutable std::vector<Scratch> scratch_ ABSL_GUARDED_BY(scratch_mu_);
};

}  // namespace moe::experts
