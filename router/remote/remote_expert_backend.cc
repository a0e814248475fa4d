#include "router/remote/remote_expert_backend.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "router/combine.h"

namespace moe::router {
namespace {

// A worker's outputs for segment `j` of its ticket, added into y in chunks
// of about 64 KB: rows that lie in one received slice are read in place,
// the others through a scratch buffer small enough to stay in cache
// (copying a whole response out first wrote and read back 8 MB per worker
// of a [4,1024] forward). The rows are added in the same order either way,
// so y is the same bits.
void CombineSegment(const BatchTicket& ticket, size_t j,
                    const common::ExpertSegment& s, const ExpertWork& work,
                    std::vector<float>* scratch) {
  constexpr int64_t kChunkBytes = 64 << 10;
  const int64_t chunk = std::max<int64_t>(
      1, kChunkBytes / (work.dim * static_cast<int64_t>(sizeof(float))));
  for (int64_t done = 0; done < s.count; done += chunk) {
    const int64_t n = std::min(chunk, s.count - done);
    const float* rows = ticket.OutputRows(j, done, n, scratch);
    CombineRows(rows, n, work.targets.data() + s.offset + done,
                work.weights.data() + s.offset + done, work.dim, work.y,
                work.y_written);
  }
}

// A segment of an expert with replicas is split among them when each part
// gets at least this many rows (smaller ones go whole to the least loaded).
constexpr int64_t kMinRowsPerReplica = 16;
// A segment refused as not hosted is assigned again this many times before
// the worker counts as tried for it.
constexpr int kMaxMovedRetries = 3;

// One Run(): where every segment of the work stands, and the calls out.
// Segments are indices into segments_ (work.segments, and the parts of
// those split among replicas); each is pending (to be assigned), out (in a
// call), combined, or failed.
class FanOut {
 public:
  FanOut(const ExpertWork& work, WorkerPool* pool, WorkerBatcher* batcher,
         std::shared_ptr<ForwardWaiter> waiter,
         const RemoteCallOptions& options, absl::Time worker_deadline,
         WorkerBatcher::Gating* gating, BackendReport* report)
      : work_(work),
        pool_(pool),
        batcher_(batcher),
        waiter_(std::move(waiter)),
        options_(options),
        worker_deadline_(worker_deadline),
        gating_(gating),
        report_(report),
        segments_(work.segments.begin(), work.segments.end()),
        attempts_(work.segments.size()) {
    for (size_t i = 0; i < segments_.size(); ++i) pending_.push_back(i);
  }

  absl::Status Run() {
    while (!pending_.empty()) {
      if (waiter_->cancelled()) return Cancelled();
      const absl::Time now = options_.clock->Now();
      if (now >= worker_deadline_) {
        for (size_t i : pending_) {
          Fail(i, absl::DeadlineExceededError("request deadline reached"),
               /*deadline=*/true, /*keep_earlier=*/true);
        }
        pending_.clear();
        break;
      }
      Assign();
      if (calls_.empty()) break;
      Submit(now);
      MOE_RETURN_IF_ERROR(Await());
    }
    return ApplyFailurePolicy();
  }

 private:
  struct Attempt {
    std::set<int> tried;  // workers that failed it
    absl::Status last_error;
    bool deadline = false;  // the last failure was a missed deadline
    int moved = 0;          // refusals as not hosted (placement changes)
  };
  struct Call {
    WorkerRequest request;                      // until Submit()
    std::shared_ptr<const BatchTicket> ticket;  // from Submit()
    std::vector<size_t> segments;
  };

  static absl::Status Cancelled() {
    return absl::CancelledError("the client cancelled the call");
  }

  // Segment `i` is lost with `error` (unless an earlier error is kept).
  void Fail(size_t i, absl::Status error, bool deadline, bool keep_earlier) {
    Attempt& a = attempts_[i];
    if (!keep_earlier || a.last_error.ok()) a.last_error = std::move(error);
    a.deadline = deadline;
    failed_.push_back(i);
  }

  // Every pending segment to a worker (one call per worker; a large one of
  // a replicated expert split among its replicas); the ones no worker can
  // take fail.
  void Assign() {
    std::map<int, std::vector<size_t>> by_worker;
    const uint64_t turn = pool_->NextTurn();
    // What the open batches run, taken once (a small segment's copy).
    std::vector<std::pair<common::ExpertKey, int>> open;
    if (options_.join_open_batches) open = batcher_->OpenExperts();
    std::vector<int> joining;
    for (size_t i : pending_) {
      const common::ExpertSegment s = segments_[i];
      const int64_t most = s.count / kMinRowsPerReplica;
      std::vector<int> replicas;
      if (most >= 2) {
        replicas = pool_->Replicas(s.key, attempts_[i].tried, turn);
        if (static_cast<int64_t>(replicas.size()) > most) replicas.resize(most);
      } else {
        joining.clear();
        for (auto it = std::lower_bound(open.begin(), open.end(),
                                        std::make_pair(s.key, -1));
             it != open.end() && it->first == s.key; ++it) {
          joining.push_back(it->second);
        }
        if (const int w =
                pool_->Choose(s.key, attempts_[i].tried, turn, joining);
            w >= 0) {
          replicas.push_back(w);
        }
      }
      if (replicas.empty()) {
        Fail(i, absl::UnavailableError("no healthy worker hosts it"),
             attempts_[i].deadline, /*keep_earlier=*/true);
        continue;
      }
      // Part k of n: rows [count * k / n, count * (k + 1) / n); part 0
      // stays segment i, the others become segments of their own with the
      // same attempts so far.
      const int64_t n = static_cast<int64_t>(replicas.size());
      for (int64_t k = 0; k < n; ++k) {
        const int64_t lo = s.count * k / n, hi = s.count * (k + 1) / n;
        size_t index = i;
        if (k > 0) {
          index = segments_.size();
          segments_.push_back({s.key, s.offset + lo, hi - lo});
          attempts_.push_back(attempts_[i]);
        } else {
          segments_[i].count = hi - lo;
        }
        by_worker[replicas[k]].push_back(index);
      }
    }
    pending_.clear();
    calls_.clear();
    for (auto& [w, segments] : by_worker) {
      Call call;
      call.request.worker = w;
      call.request.rows = work_.tokens;
      call.request.owner = work_.tokens_owner;
      call.request.dim = work_.dim;
      for (size_t i : segments) call.request.segments.push_back(segments_[i]);
      call.segments = std::move(segments);
      calls_.push_back(std::move(call));
    }
  }

  // The calls to the batcher, after the forward's gating ended.
  void Submit(absl::Time now) {
    const absl::Time timeout = now + options_.worker_timeout;
    for (Call& c : calls_) {
      c.request.timeout_binds = timeout < worker_deadline_;
      c.request.deadline = std::min(timeout, worker_deadline_);
      c.request.waiter = waiter_;
      c.request.waiter_index = waiter_->AddTicket();
      c.request.request_id = options_.request_id;
      c.request.traceparent = options_.traceparent;
    }
    if (gating_ != nullptr) gating_->Done();
    for (Call& c : calls_) c.ticket = batcher_->Submit(std::move(c.request));
  }

  // A finished call: its outputs combined, or its segments pending again
  // on other workers.
  void Handle(const Call& call) {
    const BatchTicket& ticket = *call.ticket;
    const WorkerRequest& request = ticket.request();
    if (ticket.call_status().ok()) {
      for (size_t j = 0; j < request.segments.size(); ++j) {
        CombineSegment(ticket, j, request.segments[j], work_, &scratch_);
      }
      return;
    }
    const std::string& address = pool_->address(ticket.worker());
    // An expert not hosted there (any more): the placement moved, not a
    // failure. The worker is asked what it hosts now and the segments are
    // assigned again (the ones it still hosts may go back to it), a few
    // times at most.
    const bool moved = absl::IsFailedPrecondition(ticket.call_status());
    if (moved) {
      pool_->Reprobe(ticket.worker());
    } else {
      MOE_LOG(WARNING) << "worker " << address << ": " << ticket.call_status();
    }
    for (size_t i : call.segments) {
      Attempt& a = attempts_[i];
      if (!moved || ++a.moved > kMaxMovedRetries)
        a.tried.insert(ticket.worker());
      a.last_error = absl::Status(
          ticket.call_status().code(),
          absl::StrCat(address, ": ", ticket.call_status().message()));
      a.deadline = absl::IsDeadlineExceeded(ticket.call_status());
      pending_.push_back(i);
    }
  }

  // Waits for the calls out, handling each as it finishes; what is still
  // out at the deadline (or when the client went away) is given up.
  absl::Status Await() {
    std::map<int, size_t> by_ticket;
    std::vector<int> watch;
    for (size_t k = 0; k < calls_.size(); ++k) {
      by_ticket[calls_[k].request.waiter_index] = k;
      watch.push_back(calls_[k].request.waiter_index);
    }
    std::vector<bool> handled(calls_.size(), false);
    size_t left = calls_.size();
    bool first_wait = true;
    while (left > 0) {
      const absl::Time wait_start = options_.clock->Now();
      const std::vector<int> ready =
          waiter_->WaitForDone(watch, worker_deadline_);
      const absl::Time woke = options_.clock->Now();
      CountWait(ready, by_ticket, wait_start, woke, first_wait);
      first_wait = false;
      if (ready.empty()) break;  // cancelled, or the deadline
      for (int t : ready) {
        const size_t k = by_ticket[t];
        handled[k] = true;
        --left;
        Handle(calls_[k]);
      }
      report_->combine += options_.clock->Now() - woke;
    }
    for (size_t k = 0; k < calls_.size(); ++k) {
      if (handled[k]) continue;
      WorkerBatcher::Abandon(*calls_[k].ticket);
      for (size_t i : calls_[k].segments) {
        Fail(i,
             absl::DeadlineExceededError(
                 absl::StrCat(pool_->address(calls_[k].ticket->worker()),
                              ": request deadline reached")),
             /*deadline=*/true, /*keep_earlier=*/false);
      }
    }
    return waiter_->cancelled() ? Cancelled() : absl::OkStatus();
  }

  // The first wait counts as batch_wait until this forward's last call
  // left, the rest as rpc_wait.
  void CountWait(const std::vector<int>& ready,
                 const std::map<int, size_t>& by_ticket, absl::Time wait_start,
                 absl::Time woke, bool first_wait) {
    if (!first_wait) {
      report_->rpc_wait += woke - wait_start;
      return;
    }
    absl::Time last_sent = wait_start;
    for (int t : ready) {
      last_sent =
          std::max(last_sent, calls_[by_ticket.at(t)].ticket->sent_at());
    }
    last_sent = std::min(last_sent, woke);
    report_->batch_wait += last_sent - wait_start;
    report_->rpc_wait += woke - last_sent;
  }

  absl::Status ApplyFailurePolicy() {
    if (failed_.empty()) return absl::OkStatus();
    std::sort(failed_.begin(), failed_.end());
    std::vector<std::string> reasons;
    for (size_t i : failed_) {
      reasons.push_back(absl::StrCat("expert ", segments_[i].key.expert, " (",
                                     attempts_[i].last_error.message(), ")"));
    }
    if (options_.on_failure == ExpertFailurePolicy::kFail) {
      return absl::UnavailableError(
          absl::StrCat("experts unavailable: ", absl::StrJoin(reasons, "; ")));
    }
    MOE_LOG(WARNING) << "dropping the assignments of "
                     << absl::StrJoin(reasons, "; ");
    for (size_t i : failed_) {
      report_->lost.push_back({segments_[i].key,
                               attempts_[i].deadline
                                   ? DropReason::kDeadline
                                   : DropReason::kExpertUnavailable,
                               std::string(attempts_[i].last_error.message())});
    }
    return absl::OkStatus();
  }

  const ExpertWork& work_;
  WorkerPool* const pool_;
  WorkerBatcher* const batcher_;
  const std::shared_ptr<ForwardWaiter> waiter_;
  const RemoteCallOptions& options_;
  const absl::Time worker_deadline_;
  WorkerBatcher::Gating* const gating_;
  BackendReport* const report_;

  std::vector<common::ExpertSegment> segments_;
  std::vector<Attempt> attempts_;  // by segment
  std::vector<size_t> pending_;    // to assign
  std::vector<size_t> failed_;     // for the failure policy
  std::vector<Call> calls_;        // this round's
  std::vector<float> scratch_;     // combine
};

}  // namespace

const char* ExpertFailurePolicyName(ExpertFailurePolicy policy) {
  return policy == ExpertFailurePolicy::kDrop ? "drop" : "fail";
}

absl::StatusOr<ExpertFailurePolicy> ParseExpertFailurePolicy(
    absl::string_view name) {
  if (name == "drop") return ExpertFailurePolicy::kDrop;
  if (name == "fail") return ExpertFailurePolicy::kFail;
  return absl::InvalidArgumentError(
      absl::StrCat("expert failure policy \"", name, "\" is not drop or fail"));
}

RemoteExpertBackend::RemoteExpertBackend(WorkerPool* pool,
                                         WorkerBatcher* batcher,
                                         std::shared_ptr<ForwardWaiter> waiter,
                                         const RemoteCallOptions& options,
                                         WorkerBatcher::Gating* gating)
    : pool_(pool),
      batcher_(batcher),
      waiter_(std::move(waiter)),
      options_(options),
      gating_(gating) {
  const absl::Time now = options_.clock->Now();
  const absl::Duration left = options_.deadline - now;
  worker_deadline_ =
      options_.deadline == absl::InfiniteFuture()
          ? absl::InfiniteFuture()
          : options_.deadline - std::min(left / 10, absl::Milliseconds(200));
}

absl::Status RemoteExpertBackend::Run(const ExpertWork& work,
                                      BackendReport* report) {
  FanOut fan_out(work, pool_, batcher_, waiter_, options_, worker_deadline_,
                 gating_, report);
  return fan_out.Run();
}

}  // namespace moe::router
