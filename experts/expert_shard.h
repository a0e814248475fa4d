// ExpertShard owns the weights of a set of experts (a worker's shard, or all
// of them for the in-process engine) on one device, and runs them on batches
// laid out by segment.
//
// Thread-safety: immutable after Create(); Run() may be called concurrently.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "common/model_weights.h"

namespace moe::experts {

// `count` consecutive token rows that expert `expert_id` processes.
struct ExpertSegment {
  int64_t expert_id = 0;
  int64_t count = 0;
};

class ExpertShard {
 public:
  // Takes ownership of `experts` and moves them to `device`. InvalidArgument
  // if the map is empty or the experts' shapes disagree.
  static absl::StatusOr<std::unique_ptr<ExpertShard>> Create(
      common::ExpertMap experts, c10::Device device = c10::Device(c10::kCPU));

  bool Hosts(int64_t expert_id) const;
  std::vector<int64_t> expert_ids() const;
  int64_t dim() const { return dim_; }
  int64_t hidden() const { return hidden_; }
  const c10::Device& device() const { return device_; }
  // Bytes of parameters held.
  int64_t weight_bytes() const { return weight_bytes_; }

  // tokens: [T, d] float32 (any device); segments partition the rows in order
  // and their counts sum to T. Writes expert outputs, row for row, into *out,
  // which is resized to [T, d] float32 on the tokens' device when its shape
  // differs. Segments with count 0 run nothing. InvalidArgument for an expert
  // this shard does not host or counts that do not add up; Internal for a
  // LibTorch failure.
  // When `seconds` is given it receives each segment's compute time.
  absl::Status Run(const at::Tensor& tokens,
                   absl::Span<const ExpertSegment> segments, at::Tensor* out,
                   std::vector<double>* seconds = nullptr) const;

 private:
  ExpertShard(common::ExpertMap experts, c10::Device device, int64_t dim,
              int64_t hidden, int64_t weight_bytes);

  // GEGLU scratch buffers between calls, one per concurrent caller.
  at::Tensor TakeScratch() const;
  void ReturnScratch(at::Tensor t) const;

  common::ExpertMap experts_;
  mutable std::mutex scratch_mu_;
  mutable std::vector<at::Tensor> scratch_;
  c10::Device device_;
  int64_t dim_;
  int64_t hidden_;
  int64_t weight_bytes_;
};

}  // namespace moe::experts
