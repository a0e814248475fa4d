// ExpertPlacement: the experts a worker hosts now, and how they change at
// run time (SetExperts, docs/placement.md).
//
// The hosted experts are a CompositeShard, read by every call as one
// snapshot (Current()): a call that started before a change finishes on the
// experts it started with, and an expert given up is freed when the last
// such call ends. A change loads only the experts it adds (one new part,
// from the checkpoint the worker opened, its digests checked as at start);
// parts whose experts are all kept are shared with the new placement, a
// part that loses an expert is replaced by one loaded with its remaining
// experts.
//
// A worker started with a fixed shard and no loader (the in-process tests,
// say) refuses every change.
//
// Thread-safety: Current() may be called concurrently with Set(); Set()
// calls run one at a time.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "common/expert_set.h"
#include "common/model_spec.h"
#include "experts/composite_shard.h"

namespace moe::experts {

// Loads the shard of a set of experts (at least one) of the model.
using ExpertLoader = std::function<absl::StatusOr<std::unique_ptr<ExpertShard>>(
    const common::ExpertSet& experts)>;

class ExpertPlacement {
 public:
  struct Snapshot {
    std::shared_ptr<const ExpertShard> shard;
    int64_t generation = 0;
  };

  // Serves `shard` (not owned; may host nothing) with no way to change it.
  static std::unique_ptr<ExpertPlacement> Fixed(const common::ModelSpec& spec,
                                                const ExpertShard* shard);
  // Starts with `initial` (null: nothing), changed through `loader`, within
  // `memory_limit_bytes` of weights (0: no limit).
  static absl::StatusOr<std::unique_ptr<ExpertPlacement>> Create(
      const common::ModelSpec& spec, std::unique_ptr<ExpertShard> initial,
      ExpertLoader loader, int64_t memory_limit_bytes);

  Snapshot Current() const ABSL_LOCKS_EXCLUDED(mu_);
  bool changeable() const { return static_cast<bool>(loader_); }
  int64_t memory_limit_bytes() const { return memory_limit_bytes_; }

  // The weight bytes `experts` would take (bytes per parameter of what is
  // loaded, 4 before anything is: float32, the widest).
  int64_t EstimateBytes(const common::ExpertSet& experts) const;

  // What one Set() did.
  struct Change {
    common::ExpertSet added, removed;
    bool unchanged = false;  // the same generation and experts again
  };
  // Hosts exactly `wanted` from now on, as generation `generation`.
  // FailedPrecondition for a fixed placement or a generation below the
  // current one (or equal with other experts); ResourceExhausted, naming
  // the bytes, when `wanted` would pass the memory limit (nothing changes);
  // a loader's error as it is (nothing changes).
  absl::StatusOr<Change> Set(const common::ExpertSet& wanted,
                             int64_t generation) ABSL_LOCKS_EXCLUDED(set_mu_);

 private:
  ExpertPlacement(const common::ModelSpec& spec, ExpertLoader loader,
                  int64_t memory_limit_bytes)
      : spec_(spec),
        loader_(std::move(loader)),
        memory_limit_bytes_(memory_limit_bytes) {}

  const common::ModelSpec spec_;
  const ExpertLoader loader_;
  const int64_t memory_limit_bytes_;
  absl::Mutex set_mu_;  // one Set() at a time
  mutable absl::Mutex mu_;
  Snapshot current_ ABSL_GUARDED_BY(mu_);
  // The parts of current_.shard (a CompositeShard) when changeable.
  std::vector<std::shared_ptr<const ExpertShard>> parts_ ABSL_GUARDED_BY(mu_);
};

}  // namespace moe::experts
