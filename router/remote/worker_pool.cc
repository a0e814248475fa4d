#include "router/remote/worker_pool.h"

#include <algorithm>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace moe::router {

const char* WorkerStateName(WorkerState state) {
  switch (state) {
    case WorkerState::kConnecting:
      return "connecting";
    case WorkerState::kUp:
      return "up";
    case WorkerState::kUnreachable:
      return "unreachable";
    case WorkerState::kWrongModel:
      return "wrong_model";
    case WorkerState::kNothingUseful:
      return "nothing_useful";
    case WorkerState::kDown:
      return "down";
    case WorkerState::kGone:
      return "gone";
  }
  return "unknown";
}

WorkerPool::WorkerPool(std::vector<std::unique_ptr<WorkerTransport>> transports,
                       const common::ModelSpec& spec, std::string fingerprint,
                       const WorkerPoolOptions& options)
    : spec_(spec), fingerprint_(std::move(fingerprint)), options_(options) {
  capacity_ =
      std::max(options.max_workers, static_cast<int>(transports.size()));
  workers_ = std::make_unique<std::unique_ptr<Worker>[]>(capacity_);
  int n = 0;
  for (auto& t : transports) {
    auto w = std::make_unique<Worker>();
    w->transport = std::move(t);
    workers_[n++] = std::move(w);
  }
  size_.store(n, std::memory_order_release);
  absl::MutexLock lock(&mu_);
  views_.resize(capacity_);
}

absl::StatusOr<int> WorkerPool::AddWorker(
    std::unique_ptr<WorkerTransport> transport) {
  absl::MutexLock lock(&add_mu_);
  const int n = size();
  if (n >= capacity_) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the pool holds at most ", capacity_,
        " workers (--max_workers); not adding ", transport->address()));
  }
  auto w = std::make_unique<Worker>();
  w->transport = std::move(transport);
  workers_[n] = std::move(w);
  size_.store(n + 1, std::memory_order_release);
  return n;
}

void WorkerPool::Retire(int worker, const std::string& why) {
  View view;
  view.state = WorkerState::kGone;
  view.reason = why;
  SetState(worker, std::move(view));
}

void WorkerPool::Revive(int worker) {
  {
    absl::MutexLock lock(&mu_);
    if (views_[worker].state != WorkerState::kGone) return;
  }
  SetState(worker, View());  // connecting, until its probe
}

WorkerPool::~WorkerPool() {
  stop_.Notify();
  if (prober_.joinable()) prober_.join();
}

void WorkerPool::Start() {
  prober_ = std::thread([this] { ProbeLoop(); });
}

const std::string& WorkerPool::address(int worker) const {
  return workers_[worker]->transport->address();
}

WorkerTransport& WorkerPool::transport(int worker) const {
  return *workers_[worker]->transport;
}

void WorkerPool::ProbeLoop() {
  do {
    ProbeAll();
  } while (!stop_.WaitForNotificationWithTimeout(options_.probe_interval));
}

void WorkerPool::ProbeAll() {
  for (int i = 0; i < size(); ++i) {
    {
      absl::MutexLock lock(&mu_);
      if (views_[i].state == WorkerState::kGone) continue;
    }
    Probe(i);
  }
}

WorkerState WorkerPool::Judge(const moe::v1::ShardInfo& info,
                              std::string* reason) const {
  // The most telling difference first: a dim, then the identity.
  if (info.dim() != spec_.dim) {
    *reason = absl::StrCat("serves a model of dim ", info.dim(),
                           "; the router's is ", spec_.dim, " (\"",
                           info.model_name(), "\" ", info.fingerprint(), ")");
    return WorkerState::kWrongModel;
  }
  if (info.fingerprint() != fingerprint_) {
    *reason = absl::StrCat("serves another model: \"", info.model_name(), "\" ",
                           info.fingerprint(), "; the router serves \"",
                           spec_.name, "\" ", fingerprint_);
    return WorkerState::kWrongModel;
  }
  if (info.layers_size() != static_cast<int>(spec_.layers.size())) {
    *reason = absl::StrCat("reports ", info.layers_size(),
                           " layers; the "
                           "model has ",
                           spec_.layers.size());
    return WorkerState::kWrongModel;
  }
  bool any = false;
  for (int l = 0; l < info.layers_size(); ++l) {
    const moe::v1::LayerShard& shard = info.layers(l);
    const common::LayerConfig& c = spec_.layers[l].config;
    if (shard.name() != spec_.layers[l].name ||
        shard.total_experts() != c.total_experts() ||
        shard.expert_hidden() != c.expert_hidden()) {
      *reason = absl::StrCat(
          "layer ", l, " is \"", shard.name(), "\" with ",
          shard.total_experts(), " experts of hidden ", shard.expert_hidden(),
          "; the router has \"", spec_.layers[l].name, "\" with ",
          c.total_experts(), " of hidden ", c.expert_hidden());
      return WorkerState::kWrongModel;
    }
    for (int64_t e : shard.expert_ids()) {
      if (e < 0 || e >= c.total_experts()) {
        *reason = absl::StrCat("hosts expert ", e, " of layer \"", shard.name(),
                               "\", which has ", c.total_experts());
        return WorkerState::kWrongModel;
      }
      any = true;
    }
  }
  if (!any) {
    *reason = info.leaving() ? "hosts no expert: it is leaving"
                             : "hosts no expert (yet)";
    return WorkerState::kNothingUseful;
  }
  reason->clear();
  return WorkerState::kUp;
}

void WorkerPool::Probe(int i) {
  absl::StatusOr<moe::v1::ShardInfo> info =
      workers_[i]->transport->GetShardInfo(options_.clock->Now() +
                                           options_.probe_timeout);
  View view;
  if (!info.ok()) {
    view.state = WorkerState::kUnreachable;
    view.reason =
        absl::StrCat("GetShardInfo failed: ", info.status().message());
  } else {
    view.state = Judge(*info, &view.reason);
    view.fingerprint = info->fingerprint();
    view.model_name = info->model_name();
    view.device = info->device();
    view.compute_dtype = info->compute_dtype();
    view.generation = info->generation();
    view.leaving = info->leaving();
    if (view.state == WorkerState::kUp) {
      std::vector<std::vector<int64_t>> ids;
      for (const moe::v1::LayerShard& l : info->layers()) {
        ids.emplace_back(l.expert_ids().begin(), l.expert_ids().end());
      }
      view.experts = common::ExpertSet(std::move(ids));
    }
  }
  SetState(i, std::move(view));
}

void WorkerPool::SetState(int i, View view) {
  const WorkerState state = view.state;
  bool became_ready = false;
  {
    absl::MutexLock lock(&mu_);
    View& old = views_[i];
    // A gone worker stays gone until revived (a probe that was in flight
    // when it left changes nothing).
    if (old.state == WorkerState::kGone && state != WorkerState::kGone &&
        state != WorkerState::kConnecting) {
      return;
    }
    // Logged once per change of state or reason, not per probe.
    if (old.state != view.state || old.reason != view.reason ||
        old.leaving != view.leaving ||
        (view.state == WorkerState::kUp &&
         (old.experts != view.experts || old.generation != view.generation))) {
      if (view.state == WorkerState::kUp) {
        MOE_LOG(INFO) << "worker " << address(i) << " up: experts "
                      << view.experts.Describe(spec_) << " on " << view.device
                      << " (placement generation " << view.generation << ")"
                      << (view.leaving ? ", leaving" : "");
      } else if (view.state == WorkerState::kNothingUseful) {
        // A normal state under a balancer: a new worker, or one that left.
        MOE_LOG(INFO) << "worker " << address(i) << ": " << view.reason;
      } else {
        MOE_LOG(WARNING) << "worker " << address(i) << " "
                         << WorkerStateName(view.state) << ": " << view.reason;
      }
    }
    // A worker that went away is still shown with what it hosted.
    if (view.state != WorkerState::kUp && view.experts.empty()) {
      view.experts = std::move(old.experts);
    }
    old = std::move(view);
    if (!ready_.load() && UncoveredLocked().empty()) {
      ready_.store(true);
      became_ready = true;
    }
  }
  if (became_ready) {
    MOE_LOG(INFO) << "every expert of every layer has a worker: ready";
  }
  if (observer_) observer_(i, state);
}

common::ExpertSet WorkerPool::UncoveredLocked() const {
  common::ExpertSet covered(spec_.layers.size());
  for (int i = 0; i < size(); ++i) {
    if (views_[i].state == WorkerState::kUp) covered.Merge(views_[i].experts);
  }
  common::ExpertSet missing(spec_.layers.size());
  for (const common::ExpertKey& key : common::ExpertSet::All(spec_).keys()) {
    if (!covered.Contains(key)) missing.Add(key);
  }
  return missing;
}

void WorkerPool::ForEachHost(common::ExpertKey key,
                             const std::set<int>& exclude, uint64_t turn,
                             absl::FunctionRef<void(const Host&)> visit) const {
  absl::MutexLock lock(&mu_);
  const int n = size();
  // Equals: the first from worker `turn` on.
  const int first = n == 0 ? 0 : static_cast<int>(turn % n);
  for (int k = 0; k < n; ++k) {
    const int i = (first + k) % n;
    const View& v = views_[i];
    if (v.state != WorkerState::kUp || exclude.count(i) != 0) continue;
    if (!v.experts.Contains(key)) continue;
    visit({v.leaving, workers_[i]->inflight.load(), k, i});
  }
}

int WorkerPool::Choose(common::ExpertKey key, const std::set<int>& exclude,
                       uint64_t turn, absl::Span<const int> joining) const {
  Host best{false, 0, 0, -1}, best_joining{false, 0, 0, -1};
  ForEachHost(key, exclude, turn, [&](const Host& h) {
    if (best.worker < 0 || h.Before(best)) best = h;
    if (!h.leaving &&
        std::find(joining.begin(), joining.end(), h.worker) != joining.end() &&
        (best_joining.worker < 0 || h.Before(best_joining))) {
      best_joining = h;
    }
  });
  // An idle host answers soonest; otherwise the batch that already runs the
  // expert saves reading its weights again.
  if (best_joining.worker >= 0 && best.load > 0) return best_joining.worker;
  return best.worker;
}

std::vector<int> WorkerPool::Replicas(common::ExpertKey key,
                                      const std::set<int>& exclude,
                                      uint64_t turn) const {
  std::vector<Host> found;
  ForEachHost(key, exclude, turn, [&](const Host& h) { found.push_back(h); });
  std::sort(found.begin(), found.end(),
            [](const Host& a, const Host& b) { return a.Before(b); });
  std::vector<int> out;
  for (const Host& h : found) {
    if (h.leaving && !out.empty()) break;
    out.push_back(h.worker);
  }
  return out;
}

common::ExpertSet WorkerPool::Uncovered() const {
  absl::MutexLock lock(&mu_);
  return UncoveredLocked();
}

std::string WorkerPool::DescribeUncovered() const {
  return Uncovered().DescribeMissing(spec_);
}

void WorkerPool::MarkDown(int worker, const absl::Status& why) {
  View view;
  {
    absl::MutexLock lock(&mu_);
    if (views_[worker].state != WorkerState::kUp) return;
    view = views_[worker];
  }
  view.state = WorkerState::kDown;
  view.reason = std::string(why.message());
  SetState(worker, std::move(view));
}

void WorkerPool::CallStarted(int worker) { ++workers_[worker]->inflight; }

void WorkerPool::CallFinished(int worker, const absl::Status& status,
                              bool timeout_binds) {
  --workers_[worker]->inflight;
  const absl::StatusCode code = status.code();
  if (code == absl::StatusCode::kUnavailable ||
      code == absl::StatusCode::kInternal ||
      code == absl::StatusCode::kUnknown ||
      (code == absl::StatusCode::kDeadlineExceeded && timeout_binds)) {
    MarkDown(worker, status);
  }
}

int64_t WorkerPool::inflight(int worker) const {
  return workers_[worker]->inflight.load();
}

std::vector<WorkerSnapshot> WorkerPool::Snapshot() const {
  absl::MutexLock lock(&mu_);
  std::vector<WorkerSnapshot> out;
  for (int i = 0; i < size(); ++i) {
    const View& v = views_[i];
    out.push_back({address(i), v.state, v.reason, v.fingerprint, v.model_name,
                   v.device, v.compute_dtype, v.experts,
                   workers_[i]->inflight.load(), v.generation, v.leaving});
  }
  return out;
}

}  // namespace moe::router
