// RemoteExpertBackend: runs a forward's expert work on the workers, one
// RunExperts call per worker per attempt, all in flight at once. Built per
// request: it carries the request's deadline and cancellation.
//
// Failure handling (DESIGN.md section 5): experts whose worker fails (or
// misses its deadline) are retried on another healthy replica while the
// deadline allows; what is still missing then follows the failure policy:
// kDrop lists them as unavailable (their outputs stay zero) and kFail returns
// UNAVAILABLE.
#pragma once

#include <cstdint>
#include <functional>
#include <mutex>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/time/time.h"
#include "moe/v1/tensor.pb.h"
#include "router/engine/expert_backend.h"
#include "router/service/worker_pool.h"

#include <map>
#include <string>

namespace moe::router {

enum class ExpertFailurePolicy { kDrop, kFail };

// Cancels the worker calls of one request when its client goes away.
class CallCancellation {
 public:
  // Cancels every registered call and every later one.
  void Cancel();
  bool cancelled() const;
  // False (and nothing registered) once cancelled.
  bool Register(grpc::ClientContext* context);
  void Unregister(grpc::ClientContext* context);

 private:
  mutable std::mutex mu_;
  bool cancelled_ = false;
  std::vector<grpc::ClientContext*> contexts_;
};

struct RemoteCallOptions {
  absl::Time deadline = absl::InfiniteFuture();  // the client's
  absl::Duration worker_timeout = absl::Seconds(30);
  ExpertFailurePolicy on_failure = ExpertFailurePolicy::kDrop;
  moe::v1::DType wire_dtype = moe::v1::FLOAT32;
  // Called with each worker call's latency (may be empty).
  std::function<void(int worker, absl::Duration)> on_worker_rpc;
};

class RemoteExpertBackend : public ExpertBackend {
 public:
  // `pool` and `cancellation` must outlive the backend.
  RemoteExpertBackend(WorkerPool* pool, CallCancellation* cancellation,
                      const RemoteCallOptions& options)
      : pool_(pool), cancellation_(cancellation), options_(options) {}

  absl::Status RunExperts(const at::Tensor& tokens,
                          absl::Span<const experts::ExpertSegment> segments,
                          at::Tensor* out,
                          std::vector<int64_t>* unavailable) override;

  // Where the last RunExperts call spent its time: building requests
  // (gather into wire bytes), waiting for the workers, decoding and placing
  // their outputs.
  absl::Duration encode_time() const { return encode_; }
  absl::Duration rpc_wait() const { return rpc_wait_; }
  absl::Duration decode_time() const { return decode_; }
  // Why each unavailable expert of the last call failed: "deadline" when its
  // last worker call missed its deadline, else "expert_unavailable".
  const std::map<int64_t, std::string>& failure_reasons() const {
    return failure_reasons_;
  }

 private:
  WorkerPool* pool_;
  CallCancellation* cancellation_;
  RemoteCallOptions options_;
  absl::Duration encode_;
  absl::Duration rpc_wait_;
  absl::Duration decode_;
  std::map<int64_t, std::string> failure_reasons_;
};

}  // namespace moe::router
