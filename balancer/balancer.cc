#include "balancer/balancer.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/logging.h"
#include "common/metrics_buckets.h"

namespace moe::balancer {
namespace {

constexpr absl::Duration kInfoTimeout = absl::Seconds(2);
// Loading experts from a checkpoint may take a while.
constexpr absl::Duration kSetTimeout = absl::Seconds(120);
constexpr int kMaxRounds = 4;

common::ExpertSet Minus(const common::ExpertSet& a, const common::ExpertSet& b,
                        size_t layers) {
  common::ExpertSet out(layers);
  for (const common::ExpertKey& key : a.keys()) {
    if (!b.Contains(key)) out.Add(key);
  }
  return out;
}

int64_t Bytes(const common::ModelSpec& spec, const common::ExpertSet& set) {
  int64_t bytes = 0;
  for (const common::ExpertKey& key : set.keys()) {
    bytes += ExpertBytes(spec.layers[key.layer]);
  }
  return bytes;
}

int SingleCopies(const std::map<common::ExpertKey, int>& counts) {
  int n = 0;
  for (const auto& [key, c] : counts) n += c == 1 ? 1 : 0;
  return n;
}

}  // namespace

struct Balancer::Metrics {
  Metrics(prometheus::Registry& r, const common::ModelSpec& spec,
          const std::vector<std::unique_ptr<WorkerAdmin>>& workers)
      : rebalances(prometheus::BuildCounter()
                       .Name("moe_balancer_rebalances_total")
                       .Help("Placement changes applied, by reason: heal (an "
                             "expert without a live copy), leave (a worker "
                             "stopping), load (imbalance), copies (a second "
                             "copy).")
                       .Register(r)),
        bytes_moved(prometheus::BuildCounter()
                        .Name("moe_balancer_bytes_moved_total")
                        .Help("Bytes of expert weights loaded by placement "
                              "changes (float32 estimate).")
                        .Register(r)
                        .Add({})),
        generation(prometheus::BuildGauge()
                       .Name("moe_balancer_placement_generation")
                       .Help("The last placement generation given.")
                       .Register(r)
                       .Add({})),
        single_copy(prometheus::BuildGauge()
                        .Name("moe_balancer_single_copy_experts")
                        .Help("Experts with exactly one live copy.")
                        .Register(r)
                        .Add({})),
        uncovered(prometheus::BuildGauge()
                      .Name("moe_balancer_uncovered_experts")
                      .Help("Experts with no live copy.")
                      .Register(r)
                      .Add({})),
        heal(prometheus::BuildHistogram()
                 .Name("moe_balancer_heal_seconds")
                 .Help("From a worker's last answer before it was lost to "
                       "every expert having a live copy again.")
                 .Register(r)
                 .Add({}, prometheus::Histogram::BucketBoundaries{
                              1, 2, 5, 10, 20, 30, 60, 120, 300})) {
    for (const char* reason : {"heal", "leave", "load", "copies"}) {
      rebalances.Add({{"reason", reason}});
    }
    auto& imb = prometheus::BuildGauge()
                    .Name("moe_balancer_imbalance_ratio")
                    .Help(
                        "(max - mean) / mean of the workers' load of the "
                        "layer over the decayed window, as placed now.")
                    .Register(r);
    for (const common::LayerSpec& l : spec.layers) {
      imbalance.push_back(&imb.Add({{"layer", l.name}}));
    }
    auto& share = prometheus::BuildGauge()
                      .Name("moe_balancer_worker_load_share")
                      .Help(
                          "Each worker's share of all layers' load, as "
                          "placed now.")
                      .Register(r);
    share_family = &share;
    for (const auto& w : workers) AddWorker(w->address());
    auto& reps = prometheus::BuildGauge()
                     .Name("moe_balancer_expert_replicas")
                     .Help("Live copies of each expert.")
                     .Register(r);
    for (const common::ExpertKey& key : common::ExpertSet::All(spec).keys()) {
      replicas[key] = &reps.Add({{"layer", spec.layers[key.layer].name},
                                 {"expert", absl::StrCat(key.expert)}});
    }
  }
  void AddWorker(const std::string& address) {
    load_share.push_back(&share_family->Add({{"worker", address}}));
  }
  prometheus::Family<prometheus::Gauge>* share_family = nullptr;
  prometheus::Family<prometheus::Counter>& rebalances;
  prometheus::Counter& bytes_moved;
  prometheus::Gauge& generation;
  prometheus::Gauge& single_copy;
  prometheus::Gauge& uncovered;
  prometheus::Histogram& heal;
  std::vector<prometheus::Gauge*> imbalance;
  std::vector<prometheus::Gauge*> load_share;
  std::map<common::ExpertKey, prometheus::Gauge*> replicas;
};

Balancer::Balancer(const common::ModelSpec& spec, std::string fingerprint,
                   std::vector<std::unique_ptr<WorkerAdmin>> workers,
                   const BalancerOptions& options,
                   prometheus::Registry* registry)
    : spec_(spec),
      fingerprint_(std::move(fingerprint)),
      workers_(std::move(workers)),
      options_(options),
      tracked_(workers_.size()) {
  if (registry != nullptr) {
    metrics_ = std::make_unique<Metrics>(*registry, spec_, workers_);
  }
  last_rebalance_ = absl::Now();
}

Balancer::~Balancer() = default;

void Balancer::Run(absl::Notification* stop) {
  do {
    Tick();
  } while (!stop->WaitForNotificationWithTimeout(options_.interval));
}

void Balancer::DiscoverWorkers(
    std::function<absl::StatusOr<std::vector<std::string>>()> resolve,
    std::function<std::unique_ptr<WorkerAdmin>(const std::string&)> make,
    absl::Duration refresh) {
  resolve_ = std::move(resolve);
  make_admin_ = std::move(make);
  refresh_ = refresh;
}

void Balancer::Discover() {
  const absl::Time now = absl::Now();
  if (!resolve_ || now - last_resolve_ < refresh_) return;
  last_resolve_ = now;
  absl::StatusOr<std::vector<std::string>> found = resolve_();
  if (!found.ok()) return;  // the workers known so far
  for (const std::string& address : *found) {
    bool known = false;
    for (const auto& w : workers_) known |= w->address() == address;
    if (known) continue;
    MOE_LOG(INFO) << "worker discovery: new worker " << address;
    workers_.push_back(make_admin_(address));
    tracked_.emplace_back();
    if (metrics_) metrics_->AddWorker(address);
  }
}

void Balancer::Poll() {
  Discover();
  const absl::Time now = absl::Now();
  ExpertLoad delta;
  for (size_t w = 0; w < workers_.size(); ++w) {
    Tracked& t = tracked_[w];
    absl::StatusOr<moe::v1::ShardInfo> info =
        workers_[w]->Info(now + kInfoTimeout);
    if (!info.ok()) {
      if (t.reachable) {
        MOE_LOG(WARNING) << "worker " << workers_[w]->address()
                         << " unreachable: " << info.status().message();
      }
      t.reachable = false;
      continue;
    }
    if (!t.reachable) {
      MOE_LOG(INFO) << "worker " << workers_[w]->address() << " answers";
    }
    t.seen = t.reachable = true;
    t.last_answer = now;
    std::string why;
    if (info->fingerprint() != fingerprint_) {
      why = absl::StrCat("serves another model (\"", info->model_name(), "\" ",
                         info->fingerprint(), ")");
    } else if (info->layers_size() != static_cast<int>(spec_.layers.size())) {
      why = "reports another layer layout";
    } else if (!info->placement_writable()) {
      why = "does not accept placement changes (no --admin_token_file)";
    }
    if (why != t.why_not && !why.empty()) {
      MOE_LOG(WARNING) << "worker " << workers_[w]->address()
                       << " left alone: " << why;
    }
    t.why_not = why;
    t.ours = why.empty();
    if (!t.ours) continue;
    if (info->leaving() && !t.leaving) {
      MOE_LOG(INFO) << "worker " << workers_[w]->address()
                    << " is leaving: its experts move away";
    }
    t.leaving = info->leaving();
    t.limit_bytes = info->expert_memory_limit_bytes();
    t.generation = info->generation();
    generation_ = std::max(generation_, t.generation);
    std::vector<std::vector<int64_t>> ids;
    for (int l = 0; l < info->layers_size(); ++l) {
      const moe::v1::LayerShard& layer = info->layers(l);
      ids.emplace_back(layer.expert_ids().begin(), layer.expert_ids().end());
      for (const moe::v1::ExpertLoad& load : layer.load()) {
        const common::ExpertKey key{l, load.expert_id()};
        int64_t& before = t.tokens[key];
        // A restarted worker counts from 0 again.
        const int64_t d =
            load.tokens() >= before ? load.tokens() - before : load.tokens();
        before = load.tokens();
        delta[key] += static_cast<double>(d);
      }
    }
    t.hosted = common::ExpertSet(std::move(ids));
  }
  if (last_poll_ != absl::Time()) {
    const double dt = absl::ToDoubleSeconds(now - last_poll_);
    if (dt > 0) {
      const double keep =
          std::exp2(-dt / absl::ToDoubleSeconds(options_.load_half_life));
      for (auto& [key, rate] : rate_) rate *= keep;
      for (const auto& [key, d] : delta) {
        rate_[key] += (1 - keep) * d / dt;
      }
    }
  }
  last_poll_ = now;
}

std::vector<WorkerState> Balancer::States() const {
  std::vector<WorkerState> out(workers_.size());
  int usable = 0;
  for (size_t w = 0; w < workers_.size(); ++w) {
    const Tracked& t = tracked_[w];
    out[w].address = workers_[w]->address();
    out[w].live = t.reachable && t.ours;
    out[w].leaving = t.leaving;
    out[w].hosted = out[w].live ? t.hosted : common::ExpertSet();
    if (out[w].live && !t.leaving) ++usable;
  }
  const int64_t model_bytes = Bytes(spec_, common::ExpertSet::All(spec_));
  for (size_t w = 0; w < workers_.size(); ++w) {
    const Tracked& t = tracked_[w];
    out[w].capacity_bytes =
        t.limit_bytes > 0 ? t.limit_bytes
                          : static_cast<int64_t>(
                                std::ceil(options_.copies_per_expert *
                                          model_bytes / std::max(usable, 1)));
  }
  return out;
}

std::vector<common::ExpertSet> Balancer::Hosted() const {
  std::vector<common::ExpertSet> out;
  for (const WorkerState& s : States()) out.push_back(s.hosted);
  return out;
}

std::string Balancer::Urgent() const {
  const std::vector<WorkerState> states = States();
  std::vector<common::ExpertSet> staying;
  for (const WorkerState& s : states) {
    staying.push_back(s.live && !s.leaving ? s.hosted : common::ExpertSet());
  }
  for (const auto& [key, c] : CopyCounts(spec_, staying)) {
    if (c == 0) {
      // Its host may be leaving: that is a move, not a loss.
      for (const WorkerState& s : states) {
        if (s.live && s.leaving && s.hosted.Contains(key)) return "leave";
      }
      return "heal";
    }
  }
  for (const WorkerState& s : states) {
    if (s.live && s.leaving && !s.hosted.empty()) return "leave";
  }
  return "";
}

absl::Status Balancer::Set(int w, const common::ExpertSet& experts,
                           const std::string& reason) {
  moe::v1::SetExpertsRequest request;
  for (size_t l = 0; l < experts.layers(); ++l) {
    if (experts.ids(l).empty()) continue;
    moe::v1::LayerExperts* layer = request.add_layers();
    layer->set_layer(static_cast<int32_t>(l));
    for (int64_t e : experts.ids(l)) layer->add_expert_ids(e);
  }
  request.set_generation(++generation_);
  request.set_reason(reason);
  absl::StatusOr<moe::v1::ShardInfo> info =
      workers_[w]->SetExperts(request, absl::Now() + kSetTimeout);
  if (!info.ok()) {
    MOE_LOG(WARNING) << "SetExperts on " << workers_[w]->address()
                     << " failed: " << info.status();
    return info.status();
  }
  tracked_[w].hosted = experts;
  tracked_[w].generation = info->generation();
  if (metrics_) metrics_->generation.Set(static_cast<double>(generation_));
  return absl::OkStatus();
}

int64_t Balancer::Apply(const Plan& plan, const std::string& reason) {
  const size_t layers = spec_.layers.size();
  int64_t loaded = 0;
  int copies_added = 0, copies_dropped = 0;
  const std::vector<WorkerState> states = States();
  for (int round = 0; round < kMaxRounds; ++round) {
    // Make: every worker loads its new copies, as far as its room allows
    // beside what it holds.
    bool added = false;
    for (size_t w = 0; w < workers_.size(); ++w) {
      if (!states[w].live || states[w].leaving) continue;
      const common::ExpertSet held = tracked_[w].hosted;
      common::ExpertSet next = held;
      int64_t bytes = Bytes(spec_, held);
      int64_t adding = 0;
      for (const common::ExpertKey& key :
           Minus(plan.target[w], held, layers).keys()) {
        const int64_t b = ExpertBytes(spec_.layers[key.layer]);
        if (bytes + b > states[w].capacity_bytes) continue;
        next.Add(key);
        bytes += b;
        adding += b;
      }
      if (next == held) continue;
      if (Set(static_cast<int>(w), next, reason).ok()) {
        added = true;
        loaded += adding;
        copies_added += static_cast<int>(next.size() - held.size());
      }
    }
    // Routers see the new copies before any old one goes.
    if (added) absl::SleepFor(options_.settle);
    // Break: copies that move away are dropped where another live host
    // keeps the expert.
    std::vector<common::ExpertSet> hosted = Hosted();
    std::map<common::ExpertKey, int> counts = CopyCounts(spec_, hosted);
    bool done = true;
    for (size_t w = 0; w < workers_.size(); ++w) {
      if (!states[w].live) continue;
      const common::ExpertSet held = tracked_[w].hosted;
      const common::ExpertSet want =
          states[w].leaving ? common::ExpertSet(layers) : plan.target[w];
      common::ExpertSet next = held;
      common::ExpertSet drop(layers);
      for (const common::ExpertKey& key : Minus(held, want, layers).keys()) {
        if (counts[key] <= 1) continue;
        --counts[key];
        drop.Add(key);
      }
      if (!drop.empty()) {
        next = Minus(held, drop, layers);
        if (Set(static_cast<int>(w), next, reason).ok()) {
          copies_dropped += static_cast<int>(drop.size());
        }
      }
      if (tracked_[w].hosted != want &&
          !(states[w].leaving && tracked_[w].hosted.empty())) {
        done = false;
      }
    }
    if (done) break;
  }
  MOE_LOG(INFO) << "placement " << reason << ": " << copies_added
                << " copies loaded (" << loaded / (1 << 20) << " MiB), "
                << copies_dropped << " dropped, generation " << generation_;
  if (metrics_) {
    metrics_->rebalances.Add({{"reason", reason}}).Increment();
    metrics_->bytes_moved.Increment(static_cast<double>(loaded));
  }
  return loaded;
}

void Balancer::Publish(const std::vector<WorkerState>& states) {
  if (!metrics_) return;
  std::vector<common::ExpertSet> hosted;
  std::vector<bool> counted;
  for (const WorkerState& s : states) {
    hosted.push_back(s.hosted);
    counted.push_back(s.live && !s.leaving);
  }
  const std::map<common::ExpertKey, int> counts = CopyCounts(spec_, hosted);
  int none = 0;
  for (const auto& [key, c] : counts) {
    metrics_->replicas.at(key)->Set(c);
    none += c == 0 ? 1 : 0;
  }
  metrics_->single_copy.Set(SingleCopies(counts));
  metrics_->uncovered.Set(none);
  std::vector<double> total(states.size(), 0.0);
  for (size_t l = 0; l < spec_.layers.size(); ++l) {
    metrics_->imbalance[l]->Set(
        Imbalance(hosted, rate_, static_cast<int32_t>(l), counted));
    const std::vector<double> loads =
        WorkerLoads(hosted, rate_, static_cast<int32_t>(l));
    for (size_t w = 0; w < loads.size(); ++w) total[w] += loads[w];
  }
  double sum = 0;
  for (double t : total) sum += t;
  for (size_t w = 0; w < states.size(); ++w) {
    metrics_->load_share[w]->Set(sum > 0 ? total[w] / sum : 0);
  }
}

void Balancer::Tick() {
  Poll();
  const absl::Time now = absl::Now();
  std::vector<WorkerState> states = States();
  Publish(states);
  // A worker that stopped answering only just now may come back: nothing
  // is decided while one is in that state.
  absl::Time lost_at = absl::InfiniteFuture();
  for (const Tracked& t : tracked_) {
    if (!t.seen || t.reachable || !t.ours) continue;
    if (now - t.last_answer < options_.dead_after) return;
    lost_at = std::min(lost_at, t.last_answer);
  }
  int usable = 0;
  for (const WorkerState& s : states) usable += s.live && !s.leaving ? 1 : 0;
  if (usable == 0) return;
  std::string reason = Urgent();
  const Plan plan = MakePlan(spec_, rate_, states, options_.plan);
  std::vector<bool> counted;
  std::vector<common::ExpertSet> hosted;
  for (const WorkerState& s : states) {
    counted.push_back(s.live && !s.leaving);
    hosted.push_back(s.hosted);
  }
  const double before = WorstImbalance(spec_, hosted, rate_, counted);
  const double after = WorstImbalance(spec_, plan.target, rate_, counted);
  int64_t to_load = 0;
  for (size_t w = 0; w < states.size(); ++w) {
    to_load +=
        Bytes(spec_, Minus(plan.target[w], hosted[w], spec_.layers.size()));
  }
  if (reason.empty()) {
    if (now - last_rebalance_ < options_.rebalance_every) return;
    last_rebalance_ = now;
    const int singles_now = SingleCopies(CopyCounts(spec_, hosted));
    const int singles_planned = SingleCopies(CopyCounts(spec_, plan.target));
    if (before - after >= options_.min_gain) {
      reason = "load";
    } else if (singles_planned < singles_now) {
      reason = "copies";
    } else {
      return;
    }
    if (options_.max_move_bytes_per_minute > 0) {
      int64_t recent = 0;
      moved_.erase(std::remove_if(moved_.begin(), moved_.end(),
                                  [&](const auto& m) {
                                    return now - m.first > absl::Minutes(1);
                                  }),
                   moved_.end());
      for (const auto& m : moved_) recent += m.second;
      if (recent + to_load > options_.max_move_bytes_per_minute) {
        MOE_LOG(INFO) << "a " << reason << " plan would load " << to_load
                      << " bytes; " << recent
                      << " were loaded in the last minute, the cap is "
                      << options_.max_move_bytes_per_minute << ": waiting";
        return;
      }
    }
  }
  // Nothing the live workers can do (no room for what is missing): said
  // once a minute, not acted on every pass.
  bool changes = false;
  for (size_t w = 0; w < states.size(); ++w) {
    if (states[w].live && plan.target[w] != hosted[w] &&
        !(states[w].leaving && plan.target[w].empty() && hosted[w].empty())) {
      changes = true;
    }
  }
  if (!changes) {
    if (now - last_stuck_log_ >= absl::Minutes(1)) {
      last_stuck_log_ = now;
      MOE_LOG(ERROR) << "cannot " << reason << ": the live workers have no room"
                     << (plan.unplaced.empty()
                             ? ""
                             : " for " + plan.unplaced.DescribeMissing(spec_));
    }
    return;
  }
  MOE_LOG(INFO) << (options_.dry_run ? "plan (dry run, not applied) "
                                     : "placement change ")
                << reason << ": worst imbalance "
                << absl::StrFormat("%.3f", before) << " -> "
                << absl::StrFormat("%.3f", after) << ", about "
                << to_load / (1 << 20) << " MiB to load";
  for (size_t w = 0; w < states.size(); ++w) {
    if (!states[w].live) continue;
    MOE_LOG(INFO) << "  " << states[w].address << ": "
                  << states[w].hosted.Describe(spec_) << " -> "
                  << plan.target[w].Describe(spec_);
  }
  if (!plan.unplaced.empty()) {
    MOE_LOG(ERROR) << "the live workers have no room for "
                   << plan.unplaced.DescribeMissing(spec_);
  }
  if (options_.dry_run) return;
  const int64_t loaded = Apply(plan, reason);
  if (reason != "heal" && reason != "leave") {
    moved_.push_back({now, loaded});
  }
  if (reason == "heal" && metrics_ && lost_at != absl::InfiniteFuture()) {
    metrics_->heal.Observe(absl::ToDoubleSeconds(absl::Now() - lost_at));
  }
  Publish(States());
}

}  // namespace moe::balancer
