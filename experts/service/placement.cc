#include "experts/service/placement.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace moe::experts {
namespace {

common::ExpertSet Difference(const common::ExpertSet& a,
                             const common::ExpertSet& b) {
  common::ExpertSet out(a.layers());
  for (const common::ExpertKey& key : a.keys()) {
    if (!b.Contains(key)) out.Add(key);
  }
  return out;
}

bool Subset(const common::ExpertSet& a, const common::ExpertSet& b) {
  for (const common::ExpertKey& key : a.keys()) {
    if (!b.Contains(key)) return false;
  }
  return true;
}

}  // namespace

std::unique_ptr<ExpertPlacement> ExpertPlacement::Fixed(
    const common::ModelSpec& spec, const ExpertShard* shard) {
  std::unique_ptr<ExpertPlacement> p(new ExpertPlacement(spec, nullptr, 0));
  // Not owned: the aliasing constructor shares no ownership.
  absl::MutexLock lock(&p->mu_);
  p->current_.shard = std::shared_ptr<const ExpertShard>(
      std::shared_ptr<const ExpertShard>(), shard);
  return p;
}

absl::StatusOr<std::unique_ptr<ExpertPlacement>> ExpertPlacement::Create(
    const common::ModelSpec& spec, std::unique_ptr<ExpertShard> initial,
    ExpertLoader loader, int64_t memory_limit_bytes) {
  if (memory_limit_bytes < 0) {
    return absl::InvalidArgumentError("--expert_memory_mb must be >= 0");
  }
  std::unique_ptr<ExpertPlacement> p(
      new ExpertPlacement(spec, std::move(loader), memory_limit_bytes));
  std::vector<std::shared_ptr<const ExpertShard>> parts;
  if (initial != nullptr && !initial->experts().empty()) {
    if (memory_limit_bytes > 0 &&
        initial->weight_bytes() > memory_limit_bytes) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the experts selected take ", initial->weight_bytes(),
                       " bytes, more than --expert_memory_mb (",
                       memory_limit_bytes, " bytes)"));
    }
    parts.push_back(std::move(initial));
  }
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<CompositeShard> composite,
                       CompositeShard::Create(spec.dim, parts));
  absl::MutexLock lock(&p->mu_);
  p->current_.shard = std::move(composite);
  p->parts_ = std::move(parts);
  return p;
}

ExpertPlacement::Snapshot ExpertPlacement::Current() const {
  absl::MutexLock lock(&mu_);
  return current_;
}

int64_t ExpertPlacement::EstimateBytes(const common::ExpertSet& experts) const {
  const Snapshot now = Current();
  int64_t loaded_params = 0;
  for (const common::ExpertKey& key : now.shard->experts().keys()) {
    loaded_params += spec_.layers[key.layer].config.expert_parameters();
  }
  const double per_param =
      loaded_params > 0
          ? static_cast<double>(now.shard->weight_bytes()) / loaded_params
          : 4.0;
  int64_t params = 0;
  for (const common::ExpertKey& key : experts.keys()) {
    params += spec_.layers[key.layer].config.expert_parameters();
  }
  return static_cast<int64_t>(params * per_param + 0.5);
}

absl::StatusOr<ExpertPlacement::Change> ExpertPlacement::Set(
    const common::ExpertSet& wanted, int64_t generation) {
  absl::MutexLock set_lock(&set_mu_);
  if (!loader_) {
    return absl::FailedPreconditionError(
        "this worker's experts are fixed (it was started without a way to "
        "load others)");
  }
  Snapshot now;
  std::vector<std::shared_ptr<const ExpertShard>> held_parts;
  {
    absl::MutexLock lock(&mu_);
    now = current_;
    held_parts = parts_;
  }
  const common::ExpertSet held = now.shard->experts();
  Change change;
  change.added = Difference(wanted, held);
  change.removed = Difference(held, wanted);
  const bool same = change.added.empty() && change.removed.empty();
  if (generation < now.generation || (generation == now.generation && !same)) {
    return absl::FailedPreconditionError(
        absl::StrCat("placement generation ", generation,
                     " is stale: this worker is at ", now.generation));
  }
  if (generation == now.generation) {
    change.unchanged = true;
    return change;
  }
  const int64_t bytes = EstimateBytes(wanted);
  if (memory_limit_bytes_ > 0 && bytes > memory_limit_bytes_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the placement needs about ", bytes, " bytes of weights; this worker ",
        "may hold ", memory_limit_bytes_, " (--expert_memory_mb)"));
  }
  // Parts wholly kept are shared; the rest of what is wanted is loaded as
  // one new part.
  std::vector<std::shared_ptr<const ExpertShard>> parts;
  common::ExpertSet covered(wanted.layers());
  for (const auto& part : held_parts) {
    const common::ExpertSet mine = part->experts();
    if (Subset(mine, wanted)) {
      parts.push_back(part);
      covered.Merge(mine);
    }
  }
  const common::ExpertSet to_load = Difference(wanted, covered);
  if (!to_load.empty()) {
    MOE_ASSIGN_OR_RETURN(std::unique_ptr<ExpertShard> loaded, loader_(to_load));
    parts.push_back(std::move(loaded));
  }
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<CompositeShard> next,
                       CompositeShard::Create(spec_.dim, parts));
  absl::MutexLock lock(&mu_);
  current_.shard = std::move(next);
  current_.generation = generation;
  parts_ = std::move(parts);
  return change;
}

}  // namespace moe::experts
