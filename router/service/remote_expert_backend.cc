#include "router/service/remote_expert_backend.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "router/combine.h"

namespace moe::router {

namespace {

// A worker's outputs for one segment, added into y in chunks of about 64 KB:
// rows that lie in one received slice are read in place, the others through
// a scratch buffer small enough to stay in cache (copying a whole response
// out first wrote and read back 8 MB per worker of a [4,1024] forward). The
// rows are added in the same order either way, so y is the same bits.
void CombineSegment(const proto::RunExpertsResponseView& response,
                    int64_t first_row, const common::ExpertSegment& s,
                    const ExpertWork& work, std::vector<float>* scratch) {
  constexpr int64_t kChunkBytes = 64 << 10;
  const int64_t chunk = std::max<int64_t>(
      1, kChunkBytes / (work.dim * static_cast<int64_t>(sizeof(float))));
  for (int64_t done = 0; done < s.count; done += chunk) {
    const int64_t n = std::min(chunk, s.count - done);
    const float* rows = response.FloatRows(first_row + done, n, scratch);
    CombineRows(rows, n, work.targets.data() + s.offset + done,
                work.weights.data() + s.offset + done, work.dim, work.y);
  }
}

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

std::vector<RemoteExpertBackend::Pending> RemoteExpertBackend::Assign(
    const ExpertWork& work, const std::vector<size_t>& pending,
    std::vector<Attempt>& attempts, std::vector<size_t>& failed) {
  std::map<int, std::vector<size_t>> by_worker;
  for (size_t i : pending) {
    const int w = pool_->Choose(work.segments[i].key, attempts[i].tried);
    if (w < 0) {
      if (attempts[i].last_error.ok()) {
        attempts[i].last_error =
            absl::UnavailableError("no healthy worker hosts it");
      }
      failed.push_back(i);
      continue;
    }
    by_worker[w].push_back(i);
  }
  std::vector<Pending> calls;
  for (auto& [w, segments] : by_worker) {
    auto t = std::make_shared<BatchTicket>();
    t->worker = w;
    t->rows = work.tokens;
    t->owner = work.tokens_owner;
    t->dim = work.dim;
    for (size_t i : segments) t->segments.push_back(work.segments[i]);
    calls.push_back({std::move(t), std::move(segments)});
  }
  return calls;
}

void RemoteExpertBackend::Submit(const ExpertWork& /*work*/,
                                 std::vector<Pending>& calls, absl::Time now) {
  const absl::Time timeout = now + options_.worker_timeout;
  for (Pending& p : calls) {
    p.ticket->timeout_binds = timeout < worker_deadline_;
    p.ticket->deadline = std::min(timeout, worker_deadline_);
    p.ticket->waiter = waiter_;
    p.ticket->waiter_index = waiter_->AddTicket();
  }
  if (gating_ != nullptr) gating_->Done();
  for (Pending& p : calls) batcher_->Submit(p.ticket);
}

absl::Status RemoteExpertBackend::Await(const ExpertWork& work,
                                        std::vector<Pending>& calls,
                                        std::vector<Attempt>& attempts,
                                        std::vector<size_t>& retry,
                                        std::vector<size_t>& failed,
                                        BackendReport* report) {
  std::map<int, size_t> by_ticket;
  std::vector<int> watch;
  for (size_t k = 0; k < calls.size(); ++k) {
    by_ticket[calls[k].ticket->waiter_index] = k;
    watch.push_back(calls[k].ticket->waiter_index);
  }
  std::vector<bool> handled(calls.size(), false);
  size_t left = calls.size();
  bool first_wait = true;
  std::vector<float> scratch;
  while (left > 0) {
    const absl::Time wait_start = options_.clock->Now();
    const std::vector<int> ready =
        waiter_->WaitForDone(watch, worker_deadline_);
    const absl::Time woke = options_.clock->Now();
    if (first_wait) {
      // Until this forward's last batch left counts as batch_wait.
      absl::Time last_sent = wait_start;
      for (int t : ready) {
        last_sent = std::max(last_sent, calls[by_ticket[t]].ticket->sent);
      }
      last_sent = std::min(last_sent, woke);
      report->batch_wait += last_sent - wait_start;
      report->rpc_wait += woke - last_sent;
      first_wait = false;
    } else {
      report->rpc_wait += woke - wait_start;
    }
    if (ready.empty()) break;  // cancelled, or the deadline
    for (int t : ready) {
      const size_t k = by_ticket[t];
      handled[k] = true;
      --left;
      const BatchTicket& ticket = *calls[k].ticket;
      const WorkerBatch& batch = *ticket.batch;
      if (batch.status.ok()) {
        for (size_t j = 0; j < ticket.segments.size(); ++j) {
          CombineSegment(*batch.response, ticket.rows_in_batch[j],
                         ticket.segments[j], work, &scratch);
        }
        continue;
      }
      MOE_LOG(WARNING) << "worker " << pool_->address(ticket.worker) << ": "
                       << batch.status;
      const bool deadline =
          batch.status.code() == absl::StatusCode::kDeadlineExceeded;
      for (size_t i : calls[k].segments) {
        attempts[i].tried.insert(ticket.worker);
        attempts[i].last_error = absl::Status(
            batch.status.code(), absl::StrCat(pool_->address(ticket.worker),
                                              ": ", batch.status.message()));
        attempts[i].deadline = deadline;
        retry.push_back(i);
      }
    }
    report->combine += options_.clock->Now() - woke;
  }
  // Calls still out are given up: cancellation, or the deadline.
  for (size_t k = 0; k < calls.size(); ++k) {
    if (handled[k]) continue;
    WorkerBatcher::Abandon(*calls[k].ticket);
    for (size_t i : calls[k].segments) {
      attempts[i].last_error = absl::DeadlineExceededError(
          absl::StrCat(pool_->address(calls[k].ticket->worker),
                       ": request deadline reached"));
      attempts[i].deadline = true;
      failed.push_back(i);
    }
  }
  if (waiter_->cancelled()) {
    return absl::CancelledError("the client cancelled the call");
  }
  return absl::OkStatus();
}

absl::Status RemoteExpertBackend::ApplyFailurePolicy(
    const ExpertWork& work, const std::vector<size_t>& failed,
    const std::vector<Attempt>& attempts, BackendReport* report) const {
  if (failed.empty()) return absl::OkStatus();
  std::vector<std::string> reasons;
  for (size_t i : failed) {
    const common::ExpertSegment& s = work.segments[i];
    reasons.push_back(absl::StrCat("expert ", s.key.expert, " (",
                                   attempts[i].last_error.message(), ")"));
  }
  if (options_.on_failure == ExpertFailurePolicy::kFail) {
    return absl::UnavailableError(
        absl::StrCat("experts unavailable: ", absl::StrJoin(reasons, "; ")));
  }
  MOE_LOG(WARNING) << "dropping the assignments of "
                   << absl::StrJoin(reasons, "; ");
  std::vector<size_t> sorted = failed;
  std::sort(sorted.begin(), sorted.end());
  for (size_t i : sorted) {
    report->lost.push_back({work.segments[i].key,
                            attempts[i].deadline
                                ? DropReason::kDeadline
                                : DropReason::kExpertUnavailable,
                            std::string(attempts[i].last_error.message())});
  }
  return absl::OkStatus();
}

absl::Status RemoteExpertBackend::Run(const ExpertWork& work,
                                      BackendReport* report) {
  std::vector<Attempt> attempts(work.segments.size());
  std::vector<size_t> pending(work.segments.size());
  for (size_t i = 0; i < pending.size(); ++i) pending[i] = i;
  std::vector<size_t> failed;
  while (!pending.empty()) {
    if (waiter_->cancelled()) {
      return absl::CancelledError("the client cancelled the call");
    }
    const absl::Time now = options_.clock->Now();
    if (now >= worker_deadline_) {
      for (size_t i : pending) {
        if (attempts[i].last_error.ok()) {
          attempts[i].last_error =
              absl::DeadlineExceededError("request deadline reached");
        }
        attempts[i].deadline = true;
        failed.push_back(i);
      }
      break;
    }
    std::vector<Pending> calls = Assign(work, pending, attempts, failed);
    pending.clear();
    if (calls.empty()) break;
    Submit(work, calls, now);
    absl::Status awaited =
        Await(work, calls, attempts, pending, failed, report);
    if (!awaited.ok()) return awaited;
  }
  return ApplyFailurePolicy(work, failed, attempts, report);
}

}  // namespace moe::router
