#include "router/service/worker_batcher.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"

namespace moe::router {

WorkerBatcher::Gating::Gating(WorkerBatcher* batcher) : batcher_(batcher) {
  if (batcher_ != nullptr) batcher_->GatingDelta(1);
}

void WorkerBatcher::Gating::Done() {
  if (batcher_ != nullptr) batcher_->GatingDelta(-1);
  batcher_ = nullptr;
}

WorkerBatcher::WorkerBatcher(WorkerPool* pool, const BatcherOptions& options)
    : pool_(pool), options_(options) {
  if (options_.window > absl::ZeroDuration()) {
    flusher_ = std::thread([this] { FlushLoop(); });
  }
}

WorkerBatcher::~WorkerBatcher() {
  std::vector<std::shared_ptr<WorkerBatch>> left;
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    WakeFlusherLocked();
    for (auto& [worker, batch] : open_) left.push_back(batch);
    open_.clear();
  }
  if (flusher_.joinable()) flusher_.join();
  for (const auto& batch : left) Send(batch);
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(
      +[](int* inflight) { return *inflight == 0; }, &inflight_));
}

void WorkerBatcher::GatingDelta(int delta) {
  absl::MutexLock lock(&mu_);
  gating_ += delta;
  if (gating_ == 0) WakeFlusherLocked();
}

bool WorkerBatcher::DueLocked(const WorkerBatch& batch, absl::Time now) const {
  return stop_ || options_.window <= absl::ZeroDuration() ||
         batch.close_at <= now ||
         (gating_ == 0 && pool_->inflight(batch.worker) == 0);
}

int WorkerBatcher::WaitingForwards(int worker) const {
  absl::MutexLock lock(&mu_);
  auto it = open_.find(worker);
  return it == open_.end() ? 0 : static_cast<int>(it->second->tickets.size());
}

void WorkerBatcher::Submit(const std::shared_ptr<BatchTicket>& ticket) {
  int64_t rows = 0;
  for (const common::ExpertSegment& s : ticket->segments) rows += s.count;
  std::vector<std::shared_ptr<WorkerBatch>> due;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = options_.clock->Now();
    std::shared_ptr<WorkerBatch>& open = open_[ticket->worker];
    if (open != nullptr && open->rows + rows > options_.max_rows) {
      due.push_back(std::move(open));
      open = nullptr;
    }
    if (open == nullptr) {
      open = std::make_shared<WorkerBatch>();
      open->worker = ticket->worker;
      open->close_at = now + options_.window;
    }
    open->tickets.push_back(ticket);
    open->rows += rows;
    open->live.fetch_add(1);
    ticket->batch = open;
    if (DueLocked(*open, now)) {
      due.push_back(std::move(open));
      open_.erase(ticket->worker);
    } else {
      WakeFlusherLocked();  // a new close time, or a fuller batch
    }
  }
  for (const auto& batch : due) Send(batch);
}

void WorkerBatcher::Abandon(BatchTicket& ticket) {
  const std::shared_ptr<WorkerBatch> batch = ticket.batch;
  if (batch == nullptr) return;
  if (batch->live.fetch_sub(1) != 1) return;
  // Nobody waits for this call any more: cancel it, now or when it starts.
  std::shared_ptr<WorkerCall> call;
  {
    absl::MutexLock lock(&batch->mu);
    batch->cancelled = true;
    call = batch->call;
  }
  if (call != nullptr) call->Cancel();
}

void WorkerBatcher::FlushLoop() {
  absl::MutexLock lock(&mu_);
  while (!stop_) {
    const absl::Time now = options_.clock->Now();
    absl::Time next = absl::InfiniteFuture();
    std::vector<std::shared_ptr<WorkerBatch>> due;
    for (auto it = open_.begin(); it != open_.end();) {
      if (DueLocked(*it->second, now)) {
        due.push_back(std::move(it->second));
        it = open_.erase(it);
      } else {
        next = std::min(next, it->second->close_at);
        ++it;
      }
    }
    if (!due.empty()) {
      mu_.Unlock();
      for (const auto& batch : due) Send(batch);
      mu_.Lock();
      continue;
    }
    const uint64_t seen = epoch_;
    auto changed = [this, seen]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return epoch_ != seen;
    };
    options_.clock->AwaitWithDeadline(&mu_, absl::Condition(&changed), next);
  }
}

void WorkerBatcher::Send(const std::shared_ptr<WorkerBatch>& batch) {
  {
    absl::MutexLock lock(&mu_);
    ++inflight_;
  }
  const absl::Time start = options_.clock->Now();
  if (batch->live.load() == 0) {
    Finish(batch, absl::CancelledError("every forward in the batch gave up"),
           grpc::ByteBuffer(), absl::ZeroDuration());
    return;
  }
  // Rows grouped by expert (layer, then id), each expert's rows from every
  // ticket in turn.
  std::map<common::ExpertKey, std::vector<std::pair<BatchTicket*, size_t>>>
      by_expert;
  int64_t dim = 0;
  absl::Time deadline = absl::InfinitePast();
  bool timeout_binds = false;
  for (const auto& t : batch->tickets) {
    dim = t->dim;
    t->rows_in_batch.assign(t->segments.size(), 0);
    for (size_t i = 0; i < t->segments.size(); ++i) {
      by_expert[t->segments[i].key].emplace_back(t.get(), i);
    }
    if (t->deadline > deadline) {
      deadline = t->deadline;
      timeout_binds = t->timeout_binds;
    }
  }
  proto::RunExpertsRequestWriter writer(options_.wire_dtype, dim);
  int64_t cursor = 0;
  for (const auto& [key, parts] : by_expert) {
    int64_t count = 0;
    for (const auto& [ticket, i] : parts) {
      const common::ExpertSegment& s = ticket->segments[i];
      writer.AddFloatRows(ticket->rows + s.offset * dim, s.count,
                          ticket->owner);
      ticket->rows_in_batch[i] = cursor;
      cursor += s.count;
      count += s.count;
    }
    writer.AddSegment(key, count);
  }
  const absl::Time sent = options_.clock->Now();
  for (const auto& t : batch->tickets) t->sent = sent;
  const int worker = batch->worker;
  bool started = false;
  {
    absl::MutexLock call_lock(&batch->mu);
    if (!batch->cancelled) {
      pool_->AddInflight(worker, 1);
      batch->call = pool_->transport(worker).StartRunExperts(
          writer.Finish(options_.wire_dtype), deadline,
          [this, batch, sent, timeout_binds](absl::Status s,
                                             grpc::ByteBuffer response) {
            pool_->AddInflight(batch->worker, -1);
            // A worker that is unreachable, broken, or slower than the
            // worker timeout is taken out until a probe passes.
            const absl::StatusCode code = s.code();
            if (code == absl::StatusCode::kUnavailable ||
                code == absl::StatusCode::kInternal ||
                code == absl::StatusCode::kUnknown ||
                (code == absl::StatusCode::kDeadlineExceeded &&
                 timeout_binds)) {
              pool_->MarkDown(batch->worker, s);
            }
            Finish(batch, std::move(s), std::move(response),
                   options_.clock->Now() - sent);
          });
      started = true;
    }
  }
  if (!started) {
    Finish(batch, absl::CancelledError("every forward in the batch gave up"),
           grpc::ByteBuffer(), absl::ZeroDuration());
    return;
  }
  // Encoding counts until the call started.
  if (options_.on_encode) options_.on_encode(options_.clock->Now() - start);
}

void WorkerBatcher::Finish(const std::shared_ptr<WorkerBatch>& batch,
                           absl::Status status, grpc::ByteBuffer response,
                           absl::Duration elapsed) {
  if (status.ok()) {
    int64_t dim = batch->tickets.empty() ? 0 : batch->tickets[0]->dim;
    absl::StatusOr<proto::RunExpertsResponseView> view =
        proto::RunExpertsResponseView::Parse(response, batch->rows, dim);
    if (view.ok()) {
      batch->response = std::move(*view);
    } else {
      status = absl::InternalError(
          absl::StrCat("worker ", pool_->address(batch->worker),
                       " sent a bad response: ", view.status().message()));
    }
  }
  batch->status = std::move(status);
  std::vector<std::shared_ptr<BatchTicket>> tickets;
  tickets.swap(batch->tickets);
  if (options_.on_rpc && elapsed > absl::ZeroDuration()) {
    options_.on_rpc(batch->worker, elapsed, static_cast<int>(tickets.size()),
                    batch->rows);
  }
  for (const auto& t : tickets) t->waiter->MarkDone(t->waiter_index);
  tickets.clear();
  absl::MutexLock lock(&mu_);
  --inflight_;
  // The worker may be idle now: its open batch can go.
  if (open_.count(batch->worker) > 0) WakeFlusherLocked();
}

}  // namespace moe::router
