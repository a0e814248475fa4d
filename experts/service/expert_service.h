// The moe.v1.ExpertWorker service: runs the experts of one ExpertShard for
// routers. Handlers only check and queue; the expert math runs on the
// service's own WorkQueue, never on gRPC's threads. A full queue answers
// RESOURCE_EXHAUSTED. RunExperts reads its bytes itself
// (proto/expert_wire.h): tokens in place, outputs written straight into the
// response, and a message that is not a RunExpertsRequest is an
// INVALID_ARGUMENT saying so.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "common/model_spec.h"
#include "common/work_queue.h"
#include "experts/expert_shard.h"
#include "experts/service/expert_metrics.h"
#include "moe/v1/expert.grpc.pb.h"
#include "proto/expert_wire.h"

namespace moe::experts {

struct ExpertServiceOptions {
  int compute_threads = 1;  // OpenBLAS already parallelises GEMMs.
  size_t max_queued = 64;   // calls waiting beyond the running ones
  int64_t max_tokens_per_call = 1 << 17;  // token rows of one call

  // InvalidArgument naming the option (as the flag spells it) when
  // compute_threads or max_tokens_per_call is below 1.
  absl::Status Validate() const;
};

// What the worker serves: the model and its identity.
struct ServedModel {
  common::ModelSpec spec;
  std::string fingerprint;
};

class ExpertService final
    : public moe::v1::ExpertWorker::WithRawCallbackMethod_RunExperts<
          moe::v1::ExpertWorker::WithCallbackMethod_GetShardInfo<
              moe::v1::ExpertWorker::Service>> {
 public:
  // `shard` and `metrics` must outlive the service. InvalidArgument for
  // options that fail Validate(), or a shard that does not fit the model
  // (another dim, a layer the model does not have).
  static absl::StatusOr<std::unique_ptr<ExpertService>> Create(
      const ExpertShard* shard, ServedModel model,
      const ExpertServiceOptions& options, ExpertMetrics* metrics);
  ~ExpertService() override;

  // Waits for the calls already accepted to finish. Call after the server
  // stopped taking calls and before it is destroyed; the destructor does it
  // too.
  void Drain() { queue_.reset(); }

  grpc::ServerUnaryReactor* RunExperts(grpc::CallbackServerContext* context,
                                       const grpc::ByteBuffer* request,
                                       grpc::ByteBuffer* response) override;

  grpc::ServerUnaryReactor* GetShardInfo(
      grpc::CallbackServerContext* context,
      const moe::v1::GetShardInfoRequest* request,
      moe::v1::ShardInfo* response) override;

  // The reply of GetShardInfo.
  const moe::v1::ShardInfo& shard_info() const { return info_; }

 private:
  ExpertService(const ExpertShard* shard, ServedModel model,
                const ExpertServiceOptions& options, ExpertMetrics* metrics);
  absl::Status Run(const grpc::ByteBuffer& request,
                   grpc::ByteBuffer* response) const;
  // The call's rows through the shard in parts of at most
  // shard_->max_rows_per_run() rows, the results written to `out` (the
  // response's [rows, dim] of its output dtype): a call's working memory
  // beyond its request and response is one part's.
  absl::Status RunInParts(const proto::RunExpertsRequestView& call, void* out,
                          RunStats* stats) const;

  const ExpertShard* shard_;
  const bool on_gpu_;  // the shard copies to and from a device
  const ServedModel model_;
  const ExpertServiceOptions options_;
  ExpertMetrics& metrics_;
  moe::v1::ShardInfo info_;
  std::unique_ptr<common::WorkQueue> queue_;
};

}  // namespace moe::experts
