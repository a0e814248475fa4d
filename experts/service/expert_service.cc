#include "experts/service/expert_service.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "proto/expert_wire.h"
#include "proto/grpc_status.h"
#include "proto/tensor_codec.h"

namespace moe::experts {
namespace {

common::DType FromWire(moe::v1::DType dtype) {
  return dtype == moe::v1::BFLOAT16  ? common::DType::kBFloat16
         : dtype == moe::v1::FLOAT16 ? common::DType::kFloat16
                                     : common::DType::kFloat32;
}

moe::v1::ShardInfo MakeShardInfo(const ExpertShard& shard,
                                 const ServedModel& model,
                                 const ExpertServiceOptions& options) {
  moe::v1::ShardInfo info;
  info.set_model_name(model.spec.name);
  info.set_fingerprint(model.fingerprint);
  info.set_dim(model.spec.dim);
  for (const common::LayerSpec& layer : model.spec.layers) {
    moe::v1::LayerShard* l = info.add_layers();
    l->set_name(layer.name);
    l->set_kind(common::LayerKindName(layer.config.kind));
    l->set_total_experts(layer.config.total_experts());
    l->set_expert_hidden(layer.config.expert_hidden());
  }
  for (const common::ExpertKey& key : shard.keys()) {
    info.mutable_layers(key.layer)->add_expert_ids(key.expert);
  }
  info.set_device(shard.device());
  info.set_weight_bytes(shard.weight_bytes());
  info.set_max_tokens_per_call(options.max_tokens_per_call);
  info.set_compute_dtype(shard.compute_dtype());
  return info;
}

}  // namespace

ExpertService::ExpertService(const ExpertShard* shard, ServedModel model,
                             const ExpertServiceOptions& options,
                             ExpertMetrics* metrics)
    : shard_(shard),
      on_gpu_(shard->device() != "cpu"),
      model_(std::move(model)),
      options_(options),
      metrics_(metrics),
      info_(MakeShardInfo(*shard, model_, options)),
      queue_(std::make_unique<common::WorkQueue>(
          options.compute_threads, options.max_queued, "moe-expert")) {}

ExpertService::~ExpertService() { queue_.reset(); }

absl::Status ExpertService::Run(const grpc::ByteBuffer& request,
                                grpc::ByteBuffer* response) const {
  MOE_ASSIGN_OR_RETURN(proto::RunExpertsRequestView call,
                       proto::RunExpertsRequestView::Parse(
                           request, shard_->dim(), options_.max_tokens_per_call,
                           static_cast<int>(model_.spec.layers.size())));
  std::string token_scratch;
  const TokenRows tokens{FromWire(call.tokens_dtype()),
                         call.TokenData(&token_scratch), call.rows()};
  // float32 outputs are written by the experts straight into the response's
  // bytes; 16-bit ones are converted from a float32 buffer.
  proto::RunExpertsResponseWriter out(call.output_dtype(), call.rows(),
                                      shard_->dim());
  std::vector<float> wide;
  float* dst = static_cast<float*>(out.data());
  if (call.output_dtype() != moe::v1::FLOAT32) {
    wide.resize(static_cast<size_t>(call.rows() * shard_->dim()));
    dst = wide.data();
  }
  RunStats stats;
  MOE_RETURN_IF_ERROR(shard_->Run(tokens, call.segments(), dst, &stats));
  if (!wide.empty()) {
    common::ConvertFromFloat32(wide.data(), static_cast<int64_t>(wide.size()),
                               FromWire(call.output_dtype()), out.data());
  }
  if (metrics_ != nullptr) {
    metrics_->RecordBatch(call.rows());
    metrics_->RecordCall(stats.compute_seconds, stats.copy_seconds, on_gpu_);
    for (size_t i = 0; i < call.segments().size(); ++i) {
      metrics_->RecordSegment(call.segments()[i].key, call.segments()[i].count,
                              stats.segment_seconds[i]);
    }
  }
  *response = out.Finish();
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* ExpertService::RunExperts(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (metrics_ != nullptr) metrics_->AddInflight(1);
  auto finish = [this, reactor](const absl::Status& status) {
    if (metrics_ != nullptr) metrics_->AddInflight(-1);
    reactor->Finish(proto::ToGrpcStatus(status));
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
                     " calls already queued")));
  }
  return reactor;
}

grpc::ServerUnaryReactor* ExpertService::GetShardInfo(
    grpc::CallbackServerContext* context,
    const moe::v1::GetShardInfoRequest* /*request*/,
    moe::v1::ShardInfo* response) {
  *response = info_;
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace moe::experts
