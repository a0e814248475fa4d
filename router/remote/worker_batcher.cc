#include "router/remote/worker_batcher.h"

#include <algorithm>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/request_id.h"

namespace moe::router {

// One worker call, open (taking tickets) until it is sent. While open, its
// tickets and rows change only under the batcher's mu_; once taken out of
// open_ only the thread sending it touches them, until the call ends.
class WorkerBatch {
 public:
  int worker = -1;
  absl::Time close_at;
  int64_t rows = 0;
  std::vector<std::shared_ptr<BatchTicket>> tickets;  // cleared when done
  // The tickets' experts while open, repeats included (OpenExperts()).
  std::vector<common::ExpertKey> experts;
  // Tickets not abandoned. A batch every ticket left is still open to new
  // ones until it is sent (a forward that joins it is served); once sent,
  // it only counts down, and 0 cancels the call.
  std::atomic<int> live{0};
  // The call's final status and, when OK, the checked response: written
  // once by Finish() before the tickets are marked done.
  absl::Status status;
  std::optional<proto::RunExpertsResponseView> response;
  // The call's spans, one for each traced forward in it (BatcherOptions::
  // tracer): made before the call starts, ended when it ended.
  std::vector<common::Span> spans;

  absl::Mutex mu;  // orders starting the call with abandoning it
  std::shared_ptr<WorkerCall> call ABSL_GUARDED_BY(mu);
};

namespace {

std::vector<std::string> RequestIds(const WorkerBatch& batch) {
  std::vector<std::string> ids;
  for (const auto& t : batch.tickets) {
    const std::string& id = t->request().request_id;
    if (ids.size() == common::kMaxRequestIdsPerWorkerCall) break;
    if (!id.empty() && std::find(ids.begin(), ids.end(), id) == ids.end()) {
      ids.push_back(id);
    }
  }
  return ids;
}

// The ticket's rows in its call.
int64_t RowsOf(const BatchTicket& ticket) {
  int64_t rows = 0;
  for (const common::ExpertSegment& s : ticket.request().segments) {
    rows += s.count;
  }
  return rows;
}

// What the call carries: its forwards' request IDs and, when some of them
// are traced, a span of the call for each (at most kMaxSpanLinks, in
// batch->spans), the first as its traceparent and the others as links.
router::WorkerCallMetadata CallMetadata(WorkerBatch* batch,
                                        const common::Tracer* tracer,
                                        const std::string& worker,
                                        absl::Time sent) {
  router::WorkerCallMetadata metadata;
  metadata.request_ids = RequestIds(*batch);
  if (tracer == nullptr) return metadata;
  for (const auto& t : batch->tickets) {
    if (t->request().traceparent.empty()) continue;
    if (batch->spans.size() == common::kMaxSpanLinks) break;
    std::optional<common::Span> span = tracer->Start(
        "moe.v1.ExpertWorker/RunExperts", t->request().traceparent, sent,
        common::SpanKind::kClient);
    if (!span) continue;
    span->attributes = {
        {"rpc.system", std::string("grpc")},
        {"server.address", worker},
        {"moe.request_id", t->request().request_id},
        {"moe.rows", RowsOf(*t)},
        {"moe.call_rows", batch->rows},
        {"moe.call_forwards", static_cast<int64_t>(batch->tickets.size())}};
    (batch->spans.empty() ? metadata.traceparent
                          : metadata.trace_links.emplace_back()) =
        common::TraceparentOf(*span);
    batch->spans.push_back(*std::move(span));
  }
  return metadata;
}

}  // namespace

absl::Time BatchTicket::sent_at() const {
  const int64_t nanos = sent_nanos_.load();
  return nanos == std::numeric_limits<int64_t>::min()
             ? absl::InfinitePast()
             : absl::FromUnixNanos(nanos);
}

const absl::Status& BatchTicket::call_status() const { return batch_->status; }

const float* BatchTicket::OutputRows(size_t segment, int64_t first,
                                     int64_t count,
                                     std::vector<float>* scratch) const {
  return batch_->response->FloatRows(rows_in_batch_[segment] + first, count,
                                     scratch);
}

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

std::vector<std::pair<common::ExpertKey, int>> WorkerBatcher::OpenExperts()
    const {
  std::vector<std::pair<common::ExpertKey, int>> out;
  absl::MutexLock lock(&mu_);
  for (const auto& [worker, batch] : open_) {
    if (batch == nullptr) continue;
    for (const common::ExpertKey& key : batch->experts) {
      out.emplace_back(key, worker);
    }
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

std::shared_ptr<const BatchTicket> WorkerBatcher::Submit(
    WorkerRequest request) {
  std::shared_ptr<BatchTicket> ticket(new BatchTicket(std::move(request)));
  const int64_t rows = RowsOf(*ticket);
  const int worker = ticket->worker();
  std::vector<std::shared_ptr<WorkerBatch>> due;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = options_.clock->Now();
    std::shared_ptr<WorkerBatch>& open = open_[worker];
    if (open != nullptr && open->rows + rows > options_.max_rows) {
      due.push_back(std::move(open));
      open = nullptr;
    }
    if (open == nullptr) {
      open = std::make_shared<WorkerBatch>();
      open->worker = worker;
      open->close_at = now + options_.window;
    }
    open->tickets.push_back(ticket);
    for (const common::ExpertSegment& s : ticket->request().segments) {
      open->experts.push_back(s.key);
    }
    open->rows += rows;
    open->live.fetch_add(1);
    ticket->batch_ = open;
    if (DueLocked(*open, now)) {
      due.push_back(std::move(open));
      open_.erase(worker);
    } else {
      WakeFlusherLocked();  // a new close time, or a fuller batch
    }
  }
  for (const auto& batch : due) Send(batch);
  return ticket;
}

void WorkerBatcher::Abandon(const BatchTicket& ticket) {
  const std::shared_ptr<WorkerBatch> batch = ticket.batch_;
  if (batch == nullptr) return;
  if (batch->live.fetch_sub(1) != 1) return;
  // Nobody waits for this call any more: cancel it if it started (Send()
  // starts none for a batch nobody waits for). Asked again under mu: a
  // forward may have joined the batch before it was sent.
  std::shared_ptr<WorkerCall> call;
  {
    absl::MutexLock lock(&batch->mu);
    if (batch->live.load() == 0) call = batch->call;
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

grpc::ByteBuffer WorkerBatcher::Encode(WorkerBatch& batch) const {
  // Rows grouped by expert (layer, then id), each expert's rows from every
  // ticket in turn.
  std::map<common::ExpertKey, std::vector<std::pair<BatchTicket*, size_t>>>
      by_expert;
  int64_t dim = 0;
  for (const auto& t : batch.tickets) {
    dim = t->request_.dim;
    t->rows_in_batch_.assign(t->request_.segments.size(), 0);
    for (size_t i = 0; i < t->request_.segments.size(); ++i) {
      by_expert[t->request_.segments[i].key].emplace_back(t.get(), i);
    }
  }
  proto::RunExpertsRequestWriter writer(options_.wire_dtype, dim);
  int64_t cursor = 0;
  for (const auto& [key, parts] : by_expert) {
    int64_t count = 0;
    for (const auto& [ticket, i] : parts) {
      const WorkerRequest& r = ticket->request_;
      const common::ExpertSegment& s = r.segments[i];
      writer.AddFloatRows(r.rows + s.offset * dim, s.count, r.owner);
      ticket->rows_in_batch_[i] = cursor;
      cursor += s.count;
      count += s.count;
    }
    writer.AddSegment(key, count);
  }
  return writer.Finish(options_.wire_dtype);
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
  // The call ends at the latest of its tickets' deadlines.
  absl::Time deadline = absl::InfinitePast();
  bool timeout_binds = false;
  for (const auto& t : batch->tickets) {
    if (t->request_.deadline > deadline) {
      deadline = t->request_.deadline;
      timeout_binds = t->request_.timeout_binds;
    }
  }
  grpc::ByteBuffer request = Encode(*batch);
  const absl::Time sent = options_.clock->Now();
  const WorkerCallMetadata metadata = CallMetadata(
      batch.get(), options_.tracer, pool_->address(batch->worker), sent);
  for (const auto& t : batch->tickets) {
    t->sent_nanos_.store(absl::ToUnixNanos(sent));
  }
  const int worker = batch->worker;
  bool started = false;
  {
    absl::MutexLock call_lock(&batch->mu);
    if (batch->live.load() > 0) {
      pool_->CallStarted(worker);
      batch->call = pool_->transport(worker).StartRunExperts(
          std::move(request), deadline, metadata,
          [this, batch, sent, timeout_binds](absl::Status s,
                                             grpc::ByteBuffer response) {
            pool_->CallFinished(batch->worker, s, timeout_binds);
            EndSpans(batch.get(), s);
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

void WorkerBatcher::EndSpans(WorkerBatch* batch,
                             const absl::Status& status) const {
  const absl::Time end = options_.clock->Now();
  for (common::Span& span : batch->spans) {
    span.end = end;
    span.attributes.emplace_back("rpc.grpc.status_code",
                                 static_cast<int64_t>(status.code()));
    if (!status.ok()) {
      span.error = true;
      span.status_message = absl::StrCat(
          absl::StatusCodeToString(status.code()), ": ", status.message());
    }
    options_.tracer->End(std::move(span));
  }
  batch->spans.clear();
}

void WorkerBatcher::Finish(const std::shared_ptr<WorkerBatch>& batch,
                           absl::Status status, grpc::ByteBuffer response,
                           absl::Duration elapsed) {
  if (status.ok()) {
    const int64_t dim =
        batch->tickets.empty() ? 0 : batch->tickets[0]->request_.dim;
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
  for (const auto& t : tickets) {
    t->request_.waiter->MarkDone(t->request_.waiter_index);
  }
  tickets.clear();
  absl::MutexLock lock(&mu_);
  --inflight_;
  // The worker may be idle now: its open batch can go.
  if (open_.count(batch->worker) > 0) WakeFlusherLocked();
}

}  // namespace moe::router
