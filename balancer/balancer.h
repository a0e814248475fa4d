// Balancer: the one writer of placement (docs/placement.md). Every
// interval it asks each worker what it hosts and how many tokens each of
// its experts ran, keeps a decayed rate of load per (layer, expert), and
// acts:
//   - heal: an expert whose every host has been unreachable for
//     dead_after, or whose hosts are all leaving, is placed on live workers
//     at once;
//   - leave: a worker that reports it is leaving (SIGTERM) has its experts
//     moved away, then is told to host none (it then stops);
//   - rebalance: every rebalance_every, a plan (balancer/plan.h) is
//     applied when it lowers the worst layer's imbalance by min_gain or
//     more, or gives an expert with a single copy its second, within
//     max_move_bytes_per_minute.
// Every change is make-before-break: new copies are loaded (SetExperts with
// what the worker holds plus them), then the balancer waits `settle` for
// the routers' probes to see them, then copies that move away are dropped,
// and only where another host keeps the expert. No forward finds an expert
// uncovered because of a move.
//
// Thread-safety: Tick() runs on one thread (Run()'s); Status() may be
// called from any.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "balancer/plan.h"
#include "balancer/worker_admin.h"
#include "common/model_spec.h"

namespace moe::balancer {

struct BalancerOptions {
  absl::Duration interval = absl::Seconds(1);  // workers polled
  absl::Duration rebalance_every = absl::Seconds(30);
  absl::Duration load_half_life = absl::Seconds(30);
  // Apply a load plan when the worst layer's imbalance falls by this much.
  double min_gain = 0.1;
  // Time for every router to see new copies (2-3 of their probe
  // intervals).
  absl::Duration settle = absl::Seconds(3);
  // A worker unreachable this long has its experts placed elsewhere.
  absl::Duration dead_after = absl::Seconds(3);
  // Bytes of new copies a load plan may load per minute (0: no cap).
  // Healing and leaving are never capped.
  int64_t max_move_bytes_per_minute = 0;
  // Room of a worker without --expert_memory_mb: the pool's copies are
  // this many times the model's experts, shared evenly.
  double copies_per_expert = 2.5;
  bool dry_run = false;  // log plans, change nothing
  PlanOptions plan;
};

class Balancer {
 public:
  // `spec` and `fingerprint` are the model's (workers of another are left
  // alone). `registry` (may be null) gets the balancer's metrics.
  Balancer(const common::ModelSpec& spec, std::string fingerprint,
           std::vector<std::unique_ptr<WorkerAdmin>> workers,
           const BalancerOptions& options,
           prometheus::Registry* registry = nullptr);
  ~Balancer();

  // Workers behind one name (--workers_dns): every `refresh`, the addresses
  // `resolve` gives that are new join (through `make`). Call before Run().
  void DiscoverWorkers(
      std::function<absl::StatusOr<std::vector<std::string>>()> resolve,
      std::function<std::unique_ptr<WorkerAdmin>(const std::string&)> make,
      absl::Duration refresh);

  // Ticks every interval until `stop` is notified.
  void Run(absl::Notification* stop);
  // One pass: poll, then heal, leave or rebalance.
  void Tick();

 private:
  struct Tracked {
    bool seen = false;  // answered once
    bool reachable = false;
    bool ours = false;  // this model, changeable
    bool leaving = false;
    absl::Time last_answer;
    common::ExpertSet hosted;
    int64_t limit_bytes = 0;
    int64_t generation = 0;
    std::map<common::ExpertKey, int64_t> tokens;  // cumulative
    std::string why_not;                          // why it is not ours
  };
  struct Metrics;

  void Discover();
  void Poll();
  // Workers as the plan sees them.
  std::vector<WorkerState> States() const;
  std::vector<common::ExpertSet> Hosted() const;
  // Why something must change now ("" if nothing must).
  std::string Urgent() const;
  // Applies `plan` make-before-break; bytes loaded.
  int64_t Apply(const Plan& plan, const std::string& reason);
  absl::Status Set(int w, const common::ExpertSet& experts,
                   const std::string& reason);
  void Publish(const std::vector<WorkerState>& states);

  const common::ModelSpec spec_;
  const std::string fingerprint_;
  std::vector<std::unique_ptr<WorkerAdmin>> workers_;
  std::function<absl::StatusOr<std::vector<std::string>>()> resolve_;
  std::function<std::unique_ptr<WorkerAdmin>(const std::string&)> make_admin_;
  absl::Duration refresh_;
  absl::Time last_resolve_ = absl::InfinitePast();
  const BalancerOptions options_;
  std::vector<Tracked> tracked_;
  ExpertLoad rate_;  // decayed tokens per second
  absl::Time last_poll_;
  absl::Time last_rebalance_;
  absl::Time last_stuck_log_ = absl::InfinitePast();
  int64_t generation_ = 0;  // the last one given
  // Bytes loaded by load plans in the last minute: (when, bytes).
  std::vector<std::pair<absl::Time, int64_t>> moved_;
  std::unique_ptr<Metrics> metrics_;
};

}  // namespace moe::balancer
