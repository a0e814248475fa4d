#include "router/service/remote_expert_backend.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <string>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "common/torch_convert.h"
#include "common/host_tensor.h"
#include "proto/tensor_codec.h"

namespace moe::router {
namespace {

// One segment of the forward: expert, its rows in `tokens`.
struct Piece {
  int64_t expert;
  int64_t offset;
  int64_t count;
  std::set<int> tried;  // workers that failed it
  std::string last_error;
  bool deadline = false;  // the last failure was a missed deadline
};

// What a worker call answered for one ticket: empty when its outputs were
// placed, else why not.
std::string PlaceOutputs(const BatchTicket& ticket, int64_t d,
                         at::Tensor* out) {
  const WorkerBatch& batch = *ticket.batch;
  if (!batch.status.ok()) {
    return absl::StrCat(batch.status.error_code() ==
                                grpc::StatusCode::DEADLINE_EXCEEDED
                            ? "deadline exceeded"
                            : "failed",
                        ": ", batch.status.error_message());
  }
  const proto::WireTensorView& outputs = *batch.outputs;
  if (outputs.shape() != std::vector<int64_t>{batch.rows, d}) {
    return absl::StrCat("outputs have shape ",
                        common::ShapeToString(outputs.shape()), ", expected [",
                        batch.rows, ", ", d, "]");
  }
  // Rows go straight from the received slices to their places in `out`;
  // other dtypes through a small conversion buffer.
  const int64_t row_bytes = d * outputs.element_size();
  const absl::Status placed = common::TorchCall("place outputs", [&] {
    const bool raw = outputs.dtype() == moe::v1::FLOAT32;
    for (size_t i = 0; i < ticket.pieces.size(); ++i) {
      const BatchPiece& p = ticket.pieces[i];
      if (p.count == 0) continue;
      const int64_t from = ticket.rows_in_batch[i] * row_bytes;
      if (raw) {
        outputs.CopyData(from, p.count * row_bytes,
                         out->data_ptr<float>() + p.offset * d);
      } else {
        at::Tensor rows = at::empty(
            {p.count, d}, at::TensorOptions().dtype(
                              *proto::TorchDType(outputs.dtype())));
        outputs.CopyData(from, p.count * row_bytes, rows.data_ptr());
        out->narrow(0, p.offset, p.count).copy_(rows);
      }
    }
  });
  return placed.ok() ? "" : std::string(placed.message());
}

}  // namespace

void CallCancellation::Cancel() {
  std::map<int, std::function<void()>> callbacks;
  {
    std::lock_guard<std::mutex> lock(mu_);
    cancelled_ = true;
    callbacks.swap(callbacks_);
  }
  for (auto& [id, fn] : callbacks) fn();
}

bool CallCancellation::cancelled() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cancelled_;
}

int CallCancellation::Register(std::function<void()> fn) {
  std::lock_guard<std::mutex> lock(mu_);
  if (cancelled_) return -1;
  callbacks_[next_id_] = std::move(fn);
  return next_id_++;
}

void CallCancellation::Unregister(int id) {
  std::lock_guard<std::mutex> lock(mu_);
  callbacks_.erase(id);
}

absl::Status RemoteExpertBackend::RunExperts(
    const at::Tensor& tokens, absl::Span<const experts::ExpertSegment> segments,
    at::Tensor* out, std::vector<int64_t>* unavailable) {
  batch_wait_ = rpc_wait_ = decode_ = absl::ZeroDuration();
  const int64_t d = tokens.size(1);
  at::Tensor src = tokens.to(at::kFloat).contiguous();
  // Rows of experts that end up unavailable are zeroed below; the rest are
  // overwritten by the workers' outputs.
  *out = at::empty({tokens.size(0), d}, at::kFloat);

  std::vector<Piece> pieces;
  int64_t offset = 0;
  for (const experts::ExpertSegment& s : segments) {
    pieces.push_back({s.expert_id, offset, s.count, {}, "", false});
    offset += s.count;
  }
  std::vector<Piece*> pending;
  for (Piece& p : pieces) pending.push_back(&p);
  std::vector<Piece*> failed;

  // The router answers before the client's deadline: keep a reserve.
  const absl::Duration left = options_.deadline - absl::Now();
  const absl::Time worker_deadline_cap =
      options_.deadline == absl::InfiniteFuture()
          ? absl::InfiniteFuture()
          : options_.deadline -
                std::min(left / 10, absl::Milliseconds(200));

  while (!pending.empty()) {
    if (cancellation_->cancelled()) {
      return absl::CancelledError("the client cancelled the call");
    }
    const absl::Time now = absl::Now();
    if (now >= worker_deadline_cap) {
      for (Piece* p : pending) {
        if (p->last_error.empty()) p->last_error = "request deadline reached";
        p->deadline = true;
        failed.push_back(p);
      }
      break;
    }
    // Assign each pending piece to a worker.
    std::map<int, std::vector<Piece*>> by_worker;
    for (Piece* p : pending) {
      const int w = pool_->Choose(p->expert, p->tried);
      if (w < 0) {
        if (p->last_error.empty()) p->last_error = "no healthy worker hosts it";
        failed.push_back(p);
        continue;
      }
      by_worker[w].push_back(p);
    }
    pending.clear();
    if (by_worker.empty()) break;

    auto waiter = std::make_shared<TicketWaiter>();
    const absl::Time timeout_deadline = now + options_.worker_timeout;
    std::vector<std::pair<std::shared_ptr<BatchTicket>, std::vector<Piece*>>>
        tickets;
    for (auto& [w, ps] : by_worker) {
      auto t = std::make_shared<BatchTicket>();
      t->worker = w;
      t->src = src;
      for (Piece* p : ps) t->pieces.push_back({p->expert, p->offset, p->count});
      t->timeout_binds = timeout_deadline < worker_deadline_cap;
      t->deadline = std::min(timeout_deadline, worker_deadline_cap);
      t->waiter = waiter;
      tickets.emplace_back(std::move(t), std::move(ps));
    }
    waiter->outstanding = static_cast<int>(tickets.size());
    const int cancel_id = cancellation_->Register([waiter] {
      std::lock_guard<std::mutex> lock(waiter->mu);
      waiter->cancelled = true;
      waiter->cv.notify_all();
    });
    if (cancel_id < 0) {
      return absl::CancelledError("the client cancelled the call");
    }
    if (gating_ != nullptr) gating_->Done();
    for (auto& [t, ps] : tickets) batcher_->Submit(t);
    // Batches this forward completed were sent (and encoded, counted by the
    // batcher) inside Submit; the rest it waits for.
    const absl::Time submit_end = absl::Now();
    bool cancelled = false;
    {
      std::unique_lock<std::mutex> lock(waiter->mu);
      waiter->cv.wait_until(
          lock, absl::ToChronoTime(worker_deadline_cap),
          [&] { return waiter->outstanding == 0 || waiter->cancelled; });
      cancelled = waiter->cancelled;
    }
    cancellation_->Unregister(cancel_id);
    const absl::Time received = absl::Now();
    // Tickets still out are given up: cancellation, or the deadline.
    absl::Time last_sent = submit_end;
    for (auto& [t, ps] : tickets) {
      bool done;
      {
        std::lock_guard<std::mutex> lock(waiter->mu);
        done = t->done;
      }
      if (!done) {
        WorkerBatcher::Abandon(*t);
        for (Piece* p : ps) {
          p->last_error = absl::StrCat(pool_->address(t->worker),
                                       ": request deadline reached");
          p->deadline = true;
          failed.push_back(p);
        }
        continue;
      }
      last_sent = std::max(last_sent, t->sent);
    }
    if (cancelled) {
      return absl::CancelledError("the client cancelled the call");
    }
    batch_wait_ += last_sent - submit_end;
    rpc_wait_ += received - last_sent;
    for (auto& [t, ps] : tickets) {
      bool done;
      {
        std::lock_guard<std::mutex> lock(waiter->mu);
        done = t->done;
      }
      if (!done) continue;
      const std::string error = PlaceOutputs(*t, d, out);
      if (error.empty()) continue;
      MOE_LOG(WARNING) << "worker " << pool_->address(t->worker) << ": "
                       << error;
      const bool deadline = t->batch->status.error_code() ==
                            grpc::StatusCode::DEADLINE_EXCEEDED;
      for (Piece* p : ps) {
        p->tried.insert(t->worker);
        p->last_error = absl::StrCat(pool_->address(t->worker), ": ", error);
        p->deadline = deadline;
        pending.push_back(p);
      }
    }
    decode_ += absl::Now() - received;
  }
  if (failed.empty()) return absl::OkStatus();

  std::set<int64_t> experts;
  std::vector<std::string> reasons;
  for (Piece* p : failed) {
    out->narrow(0, p->offset, p->count).zero_();
    failure_reasons_[p->expert] =
        p->deadline ? "deadline" : "expert_unavailable";
    if (experts.insert(p->expert).second) {
      reasons.push_back(absl::StrCat("expert ", p->expert, " (", p->last_error,
                                     ")"));
    }
  }
  if (options_.on_failure == ExpertFailurePolicy::kFail) {
    return absl::UnavailableError(
        absl::StrCat("experts unavailable: ", absl::StrJoin(reasons, "; ")));
  }
  MOE_LOG(WARNING) << "dropping the assignments of "
                   << absl::StrJoin(reasons, "; ");
  unavailable->assign(experts.begin(), experts.end());
  return absl::OkStatus();
}

}  // namespace moe::router
