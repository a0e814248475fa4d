// CpuExpertShard: experts on the CPU through LibTorch (OpenBLAS GEMMs).
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

namespace moe::experts {

class CpuExpertShard final : public ExpertShard {
 public:
  // Takes ownership of `experts`. InvalidArgument if the map is empty or
  // the experts' dims disagree (hidden sizes may differ between layers).
  static absl::StatusOr<std::unique_ptr<CpuExpertShard>> Create(
      std::map<common::ExpertKey, common::ExpertWeights> experts);

  bool Hosts(common::ExpertKey key) const override {
    return experts_.count(key) != 0;
  }
  std::vector<common::ExpertKey> keys() const override;
  int64_t dim() const override { return dim_; }
  int64_t weight_bytes() const override { return weight_bytes_; }
  std::string device() const override { return "cpu"; }
  std::string compute_dtype() const override { return "float32"; }

 protected:
  absl::Status RunChecked(const TokenRows& tokens,
                          absl::Span<const common::ExpertSegment> segments,
                          float* out,
                          std::vector<double>* seconds) const override;

 private:
  CpuExpertShard(std::map<common::ExpertKey, common::ExpertWeights> experts,
                 int64_t dim, int64_t weight_bytes);

  // GEGLU scratch buffers between calls, one per concurrent caller.
  at::Tensor TakeScratch() const;
  void ReturnScratch(at::Tensor t) const;

  const std::map<common::ExpertKey, common::ExpertWeights> experts_;
  const int64_t dim_;
  const int64_t weight_bytes_;
  mutable absl::Mutex scratch_mu_;
  mutable std::vector<at::Tensor> scratch_ ABSL_GUARDED_BY(scratch_mu_);
};

}  // namespace moe::experts
