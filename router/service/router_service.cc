#include "router/service/router_service.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "common/torch_convert.h"
#include "proto/grpc_status.h"
#include "proto/tensor_codec.h"
#include "router/service/forward_response.h"

namespace moe::router {
namespace {

absl::StatusOr<RoutingOptions> ToRoutingOptions(
    const moe::v1::RoutingOptions& o, int64_t max_elements) {
  RoutingOptions out;
  switch (o.mode()) {
    case moe::v1::MODE_UNSPECIFIED:
    case moe::v1::EVAL:
      out.mode = Mode::kEval;
      break;
    case moe::v1::TRAIN:
      out.mode = Mode::kTrain;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("options.mode: unknown value ", o.mode()));
  }
  switch (o.policy()) {
    case moe::v1::POLICY_UNSPECIFIED:
    case moe::v1::RANDOM:
      out.policy = SecondExpertPolicy::kRandom;
      break;
    case moe::v1::ALL:
      out.policy = SecondExpertPolicy::kAll;
      break;
    case moe::v1::NONE:
      out.policy = SecondExpertPolicy::kNone;
      break;
    case moe::v1::THRESHOLD:
      out.policy = SecondExpertPolicy::kThreshold;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("options.policy: unknown value ", o.policy()));
  }
  if (o.has_threshold()) {
    if (!std::isfinite(o.threshold()) || o.threshold() < 0 ||
        o.threshold() > 1) {
      return absl::InvalidArgumentError(absl::StrCat(
          "options.threshold: ", o.threshold(), " is not in [0, 1]"));
    }
    out.threshold = o.threshold();
  }
  if (o.has_capacity_factor()) {
    if (!std::isfinite(o.capacity_factor()) || o.capacity_factor() <= 0 ||
        o.capacity_factor() > 1024) {
      return absl::InvalidArgumentError(
          absl::StrCat("options.capacity_factor: ", o.capacity_factor(),
                       " is not in (0, 1024]"));
    }
    out.capacity_factor = o.capacity_factor();
  }
  if (o.has_seed()) out.seed = o.seed();
  if (o.has_second_choice_uniforms()) {
    MOE_ASSIGN_OR_RETURN(
        out.second_choice_uniforms,
        proto::DecodeTensor(o.second_choice_uniforms(),
                            "options.second_choice_uniforms", max_elements));
  }
  return out;
}

}  // namespace

absl::StatusOr<ExpertFailurePolicy> ParseFailurePolicy(absl::string_view name) {
  if (name == "drop") return ExpertFailurePolicy::kDrop;
  if (name == "fail") return ExpertFailurePolicy::kFail;
  return absl::InvalidArgumentError(
      absl::StrCat("--on_expert_failure: \"", name, "\" is not drop or fail"));
}

// Finishes once; on client cancellation cancels the worker calls.
class RouterService::ForwardReactor : public grpc::ServerUnaryReactor {
 public:
  void OnCancel() override { cancellation.Cancel(); }
  void OnDone() override { delete this; }
  CallCancellation cancellation;
};

RouterService::RouterService(const MoeEngine* engine, WorkerPool* pool,
                             const RouterServiceOptions& options,
                             RouterMetrics* metrics,
                             server::RpcMetrics* rpc_metrics)
    : engine_(engine),
      pool_(pool),
      options_(options),
      metrics_(metrics),
      rpc_metrics_(rpc_metrics),
      queue_(std::make_unique<common::WorkQueue>(
          options.threads, options.max_queued, "moe-router")) {
  BatcherOptions batching;
  batching.window = options.batch_window;
  batching.max_rows = options.batch_max_rows;
  batching.wire_dtype = options.wire_dtype;
  if (metrics_ != nullptr) {
    batching.on_encode = [this](absl::Duration d) {
      metrics_->RecordStage("encode", d);
    };
    batching.on_rpc = [this](int worker, absl::Duration d, int forwards,
                             int64_t rows) {
      metrics_->RecordWorkerRpc(worker, d, forwards, rows);
    };
  }
  batcher_ = std::make_unique<WorkerBatcher>(pool_, batching);
}

RouterService::~RouterService() { Drain(); }

void RouterService::Drain() {
  queue_.reset();    // every forward has finished
  batcher_.reset();  // and every worker call
}

int64_t RouterService::MaxRequestBytes() const {
  // x in float32 plus replay uniforms, plus framing.
  return options_.max_tokens_per_request * (engine_->config().dim + 2) * 4 +
         (1 << 20);
}

absl::Status RouterService::RunForward(
    const moe::v1::ForwardRequest& request, absl::Time deadline,
    CallCancellation* cancellation, moe::v1::ForwardResponse* response) const {
  c10::InferenceMode guard;
  // Open worker batches may wait for this forward until it dispatches.
  WorkerBatcher::Gating gating(batcher_.get());
  const int64_t d = engine_->config().dim;
  const int64_t max_elements = options_.max_tokens_per_request * d;
  if (!request.has_x()) return absl::InvalidArgumentError("x: missing");
  const moe::v1::DType x_dtype = request.x().dtype();
  if (x_dtype == moe::v1::INT64) {
    return absl::InvalidArgumentError(
        "x: dtype INT64 is not supported (FLOAT32, BFLOAT16, FLOAT16)");
  }
  if (request.x().shape_size() == 3) {
    const int64_t tokens = request.x().shape(0) * request.x().shape(1);
    if (request.x().shape(0) > 0 && request.x().shape(1) > 0 &&
        (request.x().shape(0) > options_.max_tokens_per_request ||
         tokens > options_.max_tokens_per_request)) {
      if (metrics_ != nullptr) metrics_->RecordRejected("too_many_tokens");
      return absl::ResourceExhaustedError(
          absl::StrCat("x: ", request.x().shape(0), " x ", request.x().shape(1),
                       " tokens exceed --max_tokens_per_request=",
                       options_.max_tokens_per_request));
    }
  }
  // x is read in place: `request` outlives the forward.
  MOE_ASSIGN_OR_RETURN(at::Tensor x,
                       proto::ViewTensor(request.x(), "x", max_elements));
  MOE_ASSIGN_OR_RETURN(RoutingOptions options,
                       ToRoutingOptions(request.options(), max_elements));

  RemoteCallOptions call;
  call.deadline = deadline;
  call.worker_timeout = options_.worker_timeout;
  call.on_failure = options_.on_failure;
  RemoteExpertBackend backend(pool_, batcher_.get(), cancellation, call,
                              &gating);
  MOE_ASSIGN_OR_RETURN(ForwardResult r,
                       engine_->ForwardWith(x, options, backend));
  if (metrics_ != nullptr) {
    metrics_->RecordForward(r, backend.failure_reasons());
    metrics_->RecordStages(r.timings, backend.batch_wait(), backend.rpc_wait());
  }

  return FillForwardResponse(r, x_dtype, request.options().return_trace(),
                             response);
}

grpc::ServerUnaryReactor* RouterService::Forward(
    grpc::CallbackServerContext* context,
    const moe::v1::ForwardRequest* request,
    moe::v1::ForwardResponse* response) {
  auto* reactor = new ForwardReactor();
  ++inflight_;
  if (metrics_ != nullptr) metrics_->AddInflight(1);
  const absl::Time start = absl::Now();
  auto finish = [this, reactor, start](const absl::Status& status) {
    const grpc::Status g = proto::ToGrpcStatus(status);
    if (metrics_ != nullptr) {
      metrics_->AddInflight(-1);
      metrics_->RecordRequest(g.error_code(), absl::Now() - start);
    }
    if (rpc_metrics_ != nullptr) {
      rpc_metrics_->Record("/moe.v1.Router/Forward", g.error_code(),
                           absl::Now() - start);
    }
    reactor->Finish(g);
  };
  const absl::Time deadline = absl::FromChrono(context->deadline());
  const bool queued = queue_->TrySubmit([this, context, request, response,
                                         reactor, deadline, finish] {
    absl::Status status;
    if (context->IsCancelled()) {
      status = absl::CancelledError("cancelled before it ran");
    } else if (absl::Now() >= deadline) {
      status = absl::DeadlineExceededError("deadline passed while queued");
    } else {
      status = RunForward(*request, deadline, &reactor->cancellation, response);
    }
    if (!status.ok()) {
      MOE_LOG(WARNING) << "Forward from " << context->peer() << ": " << status;
    }
    --inflight_;
    finish(status);
  });
  if (!queued) {
    --inflight_;
    MOE_LOG(WARNING) << "Forward refused: queue full";
    if (metrics_ != nullptr) metrics_->RecordRejected("queue_full");
    finish(absl::ResourceExhaustedError(
        absl::StrCat("router overloaded: ", options_.max_queued,
                     " requests already queued")));
  }
  return reactor;
}

grpc::ServerUnaryReactor* RouterService::GetModelInfo(
    grpc::CallbackServerContext* context,
    const moe::v1::GetModelInfoRequest* /*request*/, moe::v1::ModelInfo* info) {
  const common::ModelConfig& c = engine_->config();
  info->set_kind(common::ModelKindName(c.kind));
  info->set_dim(c.dim);
  info->set_num_experts(c.num_experts);
  info->set_num_experts_inner(c.num_experts_inner);
  info->set_expert_hidden(c.expert_hidden());
  info->set_threshold_train(c.threshold_train);
  info->set_threshold_eval(c.threshold_eval);
  info->set_capacity_factor_train(c.capacity_factor_train);
  info->set_capacity_factor_eval(c.capacity_factor_eval);
  info->set_balance_loss_coef(c.balance_loss_coef);
  info->set_router_z_loss_coef(c.router_z_loss_coef);
  info->set_config_json(c.ToJson());
  info->set_on_expert_failure(
      options_.on_failure == ExpertFailurePolicy::kDrop ? "drop" : "fail");
  info->set_max_tokens_per_request(options_.max_tokens_per_request);
  info->set_inflight_requests(inflight_.load());
  info->set_metrics_port(metrics_port_.load());
  for (const WorkerSnapshot& w : pool_->Snapshot()) {
    moe::v1::WorkerInfo* wi = info->add_workers();
    wi->set_address(w.address);
    wi->set_up(w.up);
    wi->set_device(w.device);
    for (int64_t e : w.experts) wi->add_expert_ids(e);
  }
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  if (rpc_metrics_ != nullptr) {
    rpc_metrics_->Record("/moe.v1.Router/GetModelInfo", grpc::StatusCode::OK,
                         absl::ZeroDuration());
  }
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace moe::router
