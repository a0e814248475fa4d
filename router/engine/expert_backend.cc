#include "router/engine/expert_backend.h"

#include <memory>

#include "absl/time/clock.h"
#include "router/combine.h"

namespace moe::router {

absl::Status LocalExpertBackend::Run(const ExpertWork& work,
                                     BackendReport* report) {
  if (work.rows == 0) return absl::OkStatus();
  // A block of a power of two rows, uninitialised, so that forwards whose
  // kept counts differ reuse freed blocks instead of fragmenting the heap.
  int64_t capacity = 1;
  while (capacity < work.rows) capacity *= 2;
  std::unique_ptr<float[]> out(new float[capacity * work.dim]);
  absl::Status status =
      shard_->Run({common::DType::kFloat32, work.tokens, work.rows},
                  work.segments, out.get());
  if (!status.ok()) return status;
  const absl::Time start = absl::Now();
  CombineRows(out.get(), work.rows, work.targets.data(), work.weights.data(),
              work.dim, work.y, work.y_written);
  report->combine += absl::Now() - start;
  return absl::OkStatus();
}

}  // namespace moe::router
