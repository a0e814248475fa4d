// Where the MoE engine sends expert work: the in-process shard
// (LocalExpertBackend) or, in the router service, the remote workers.
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "experts/expert_shard.h"

namespace moe::router {

class ExpertBackend {
 public:
  virtual ~ExpertBackend() = default;

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
