#include "experts/service/expert_service.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <vector>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "common/torch_convert.h"
#include "proto/grpc_status.h"
#include "proto/tensor_codec.h"

namespace moe::experts {

ExpertService::ExpertService(const ExpertShard* shard,
                             const common::ModelConfig& config,
                             const ExpertServiceOptions& options,
                             ExpertMetrics* metrics,
                             server::RpcMetrics* rpc_metrics)
    : shard_(shard),
      config_(config),
      options_(options),
      metrics_(metrics),
      rpc_metrics_(rpc_metrics),
      queue_(std::make_unique<common::WorkQueue>(
          options.compute_threads, options.max_queued, "moe-expert")) {}

ExpertService::~ExpertService() { queue_.reset(); }

absl::Status ExpertService::Run(const moe::v1::RunExpertsRequest& request,
                                moe::v1::RunExpertsResponse* response) const {
  c10::InferenceMode guard;
  MOE_ASSIGN_OR_RETURN(at::Tensor tokens,
                       proto::ViewTensor(request.tokens(), "tokens",
                                         options_.max_tokens * shard_->dim()));
  if (tokens.dim() != 2 || tokens.size(1) != shard_->dim()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokens: must be [T, ", shard_->dim(), "]"));
  }
  if (!at::isFloatingType(tokens.scalar_type())) {
    return absl::InvalidArgumentError("tokens: must be floating point");
  }
  std::vector<ExpertSegment> segments;
  segments.reserve(request.segments_size());
  for (const moe::v1::ExpertSegment& s : request.segments()) {
    segments.push_back({s.expert_id(), s.count()});
  }
  moe::v1::DType out_dtype = request.output_dtype();
  if (out_dtype == moe::v1::DTYPE_UNSPECIFIED) {
    out_dtype = request.tokens().dtype();
  }
  if (out_dtype == moe::v1::INT64 || !moe::v1::DType_IsValid(out_dtype)) {
    return absl::InvalidArgumentError(
        "output_dtype: must be FLOAT32, BFLOAT16 or FLOAT16");
  }
  // The experts write float32 CPU outputs straight into the response's bytes;
  // any other output dtype or device goes through one conversion copy.
  MOE_ASSIGN_OR_RETURN(
      at::Tensor wire_out,
      proto::WireBuffer(out_dtype, {tokens.size(0), shard_->dim()},
                        response->mutable_outputs()));
  at::Tensor out;
  if (wire_out.scalar_type() == at::kFloat && shard_->device().is_cpu()) {
    out = wire_out;
  }
  std::vector<double> seconds;
  MOE_RETURN_IF_ERROR(shard_->Run(tokens, segments, &out, &seconds));
  if (metrics_ != nullptr) {
    metrics_->RecordBatch(tokens.size(0));
    for (size_t i = 0; i < segments.size(); ++i) {
      metrics_->RecordSegment(segments[i].expert_id, segments[i].count,
                              seconds[i]);
    }
  }
  if (out.numel() == 0 || out.data_ptr() == wire_out.data_ptr()) {
    return absl::OkStatus();
  }
  return common::TorchCall("encode outputs", [&] { wire_out.copy_(out); });
}

grpc::ServerUnaryReactor* ExpertService::RunExperts(
    grpc::CallbackServerContext* context,
    const moe::v1::RunExpertsRequest* request,
    moe::v1::RunExpertsResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (metrics_ != nullptr) metrics_->AddInflight(1);
  const absl::Time start = absl::Now();
  auto finish = [this, reactor, start](const absl::Status& status) {
    const grpc::Status g = proto::ToGrpcStatus(status);
    if (metrics_ != nullptr) metrics_->AddInflight(-1);
    if (rpc_metrics_ != nullptr) {
      rpc_metrics_->Record("/moe.v1.ExpertWorker/RunExperts", g.error_code(),
                           absl::Now() - start);
    }
    reactor->Finish(g);
  };
  const bool queued =
      queue_->TrySubmit([this, context, request, response, finish] {
        absl::Status status;
        if (context->IsCancelled()) {
          status = absl::CancelledError("cancelled before it ran");
        } else {
          status = Run(*request, response);
        }
        if (!status.ok() && !absl::IsCancelled(status)) {
          MOE_LOG(WARNING) << "RunExperts from " << context->peer() << ": "
                           << status;
        }
        finish(status);
      });
  if (!queued) {
    MOE_LOG(WARNING) << "RunExperts refused: queue full ("
                     << options_.max_queued << " waiting)";
    finish(absl::ResourceExhaustedError(
        absl::StrCat("expert worker overloaded: ", options_.max_queued,
                     " requests already queued")));
  }
  return reactor;
}

grpc::ServerUnaryReactor* ExpertService::GetShardInfo(
    grpc::CallbackServerContext* context,
    const moe::v1::GetShardInfoRequest* /*request*/,
    moe::v1::ShardInfo* response) {
  for (int64_t id : shard_->expert_ids()) response->add_expert_ids(id);
  response->set_dim(shard_->dim());
  response->set_expert_hidden(shard_->hidden());
  response->set_total_experts(config_.total_experts());
  response->set_device(shard_->device().str());
  response->set_config_json(config_.ToJson());
  response->set_weight_bytes(shard_->weight_bytes());
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace moe::experts
