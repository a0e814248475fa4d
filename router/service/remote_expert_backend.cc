#include "router/service/remote_expert_backend.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/host_tensor.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "common/torch_convert.h"
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

// Why a finished call gave a ticket nothing, or "" when it has outputs for
// it.
std::string CallError(const BatchTicket& ticket, int64_t d) {
  const WorkerBatch& batch = *ticket.batch;
  if (!batch.status.ok()) {
    return absl::StrCat(
        batch.status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED
            ? "deadline exceeded"
            : "failed",
        ": ", batch.status.error_message());
  }
  if (batch.outputs->shape() != std::vector<int64_t>{batch.rows, d}) {
    return absl::StrCat("outputs have shape ",
                        common::ShapeToString(batch.outputs->shape()),
                        ", expected [", batch.rows, ", ", d, "]");
  }
  return "";
}

// Piece i of the ticket as float32 rows: `count` x d floats read in place
// when the wire is float32 and the rows lie in one received slice, else
// copied (and converted) into *scratch.
const float* PieceRows(const BatchTicket& ticket, size_t i, int64_t d,
                       at::Tensor* scratch) {
  const proto::WireTensorView& outputs = *ticket.batch->outputs;
  const BatchPiece& p = ticket.pieces[i];
  const int64_t row_bytes = d * outputs.element_size();
  const int64_t from = ticket.rows_in_batch[i] * row_bytes;
  const int64_t bytes = p.count * row_bytes;
  if (outputs.dtype() == moe::v1::FLOAT32) {
    const void* direct = outputs.Contiguous(from, bytes);
    if (direct != nullptr &&
        reinterpret_cast<uintptr_t>(direct) % alignof(float) == 0) {
      return static_cast<const float*>(direct);
    }
    *scratch = at::empty({p.count, d}, at::kFloat);
    outputs.CopyData(from, bytes, scratch->data_ptr());
    return scratch->data_ptr<float>();
  }
  at::Tensor raw =
      at::empty({p.count, d},
                at::TensorOptions().dtype(*proto::TorchDType(outputs.dtype())));
  outputs.CopyData(from, bytes, raw.data_ptr());
  *scratch = raw.to(at::kFloat);
  return scratch->data_ptr<float>();
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
  const int64_t d = tokens.size(1);
  // Rows of unavailable experts stay zero; the rest are overwritten.
  *out = at::zeros({tokens.size(0), d}, at::kFloat);
  return Run(tokens, segments, unavailable, [out, d](const BatchTicket& t) {
    at::Tensor scratch;
    for (size_t i = 0; i < t.pieces.size(); ++i) {
      const BatchPiece& p = t.pieces[i];
      const float* rows = PieceRows(t, i, d, &scratch);
      std::memcpy(out->data_ptr<float>() + p.offset * d, rows,
                  static_cast<size_t>(p.count * d) * sizeof(float));
    }
  });
}

absl::Status RemoteExpertBackend::RunAndCombine(
    const at::Tensor& tokens, absl::Span<const experts::ExpertSegment> segments,
    const CombineTarget& target, std::vector<int64_t>* unavailable,
    int64_t* combine_us) {
  const int64_t d = tokens.size(1);
  float* y = target.y->data_ptr<float>();
  // Each call's outputs are added to y as soon as they arrive, straight from
  // the received bytes: y[rows[j]] += weights[j] * out[j].
  absl::Status status =
      Run(tokens, segments, unavailable, [&target, y, d](const BatchTicket& t) {
        at::Tensor scratch;
        for (size_t i = 0; i < t.pieces.size(); ++i) {
          const BatchPiece& p = t.pieces[i];
          const float* rows = PieceRows(t, i, d, &scratch);
          for (int64_t r = 0; r < p.count; ++r) {
            const int64_t j = p.offset + r;
            const float w = target.weights[j];
            const float* src = rows + r * d;
            float* dst = y + target.rows[j] * d;
            for (int64_t k = 0; k < d; ++k) dst[k] += w * src[k];
          }
        }
      });
  *combine_us = absl::ToInt64Microseconds(sink_time_);
  return status;
}

absl::Status RemoteExpertBackend::Run(
    const at::Tensor& tokens, absl::Span<const experts::ExpertSegment> segments,
    std::vector<int64_t>* unavailable,
    const std::function<void(const BatchTicket&)>& sink) {
  batch_wait_ = rpc_wait_ = sink_time_ = absl::ZeroDuration();
  const int64_t d = tokens.size(1);
  at::Tensor src = tokens.to(at::kFloat).contiguous();

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
          : options_.deadline - std::min(left / 10, absl::Milliseconds(200));

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
    // Handle each call as it finishes (its outputs are combined while the
    // others still compute), until all are in, the deadline or cancellation.
    std::vector<bool> handled(tickets.size(), false);
    size_t left_to_handle = tickets.size();
    bool cancelled = false, first_wait = true;
    while (left_to_handle > 0) {
      std::vector<size_t> ready;
      const absl::Time wait_start = absl::Now();
      {
        std::unique_lock<std::mutex> lock(waiter->mu);
        auto any_ready = [&] {
          if (waiter->cancelled) return true;
          for (size_t k = 0; k < tickets.size(); ++k) {
            if (!handled[k] && tickets[k].first->done) return true;
          }
          return false;
        };
        waiter->cv.wait_until(lock, absl::ToChronoTime(worker_deadline_cap),
                              any_ready);
        cancelled = waiter->cancelled;
        for (size_t k = 0; k < tickets.size(); ++k) {
          if (!handled[k] && tickets[k].first->done) ready.push_back(k);
        }
      }
      const absl::Time woke = absl::Now();
      if (first_wait) {
        // Time until this forward's last batch left counts as batch_wait.
        absl::Time last_sent = std::max(submit_end, wait_start);
        for (size_t k : ready) {
          last_sent = std::max(last_sent, tickets[k].first->sent);
        }
        last_sent = std::min(last_sent, woke);
        batch_wait_ += last_sent - wait_start;
        rpc_wait_ += woke - last_sent;
        first_wait = false;
      } else {
        rpc_wait_ += woke - wait_start;
      }
      if (cancelled || ready.empty()) break;  // cancelled, or the deadline
      for (size_t k : ready) {
        handled[k] = true;
        --left_to_handle;
        auto& [t, ps] = tickets[k];
        const std::string error = CallError(*t, d);
        if (error.empty()) {
          const absl::Status placed =
              common::TorchCall("combine outputs", [&] { sink(*t); });
          if (placed.ok()) continue;
          return placed;
        }
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
      sink_time_ += absl::Now() - woke;
    }
    cancellation_->Unregister(cancel_id);
    // Calls still out are given up: cancellation, or the deadline.
    for (size_t k = 0; k < tickets.size(); ++k) {
      if (handled[k]) continue;
      auto& [t, ps] = tickets[k];
      WorkerBatcher::Abandon(*t);
      for (Piece* p : ps) {
        p->last_error = absl::StrCat(pool_->address(t->worker),
                                     ": request deadline reached");
        p->deadline = true;
        failed.push_back(p);
      }
    }
    if (cancelled) {
      return absl::CancelledError("the client cancelled the call");
    }
  }
  if (failed.empty()) return absl::OkStatus();

  std::set<int64_t> experts;
  std::vector<std::string> reasons;
  for (Piece* p : failed) {
    failure_reasons_[p->expert] =
        p->deadline ? "deadline" : "expert_unavailable";
    if (experts.insert(p->expert).second) {
      reasons.push_back(
          absl::StrCat("expert ", p->expert, " (", p->last_error, ")"));
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
