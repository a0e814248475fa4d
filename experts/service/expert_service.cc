#include "experts/service/expert_service.h"

#include <chrono>
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

// Failed and refused calls come in floods under overload: their log lines
// are rate-limited, with a count of what was left out.
constexpr int kFailureLogsPerSecond = 10;

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
  const common::ExpertSet hosted = shard.experts();
  for (size_t l = 0; l < hosted.layers(); ++l) {
    for (int64_t e : hosted.ids(l)) {
      info.mutable_layers(static_cast<int>(l))->add_expert_ids(e);
    }
  }
  info.set_device(shard.device().ToString());
  info.set_weight_bytes(shard.weight_bytes());
  info.set_max_tokens_per_call(options.max_tokens_per_call);
  info.set_compute_dtype(common::DTypeName(shard.compute_dtype()));
  return info;
}

}  // namespace

absl::Status ExpertServiceOptions::Validate() const {
  if (compute_threads < 1) {
    return absl::InvalidArgumentError("--compute_threads must be >= 1");
  }
  if (max_tokens_per_call < 1) {
    return absl::InvalidArgumentError("--max_tokens_per_call must be >= 1");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ExpertService>> ExpertService::Create(
    const ExpertShard* shard, ServedModel model,
    const ExpertServiceOptions& options, ExpertMetrics* metrics) {
  MOE_RETURN_IF_ERROR(options.Validate());
  if (shard->dim() != model.spec.dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("the shard's experts have dim ", shard->dim(),
                     " but the model's is ", model.spec.dim));
  }
  if (shard->experts().layers() > model.spec.layers.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the shard hosts experts of layer ", shard->experts().layers() - 1,
        " but the model has ", model.spec.layers.size(), " layers"));
  }
  return std::unique_ptr<ExpertService>(
      new ExpertService(shard, std::move(model), options, metrics));
}

ExpertService::ExpertService(const ExpertShard* shard, ServedModel model,
                             const ExpertServiceOptions& options,
                             ExpertMetrics* metrics)
    : shard_(shard),
      on_gpu_(shard->device().is_gpu()),
      model_(std::move(model)),
      options_(options),
      metrics_(*metrics),
      info_(MakeShardInfo(*shard, model_, options)),
      queue_(std::make_unique<common::WorkQueue>(
          options.compute_threads, options.max_queued, "moe-expert")) {}

ExpertService::~ExpertService() { queue_.reset(); }

absl::Status ExpertService::Run(const grpc::ByteBuffer& request,
                                grpc::ByteBuffer* response) const {
  using Clock = std::chrono::steady_clock;
  const Clock::time_point start = Clock::now();
  MOE_ASSIGN_OR_RETURN(proto::RunExpertsRequestView call,
                       proto::RunExpertsRequestView::Parse(
                           request, shard_->dim(), options_.max_tokens_per_call,
                           static_cast<int>(model_.spec.layers.size())));
  MOE_RETURN_IF_ERROR(shard_->CheckSegments(call.rows(), call.segments()));
  // float32 outputs are written by the experts straight into the response's
  // bytes; 16-bit ones are converted from a float32 buffer.
  proto::RunExpertsResponseWriter out(call.output_dtype(), call.rows(),
                                      shard_->dim());
  const Clock::time_point parsed = Clock::now();
  RunStats stats;
  MOE_RETURN_IF_ERROR(RunInParts(call, out.data(), &stats));
  const Clock::time_point ran = Clock::now();
  *response = out.Finish();
  auto seconds = [](Clock::duration d) {
    return std::chrono::duration<double>(d).count();
  };
  ExpertMetrics::CallStages stages;
  stages.parse = seconds(parsed - start);
  stages.copy_in = stats.copy_in_seconds;
  stages.copy_out = stats.copy_out_seconds;
  // On the host the whole run is compute; on a GPU its measured share.
  stages.compute = on_gpu_ ? stats.compute_seconds : seconds(ran - parsed);
  stages.serialize = seconds(Clock::now() - ran);
  metrics_.RecordBatch(call.rows());
  metrics_.RecordCall(stages, on_gpu_);
  for (size_t i = 0; i < call.segments().size(); ++i) {
    metrics_.RecordSegment(call.segments()[i].key, call.segments()[i].count,
                           stats.segment_seconds[i]);
  }
  return absl::OkStatus();
}

absl::Status ExpertService::RunInParts(const proto::RunExpertsRequestView& call,
                                       void* out, RunStats* stats) const {
  const int64_t dim = shard_->dim();
  const int64_t part = std::max<int64_t>(1, shard_->max_rows_per_run());
  const std::vector<common::ExpertSegment>& segments = call.segments();
  const bool wide_out = call.output_dtype() == common::DType::kFloat32;
  const size_t out_element = common::ElementSize(call.output_dtype());
  stats->segment_seconds.assign(segments.size(), 0);
  // Reused by every part: a part's rows when they straddle received
  // slices, its float32 results for a 16-bit answer, its segments.
  std::string rows_scratch;
  std::vector<float> wide;
  std::vector<common::ExpertSegment> pieces;
  std::vector<size_t> owner;
  size_t next = 0;  // the first segment not wholly before this part
  for (int64_t first = 0; first < call.rows(); first += part) {
    const int64_t count = std::min(part, call.rows() - first);
    pieces.clear();
    owner.clear();
    while (next < segments.size() &&
           segments[next].offset + segments[next].count <= first) {
      ++next;
    }
    for (size_t i = next; i < segments.size(); ++i) {
      const common::ExpertSegment& s = segments[i];
      if (s.offset >= first + count) break;
      const int64_t lo = std::max(s.offset, first);
      const int64_t hi = std::min(s.offset + s.count, first + count);
      if (lo >= hi) continue;
      pieces.push_back({s.key, lo - first, hi - lo});
      owner.push_back(i);
    }
    if (pieces.empty()) continue;
    const TokenRows tokens{call.tokens_dtype(),
                           call.TokenRowData(first, count, &rows_scratch),
                           count};
    float* dst = static_cast<float*>(out) + first * dim;
    if (!wide_out) {
      wide.resize(static_cast<size_t>(count * dim));
      dst = wide.data();
    }
    RunStats measured;
    MOE_RETURN_IF_ERROR(shard_->Run(tokens, pieces, dst, &measured));
    if (!wide_out) {
      common::ConvertFromFloat32(
          wide.data(), count * dim, call.output_dtype(),
          static_cast<char*>(out) + first * dim * out_element);
    }
    stats->compute_seconds += measured.compute_seconds;
    stats->copy_in_seconds += measured.copy_in_seconds;
    stats->copy_out_seconds += measured.copy_out_seconds;
    for (size_t j = 0; j < pieces.size(); ++j) {
      stats->segment_seconds[owner[j]] += measured.segment_seconds[j];
    }
  }
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* ExpertService::RunExperts(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  metrics_.AddInflight(1);
  auto finish = [this, reactor](const absl::Status& status) {
    metrics_.AddInflight(-1);
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
        static common::LogRateLimiter failures(kFailureLogsPerSecond);
        int64_t suppressed = 0;
        if (!status.ok() && !absl::IsCancelled(status) &&
            failures.Allow(&suppressed)) {
          MOE_LOG(WARNING) << "RunExperts from " << context->peer() << ": "
                           << status << common::SuppressedNote(suppressed);
        }
        finish(status);
      });
  static common::LogRateLimiter refusals(kFailureLogsPerSecond);
  if (int64_t suppressed = 0; !queued && refusals.Allow(&suppressed)) {
    MOE_LOG(WARNING) << "RunExperts refused: queue full ("
                     << options_.max_queued << " waiting)"
                     << common::SuppressedNote(suppressed);
  }
  if (!queued) {
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
