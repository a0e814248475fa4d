#include "router/service/remote_expert_backend.h"

#include <algorithm>
#include <condition_variable>
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

struct Call {
  int worker = -1;
  std::vector<Piece*> pieces;
  grpc::ClientContext context;
  moe::v1::RunExpertsRequest request;
  moe::v1::RunExpertsResponse response;
  grpc::Status status;
  bool binding_worker_timeout = false;
};

}  // namespace

void CallCancellation::Cancel() {
  std::lock_guard<std::mutex> lock(mu_);
  cancelled_ = true;
  for (grpc::ClientContext* c : contexts_) c->TryCancel();
}

bool CallCancellation::cancelled() const {
  std::lock_guard<std::mutex> lock(mu_);
  return cancelled_;
}

bool CallCancellation::Register(grpc::ClientContext* context) {
  std::lock_guard<std::mutex> lock(mu_);
  if (cancelled_) return false;
  contexts_.push_back(context);
  return true;
}

void CallCancellation::Unregister(grpc::ClientContext* context) {
  std::lock_guard<std::mutex> lock(mu_);
  contexts_.erase(std::remove(contexts_.begin(), contexts_.end(), context),
                  contexts_.end());
}

absl::Status RemoteExpertBackend::RunExperts(
    const at::Tensor& tokens, absl::Span<const experts::ExpertSegment> segments,
    at::Tensor* out, std::vector<int64_t>* unavailable) {
  encode_ = rpc_wait_ = decode_ = absl::ZeroDuration();
  const int64_t d = tokens.size(1);
  at::Tensor src = tokens.to(at::kFloat).contiguous();
  *out = at::zeros({tokens.size(0), d}, at::kFloat);

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
    std::map<int, std::unique_ptr<Call>> calls;
    for (Piece* p : pending) {
      const int w = pool_->Choose(p->expert, p->tried);
      if (w < 0) {
        if (p->last_error.empty()) p->last_error = "no healthy worker hosts it";
        failed.push_back(p);
        continue;
      }
      auto& call = calls[w];
      if (!call) {
        call = std::make_unique<Call>();
        call->worker = w;
      }
      call->pieces.push_back(p);
    }
    pending.clear();
    if (calls.empty()) break;

    std::mutex mu;
    std::condition_variable cv;
    size_t done = 0;
    const absl::Time encode_start = absl::Now();
    const absl::Time timeout_deadline = now + options_.worker_timeout;
    for (auto& [w, call] : calls) {
      int64_t rows = 0;
      moe::v1::Tensor* wire = call->request.mutable_tokens();
      wire->set_dtype(options_.wire_dtype);
      for (Piece* p : call->pieces) {
        MOE_RETURN_IF_ERROR(proto::AppendRows(src, p->offset, p->count,
                                              options_.wire_dtype, wire));
        auto* seg = call->request.add_segments();
        seg->set_expert_id(p->expert);
        seg->set_count(p->count);
        rows += p->count;
      }
      wire->add_shape(rows);
      wire->add_shape(d);
      call->request.set_output_dtype(options_.wire_dtype);
      call->binding_worker_timeout = timeout_deadline < worker_deadline_cap;
      call->context.set_deadline(absl::ToChronoTime(
          std::min(timeout_deadline, worker_deadline_cap)));
    }
    const absl::Time sent = absl::Now();
    encode_ += sent - encode_start;
    for (auto& [w, call] : calls) {
      Call* c = call.get();
      if (!cancellation_->Register(&c->context)) {
        return absl::CancelledError("the client cancelled the call");
      }
      pool_->AddInflight(w, 1);
      pool_->stub(w)->async()->RunExperts(
          &c->context, &c->request, &c->response,
          [c, &mu, &cv, &done](grpc::Status status) {
            c->status = std::move(status);
            std::lock_guard<std::mutex> lock(mu);
            ++done;
            cv.notify_one();
          });
    }
    {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return done == calls.size(); });
    }
    const absl::Time received = absl::Now();
    const absl::Duration waited = received - sent;
    rpc_wait_ += waited;
    for (auto& [w, call] : calls) {
      cancellation_->Unregister(&call->context);
      pool_->AddInflight(w, -1);
      if (options_.on_worker_rpc) options_.on_worker_rpc(w, waited);
    }
    if (cancellation_->cancelled()) {
      return absl::CancelledError("the client cancelled the call");
    }
    for (auto& [w, call] : calls) {
      std::string error;
      at::Tensor outputs;
      if (call->status.ok()) {
        int64_t rows = 0;
        for (Piece* p : call->pieces) rows += p->count;
        absl::StatusOr<at::Tensor> decoded = proto::DecodeTensor(
            call->response.outputs(), "outputs", rows * d);
        if (!decoded.ok()) {
          error = std::string(decoded.status().message());
        } else if (decoded->dim() != 2 || decoded->size(0) != rows ||
                   decoded->size(1) != d) {
          error = "outputs have the wrong shape";
        } else {
          outputs = decoded->to(at::kFloat);
        }
      } else {
        error = absl::StrCat(grpc::StatusCode(call->status.error_code()) ==
                                     grpc::StatusCode::DEADLINE_EXCEEDED
                                 ? "deadline exceeded"
                                 : "failed",
                             ": ", call->status.error_message());
        const grpc::StatusCode code = call->status.error_code();
        if (code == grpc::StatusCode::UNAVAILABLE ||
            (code == grpc::StatusCode::DEADLINE_EXCEEDED &&
             call->binding_worker_timeout) ||
            code == grpc::StatusCode::INTERNAL ||
            code == grpc::StatusCode::UNKNOWN) {
          pool_->MarkDown(w, error);
        }
      }
      if (!error.empty()) {
        MOE_LOG(WARNING) << "worker " << pool_->address(w) << ": " << error;
        const bool deadline = call->status.error_code() ==
                              grpc::StatusCode::DEADLINE_EXCEEDED;
        for (Piece* p : call->pieces) {
          p->tried.insert(w);
          p->last_error = absl::StrCat(pool_->address(w), ": ", error);
          p->deadline = deadline;
          pending.push_back(p);
        }
        continue;
      }
      int64_t row = 0;
      for (Piece* p : call->pieces) {
        out->narrow(0, p->offset, p->count)
            .copy_(outputs.narrow(0, row, p->count));
        row += p->count;
      }
    }
    decode_ += absl::Now() - received;
  }
  if (failed.empty()) return absl::OkStatus();

  std::set<int64_t> experts;
  std::vector<std::string> reasons;
  for (Piece* p : failed) {
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
