#include "router/service/worker_batcher.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/torch_convert.h"
#include "proto/expert_wire.h"
#include "proto/tensor_codec.h"

namespace moe::router {
namespace {

constexpr char kRunExperts[] = "/moe.v1.ExpertWorker/RunExperts";

}  // namespace

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
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    for (auto& [worker, batch] : open_) left.push_back(batch);
    open_.clear();
  }
  wake_.notify_all();
  if (flusher_.joinable()) flusher_.join();
  for (const auto& batch : left) Send(batch);
  std::unique_lock<std::mutex> lock(mu_);
  drained_.wait(lock, [this] { return inflight_ == 0; });
}

void WorkerBatcher::GatingDelta(int delta) {
  bool wake = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    gating_ += delta;
    wake = gating_ == 0 && !open_.empty();
  }
  if (wake) wake_.notify_all();
}

bool WorkerBatcher::DueLocked(const WorkerBatch& batch, absl::Time now) const {
  return stop_ || options_.window <= absl::ZeroDuration() ||
         batch.close_at <= now ||
         (gating_ == 0 && pool_->inflight(batch.worker) == 0);
}

void WorkerBatcher::Submit(const std::shared_ptr<BatchTicket>& ticket) {
  int64_t rows = 0;
  for (const BatchPiece& p : ticket->pieces) rows += p.count;
  std::vector<std::shared_ptr<WorkerBatch>> due;
  bool opened = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::shared_ptr<WorkerBatch>& open = open_[ticket->worker];
    if (open != nullptr && open->rows + rows > options_.max_rows) {
      due.push_back(std::move(open));
      open = nullptr;
    }
    if (open == nullptr) {
      open = std::make_shared<WorkerBatch>();
      open->worker = ticket->worker;
      open->close_at = absl::Now() + options_.window;
      opened = true;
    }
    open->tickets.push_back(ticket);
    open->rows += rows;
    open->live.fetch_add(1);
    ticket->batch = open;
    if (DueLocked(*open, absl::Now())) {
      due.push_back(std::move(open));
      open_.erase(ticket->worker);
    }
  }
  if (opened && due.empty()) wake_.notify_all();
  for (const auto& batch : due) Send(batch);
}

void WorkerBatcher::Abandon(BatchTicket& ticket) {
  const std::shared_ptr<WorkerBatch> batch = ticket.batch;
  if (batch == nullptr) return;
  if (batch->live.fetch_sub(1) == 1) {
    // Nobody waits for this call any more. TryCancel before the call starts
    // cancels it when it starts.
    batch->context.TryCancel();
  }
}

void WorkerBatcher::FlushLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    const absl::Time now = absl::Now();
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
      lock.unlock();
      for (const auto& batch : due) Send(batch);
      lock.lock();
      continue;
    }
    if (next == absl::InfiniteFuture()) {
      wake_.wait(lock);
    } else {
      wake_.wait_until(lock, absl::ToChronoTime(next));
    }
  }
}

void WorkerBatcher::Send(const std::shared_ptr<WorkerBatch>& batch) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++inflight_;
  }
  const absl::Time start = absl::Now();
  if (batch->live.load() == 0) {
    Finish(batch,
           grpc::Status(grpc::StatusCode::CANCELLED,
                        "every forward in the batch gave up"),
           absl::ZeroDuration());
    return;
  }
  // Rows grouped by expert (ascending), each expert's rows from every ticket
  // in turn.
  std::map<int64_t, std::vector<std::pair<BatchTicket*, size_t>>> by_expert;
  int64_t d = 0;
  absl::Time deadline = absl::InfinitePast();
  bool timeout_binds = false;
  for (const auto& t : batch->tickets) {
    d = t->src.size(1);
    t->rows_in_batch.assign(t->pieces.size(), 0);
    for (size_t i = 0; i < t->pieces.size(); ++i) {
      by_expert[t->pieces[i].expert].emplace_back(t.get(), i);
    }
    if (t->deadline > deadline) {
      deadline = t->deadline;
      timeout_binds = t->timeout_binds;
    }
  }
  // Float32 rows go out as slices over the forwards' own tensors; other
  // wire dtypes are converted piece by piece first.
  proto::RunExpertsRequestWriter writer(options_.wire_dtype, d);
  absl::Status status = common::TorchCall("encode worker request", [&] {
    const bool raw = options_.wire_dtype == moe::v1::FLOAT32;
    const c10::ScalarType type = *proto::TorchDType(options_.wire_dtype);
    int64_t cursor = 0;
    for (const auto& [expert, parts] : by_expert) {
      int64_t count = 0;
      for (const auto& [ticket, i] : parts) {
        const BatchPiece& p = ticket->pieces[i];
        if (raw) {
          writer.AddRows(ticket->src,
                         ticket->src.data_ptr<float>() + p.offset * d, p.count);
        } else {
          at::Tensor converted =
              ticket->src.narrow(0, p.offset, p.count).to(type).contiguous();
          writer.AddRows(converted, converted.data_ptr(), p.count);
        }
        ticket->rows_in_batch[i] = cursor;
        cursor += p.count;
        count += p.count;
      }
      writer.AddSegment(expert, count);
    }
  });
  if (!status.ok()) {
    MOE_LOG(ERROR) << "building the call to " << pool_->address(batch->worker)
                   << ": " << status;
    if (options_.on_encode) options_.on_encode(absl::Now() - start);
    Finish(
        batch,
        grpc::Status(grpc::StatusCode::INTERNAL, std::string(status.message())),
        absl::ZeroDuration());
    return;
  }
  batch->request = writer.Finish(options_.wire_dtype);
  batch->context.set_deadline(absl::ToChronoTime(deadline));
  const bool binds = timeout_binds;
  const absl::Time sent = absl::Now();
  for (const auto& t : batch->tickets) t->sent = sent;
  pool_->AddInflight(batch->worker, 1);
  pool_->generic_stub(batch->worker)
      ->UnaryCall(
          &batch->context, kRunExperts, grpc::StubOptions(), &batch->request,
          &batch->response, [this, batch, sent, binds](grpc::Status s) {
            const grpc::StatusCode code = s.error_code();
            pool_->AddInflight(batch->worker, -1);
            // The worker may be idle now: its open batch can go.
            // (Taking mu_ orders this after a flusher's check.)
            { std::lock_guard<std::mutex> lock(mu_); }
            wake_.notify_all();
            // A worker that is unreachable, broken, or slower than
            // the worker timeout is taken out until a probe passes.
            if (code == grpc::StatusCode::UNAVAILABLE ||
                code == grpc::StatusCode::INTERNAL ||
                code == grpc::StatusCode::UNKNOWN ||
                (code == grpc::StatusCode::DEADLINE_EXCEEDED && binds)) {
              pool_->MarkDown(batch->worker, absl::StrCat(s.error_message()));
            }
            Finish(batch, std::move(s), absl::Now() - sent);
          });
  // Encoding counts until the call started.
  if (options_.on_encode) options_.on_encode(absl::Now() - start);
}

void WorkerBatcher::Finish(const std::shared_ptr<WorkerBatch>& batch,
                           grpc::Status status, absl::Duration elapsed) {
  if (status.ok()) {
    absl::StatusOr<proto::WireTensorView> outputs =
        proto::WireTensorView::Parse(batch->response, "outputs");
    if (outputs.ok()) {
      batch->outputs = std::move(*outputs);
    } else {
      status = grpc::Status(grpc::StatusCode::INTERNAL,
                            std::string(outputs.status().message()));
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
    std::lock_guard<std::mutex> lock(t->waiter->mu);
    t->done = true;
    t->waiter->cv.notify_all();
  }
  tickets.clear();
  // Notified under the lock: the destructor may run as soon as it sees 0.
  std::lock_guard<std::mutex> lock(mu_);
  --inflight_;
  drained_.notify_all();
}

}  // namespace moe::router
