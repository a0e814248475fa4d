// The moe.v1.Router service: validates a request, runs the MoeEngine with a
// RemoteExpertBackend on the router's own WorkQueue (never on gRPC's
// threads), and answers with the output, losses, statistics and, on request,
// the routing trace. Overload (a full queue) answers RESOURCE_EXHAUSTED.
// Concurrent forwards may share worker calls (options.batch_window).
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

#include "common/work_queue.h"
#include "moe/v1/router.grpc.pb.h"
#include "router/engine/moe_engine.h"
#include "router/service/remote_expert_backend.h"
#include "router/service/router_metrics.h"
#include "router/service/worker_batcher.h"
#include "router/service/worker_pool.h"
#include "server/rpc_metrics.h"

namespace moe::router {

struct RouterServiceOptions {
  int threads = 2;
  size_t max_queued = 64;
  int64_t max_tokens_per_request = 65536;
  absl::Duration worker_timeout = absl::Seconds(30);
  ExpertFailurePolicy on_failure = ExpertFailurePolicy::kDrop;
  moe::v1::DType wire_dtype = moe::v1::FLOAT32;
  // Dynamic batching of worker calls (WorkerBatcher); zero turns it off.
  absl::Duration batch_window = absl::ZeroDuration();
  int64_t batch_max_rows = 16384;
};

class RouterService final : public moe::v1::Router::CallbackService {
 public:
  // `engine`, `pool` and the metrics (either may be null) must outlive the
  // service.
  RouterService(const MoeEngine* engine, WorkerPool* pool,
                const RouterServiceOptions& options,
                RouterMetrics* metrics = nullptr,
                server::RpcMetrics* rpc_metrics = nullptr);
  ~RouterService() override;

  grpc::ServerUnaryReactor* Forward(
      grpc::CallbackServerContext* context,
      const moe::v1::ForwardRequest* request,
      moe::v1::ForwardResponse* response) override;

  grpc::ServerUnaryReactor* GetModelInfo(
      grpc::CallbackServerContext* context,
      const moe::v1::GetModelInfoRequest* request,
      moe::v1::ModelInfo* response) override;

  // Waits for the forwards already accepted (they answer their calls) and
  // their worker calls. Call after the server stopped taking calls and before
  // it is destroyed; the destructor does it too.
  void Drain();

  // Largest ForwardRequest the limits allow, for the server's message size.
  int64_t MaxRequestBytes() const;

  // Reported in ModelInfo so that tools can find /metrics.
  void set_metrics_port(int port) { metrics_port_ = port; }

 private:
  class ForwardReactor;

  absl::Status RunForward(const moe::v1::ForwardRequest& request,
                          absl::Time deadline, CallCancellation* cancellation,
                          moe::v1::ForwardResponse* response) const;

  const MoeEngine* engine_;
  WorkerPool* pool_;
  RouterServiceOptions options_;
  RouterMetrics* metrics_;
  server::RpcMetrics* rpc_metrics_;
  std::atomic<int64_t> inflight_{0};
  std::atomic<int> metrics_port_{0};
  std::unique_ptr<WorkerBatcher> batcher_;
  std::unique_ptr<common::WorkQueue> queue_;
};

// Parses "drop" / "fail".
absl::StatusOr<ExpertFailurePolicy> ParseFailurePolicy(absl::string_view name);

}  // namespace moe::router
