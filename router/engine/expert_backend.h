// Where the MoE engine sends expert work: the in-process shard
// (LocalExpertBackend) or, in the router service, the remote workers.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "experts/expert_shard.h"

namespace moe::router {

// Where a forward's combine goes: plan entry i (row i of the expert tokens)
// adds weights[i] * Expert(tokens[i]) to row rows[i] of *y ([T, d] float32).
struct CombineTarget {
  absl::Span<const int64_t> rows;
  absl::Span<const float> weights;
  at::Tensor* y = nullptr;
};

class ExpertBackend {
 public:
  virtual ~ExpertBackend() = default;

  // Runs the experts and combines their outputs into target.y (experts
  // listed in *unavailable contribute nothing). *combine_us receives the
  // time spent combining. The default runs RunExperts() and then one
  // scatter-add; a backend that receives outputs piece by piece may fuse the
  // two (and combine one piece while others are still computed).
  virtual absl::Status RunAndCombine(
      const at::Tensor& tokens,
      absl::Span<const experts::ExpertSegment> segments,
      const CombineTarget& target, std::vector<int64_t>* unavailable,
      int64_t* combine_us);

  // tokens: [T, d] float32, grouped by expert as `segments` say (ascending
  // expert ids, counts > 0, summing to T). Writes [T, d] float32 outputs, row
  // for row, into *out. A backend that may lose experts (remote workers)
  // lists the experts it could not run in *unavailable and leaves their rows
  // zero; a non-OK status fails the whole forward. Must be thread-safe.
  virtual absl::Status RunExperts(
      const at::Tensor& tokens,
      absl::Span<const experts::ExpertSegment> segments, at::Tensor* out,
      std::vector<int64_t>* unavailable) = 0;
};

// Runs every expert in this process. `shard` must outlive the backend.
class LocalExpertBackend : public ExpertBackend {
 public:
  explicit LocalExpertBackend(const experts::ExpertShard* shard)
      : shard_(shard) {}

  absl::Status RunExperts(const at::Tensor& tokens,
                          absl::Span<const experts::ExpertSegment> segments,
                          at::Tensor* out,
                          std::vector<int64_t>* /*unavailable*/) override {
    return shard_->Run(tokens, segments, out);
  }

 private:
  const experts::ExpertShard* shard_;
};

}  // namespace moe::router
