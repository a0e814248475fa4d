// ExpertBackend: where a layer's forward sends its expert work and how the
// outputs come back into y. LocalExpertBackend runs a shard in this process
// (the in-process engine, moe-run); the router service's RemoteExpertBackend
// (router/remote/remote_expert_backend.h) runs it on the workers. Both
// combine with router::CombineRows.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/expert_segment.h"
#include "experts/expert_shard.h"
#include "router/failure_reason.h"

namespace moe::router {

// One forward's expert work: the gathered token rows in plan order, their
// segments, and where each row's output goes.
struct ExpertWork {
  // [rows, dim] float32; `tokens_owner` keeps the memory alive (a backend
  // that sends the rows without copying holds it until they are sent).
  const float* tokens = nullptr;
  std::shared_ptr<const void> tokens_owner;
  int64_t rows = 0;
  int64_t dim = 0;
  // Consecutive segments covering rows [0, rows), ascending keys.
  absl::Span<const common::ExpertSegment> segments;
  // Combine: output row j adds weights[j] * out[j] to row targets[j] of y.
  absl::Span<const int64_t> targets;
  absl::Span<const float> weights;
  float* y = nullptr;  // [T, dim] float32
  // [T] flags of the rows of y written so far (CombineRows' `written`): y
  // starts uninitialised and the engine zeroes the rows left unwritten.
  uint8_t* y_written = nullptr;
};

// An expert whose outputs are missing from y (the drop policy), and why.
struct ExpertLoss {
  common::ExpertKey key;
  DropReason reason = DropReason::kExpertUnavailable;
  std::string detail;  // which worker, what error
};

// What a backend tells about one Run().
struct BackendReport {
  std::vector<ExpertLoss> lost;
  absl::Duration combine;     // adding outputs into y
  absl::Duration batch_wait;  // remote: waiting for a batch to leave
  absl::Duration rpc_wait;    // remote: waiting for the workers
};

class ExpertBackend {
 public:
  virtual ~ExpertBackend() = default;

  // Runs the experts and adds their outputs into work.y. Experts listed in
  // report->lost contribute nothing; a non-OK status fails the forward.
  // Must be thread-safe.
  virtual absl::Status Run(const ExpertWork& work, BackendReport* report) = 0;
};

// Runs every expert in this process. `shard` must outlive the backend.
class LocalExpertBackend : public ExpertBackend {
 public:
  explicit LocalExpertBackend(const experts::ExpertShard* shard)
      : shard_(shard) {}
  absl::Status Run(const ExpertWork& work, BackendReport* report) override;

 private:
  const experts::ExpertShard* shard_;
};

}  // namespace moe::router
