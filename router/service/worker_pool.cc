#include "router/service/worker_pool.h"

#include <algorithm>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"

namespace moe::router {

WorkerPool::WorkerPool(std::vector<std::string> addresses,
                       const common::ModelConfig& config,
                       const WorkerPoolOptions& options)
    : config_(config), options_(options) {
  for (std::string& address : addresses) {
    auto w = std::make_unique<Worker>();
    w->address = std::move(address);
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(options.max_message_bytes);
    args.SetMaxSendMessageSize(options.max_message_bytes);
    // Reconnect quickly after a worker restarts.
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    // Retries are the router's decision (replicas, failure policy).
    args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
    w->channel = grpc::CreateCustomChannel(
        w->address, grpc::InsecureChannelCredentials(), args);
    w->stub = moe::v1::ExpertWorker::NewStub(w->channel);
    w->generic_stub = std::make_unique<grpc::GenericStub>(w->channel);
    workers_.push_back(std::move(w));
  }
}

WorkerPool::~WorkerPool() {
  stop_.Notify();
  if (prober_.joinable()) prober_.join();
}

void WorkerPool::Start() {
  prober_ = std::thread([this] { ProbeLoop(); });
}

const std::string& WorkerPool::address(int worker) const {
  return workers_[worker]->address;
}

moe::v1::ExpertWorker::Stub* WorkerPool::stub(int worker) const {
  return workers_[worker]->stub.get();
}

grpc::GenericStub* WorkerPool::generic_stub(int worker) const {
  return workers_[worker]->generic_stub.get();
}

void WorkerPool::ProbeLoop() {
  do {
    for (int i = 0; i < size(); ++i) Probe(i);
  } while (!stop_.WaitForNotificationWithTimeout(options_.probe_interval));
}

void WorkerPool::Probe(int i) {
  Worker& w = *workers_[i];
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.probe_timeout));
  moe::v1::GetShardInfoRequest request;
  moe::v1::ShardInfo info;
  grpc::Status status = w.stub->GetShardInfo(&ctx, request, &info);
  std::string problem;
  if (!status.ok()) {
    problem = absl::StrCat("GetShardInfo failed: ", status.error_message());
  } else if (info.dim() != config_.dim ||
             info.total_experts() != config_.total_experts() ||
             info.expert_hidden() != config_.expert_hidden()) {
    problem = absl::StrCat("serves a different model (dim ", info.dim(), ", ",
                           info.total_experts(), " experts, hidden ",
                           info.expert_hidden(), "; the router has dim ",
                           config_.dim, ", ", config_.total_experts(),
                           " experts, hidden ", config_.expert_hidden(), ")");
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (!problem.empty()) {
    if (w.up)
      MOE_LOG(WARNING) << "worker " << w.address << " down: " << problem;
    w.up = false;
    if (observer_) observer_(i, false);
    return;
  }
  std::vector<int64_t> experts(info.expert_ids().begin(),
                               info.expert_ids().end());
  if (!w.up || experts != w.experts) {
    MOE_LOG(INFO) << "worker " << w.address << " up: experts ["
                  << absl::StrJoin(experts, ",") << "] on " << info.device();
  }
  w.experts = std::move(experts);
  w.device = info.device();
  w.up = true;
  if (observer_) observer_(i, true);
}

int WorkerPool::Choose(int64_t expert, const std::set<int>& exclude) const {
  std::lock_guard<std::mutex> lock(mu_);
  int best = -1;
  int64_t best_load = 0;
  for (int i = 0; i < size(); ++i) {
    const Worker& w = *workers_[i];
    if (!w.up || exclude.count(i) != 0) continue;
    if (std::find(w.experts.begin(), w.experts.end(), expert) ==
        w.experts.end()) {
      continue;
    }
    const int64_t load = w.inflight.load();
    if (best < 0 || load < best_load) {
      best = i;
      best_load = load;
    }
  }
  return best;
}

std::vector<int64_t> WorkerPool::UncoveredExperts() const {
  std::vector<bool> covered(config_.total_experts(), false);
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& w : workers_) {
      if (!w->up) continue;
      for (int64_t e : w->experts) {
        if (e >= 0 && e < config_.total_experts()) covered[e] = true;
      }
    }
  }
  std::vector<int64_t> missing;
  for (int64_t e = 0; e < config_.total_experts(); ++e) {
    if (!covered[e]) missing.push_back(e);
  }
  return missing;
}

void WorkerPool::MarkDown(int worker, const std::string& why) {
  std::lock_guard<std::mutex> lock(mu_);
  Worker& w = *workers_[worker];
  if (w.up) MOE_LOG(WARNING) << "worker " << w.address << " down: " << why;
  w.up = false;
  if (observer_) observer_(worker, false);
}

void WorkerPool::AddInflight(int worker, int delta) {
  workers_[worker]->inflight += delta;
}

std::vector<WorkerSnapshot> WorkerPool::Snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<WorkerSnapshot> out;
  for (const auto& w : workers_) {
    out.push_back(
        {w->address, w->up, w->experts, w->device, w->inflight.load()});
  }
  return out;
}

}  // namespace moe::router
