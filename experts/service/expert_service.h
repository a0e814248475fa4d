// The moe.v1.ExpertWorker service: runs the experts of one ExpertShard for
// the router. Handlers only validate and queue; the expert math runs on the
// service's own WorkQueue, never on gRPC's threads. A full queue answers
// RESOURCE_EXHAUSTED.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "common/model_config.h"
#include "common/work_queue.h"
#include "experts/expert_shard.h"
#include "experts/service/expert_metrics.h"
#include "moe/v1/expert.grpc.pb.h"
#include "server/rpc_metrics.h"

namespace moe::experts {

struct ExpertServiceOptions {
  int compute_threads = 1;       // OpenBLAS already parallelises each GEMM.
  size_t max_queued = 64;        // requests waiting beyond the running ones
  int64_t max_tokens = 1 << 20;  // rows per RunExperts call
};

class ExpertService final : public moe::v1::ExpertWorker::CallbackService {
 public:
  // `shard` and the metrics (either may be null) must outlive the service.
  ExpertService(const ExpertShard* shard, const common::ModelConfig& config,
                const ExpertServiceOptions& options,
                ExpertMetrics* metrics = nullptr,
                server::RpcMetrics* rpc_metrics = nullptr);
  ~ExpertService() override;

  // Waits for the calls already accepted to finish. Call after the server
  // stopped taking calls and before it is destroyed; the destructor does it
  // too.
  void Drain() { queue_.reset(); }

  grpc::ServerUnaryReactor* RunExperts(
      grpc::CallbackServerContext* context,
      const moe::v1::RunExpertsRequest* request,
      moe::v1::RunExpertsResponse* response) override;

  grpc::ServerUnaryReactor* GetShardInfo(
      grpc::CallbackServerContext* context,
      const moe::v1::GetShardInfoRequest* request,
      moe::v1::ShardInfo* response) override;

 private:
  absl::Status Run(const moe::v1::RunExpertsRequest& request,
                   moe::v1::RunExpertsResponse* response) const;

  const ExpertShard* shard_;
  common::ModelConfig config_;
  ExpertServiceOptions options_;
  ExpertMetrics* metrics_;
  server::RpcMetrics* rpc_metrics_;
  std::unique_ptr<common::WorkQueue> queue_;
};

}  // namespace moe::experts
