#include "router/service/router_service.h"

#include <grpcpp/support/proto_buffer_reader.h>
#include <grpcpp/support/proto_buffer_writer.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "common/clock.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "proto/grpc_status.h"

namespace moe::router {

// One Forward call: its request and response, and what its forward waits
// on. Finishes once; on client cancellation cancels the worker calls.
class RouterService::ForwardCall : public grpc::ServerUnaryReactor {
 public:
  ForwardCall() : waiter(std::make_shared<ForwardWaiter>()) {}
  void OnCancel() override { waiter->Cancel(); }
  void OnDone() override { delete this; }

  moe::v1::ForwardRequest request;
  moe::v1::ForwardResponse response;
  std::shared_ptr<ForwardWaiter> waiter;
  absl::Time start;
  absl::Time deadline = absl::InfiniteFuture();
  const LayerEngine* layer = nullptr;
  std::string peer;
  AdmissionController::Ticket ticket;
};

namespace {

AdmissionOptions AdmissionFor(const RouterServiceOptions& o) {
  AdmissionOptions a;
  a.max_queued_tokens = o.max_queued_tokens;
  a.max_queue_time = o.max_queue_time;
  a.clock = o.clock;
  return a;
}

// "x [4, 1024, 512] float32" of a request, without touching its data.
std::string DescribeInput(const moe::v1::ForwardRequest& r) {
  std::string shape;
  for (int i = 0; i < r.x().shape_size(); ++i) {
    absl::StrAppend(&shape, i ? ", " : "", r.x().shape(i));
  }
  return absl::StrCat("x [", shape, "] ", moe::v1::DType_Name(r.x().dtype()));
}

int64_t Tokens(const moe::v1::ForwardRequest& r) {
  // Admit() checked the shape against the token limit.
  return r.x().shape_size() == 3 && r.x().shape(0) > 0 && r.x().shape(1) > 0
             ? r.x().shape(0) * r.x().shape(1)
             : 0;
}

}  // namespace

RouterService::RouterService(const ForwardRunner* runner, WorkerPool* pool,
                             const RouterServiceOptions& options,
                             RouterMetrics* metrics)
    : runner_(runner),
      pool_(pool),
      options_(options),
      metrics_(metrics),
      admission_(AdmissionFor(options)),
      queue_(std::make_unique<common::WorkQueue>(
          options.threads, options.max_queued, "moe-router")) {
  BatcherOptions batching;
  batching.window = options.batch_window;
  batching.max_rows = options.batch_max_rows;
  batching.wire_dtype = options.wire_dtype;
  batching.clock = options.clock;
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

absl::Status RouterService::Admit(const grpc::ByteBuffer& bytes,
                                  ForwardCall* call) const {
  grpc::ByteBuffer copy(bytes);
  grpc::ProtoBufferReader reader(&copy);
  if (!call->request.ParseFromZeroCopyStream(&reader)) {
    return absl::InvalidArgumentError(
        "the request could not be parsed as a moe.v1.ForwardRequest "
        "(malformed protobuf)");
  }
  absl::StatusOr<const LayerEngine*> layer = runner_->Admit(call->request);
  if (!layer.ok()) {
    if (metrics_ != nullptr && absl::IsResourceExhausted(layer.status())) {
      metrics_->RecordRejected("too_many_tokens");
    }
    return layer.status();
  }
  call->layer = *layer;
  if (!pool_->ready()) {
    if (metrics_ != nullptr) metrics_->RecordRejected("not_ready");
    return absl::UnavailableError(
        absl::StrCat("the router is not ready: no worker yet for ",
                     pool_->DescribeUncovered()));
  }
  return absl::OkStatus();
}

absl::Status RouterService::RunForward(ForwardCall* call) const {
  // Open worker batches may wait for this forward until it dispatches.
  WorkerBatcher::Gating gating(batcher_.get());
  RemoteCallOptions remote;
  remote.deadline = call->deadline;
  remote.worker_timeout = options_.worker_timeout;
  remote.on_failure = options_.on_failure;
  remote.clock = options_.clock;
  switch (call->request.on_expert_failure()) {
    case moe::v1::ON_FAILURE_DROP:
      remote.on_failure = ExpertFailurePolicy::kDrop;
      break;
    case moe::v1::ON_FAILURE_FAIL:
      remote.on_failure = ExpertFailurePolicy::kFail;
      break;
    case moe::v1::ON_FAILURE_UNSPECIFIED:
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("on_expert_failure: unknown value ",
                       call->request.on_expert_failure()));
  }
  RemoteExpertBackend backend(pool_, batcher_.get(), call->waiter, remote,
                              &gating);
  ForwardResult result;
  const absl::Duration cpu_start = common::ThreadCpuTime();
  MOE_RETURN_IF_ERROR(
      runner_->Run(call->request, backend, &call->response, &result));
  if (metrics_ != nullptr) {
    metrics_->RecordForward(call->layer->index(), result);
    metrics_->RecordStages(result.timings);
    metrics_->RecordForwardCpu(common::ThreadCpuTime() - cpu_start);
  }
  return absl::OkStatus();
}

common::TokenSet::Verdict RouterService::Authenticate(
    const grpc::CallbackServerContext& context) const {
  if (options_.tokens == nullptr) return common::TokenSet::Verdict::kAccepted;
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) return common::TokenSet::Verdict::kMissing;
  return options_.tokens->Check(
      absl::string_view(it->second.data(), it->second.size()));
}

namespace {

absl::Status Unauthenticated(common::TokenSet::Verdict verdict) {
  return absl::UnauthenticatedError(
      verdict == common::TokenSet::Verdict::kMissing
          ? "this router requires a token: send \"authorization: Bearer "
            "<token>\" (moe-client --token_file, RouterClient token=)"
          : "the bearer token is not one this router accepts");
}

}  // namespace

grpc::ServerUnaryReactor* RouterService::Forward(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  auto* call = new ForwardCall();
  call->start = options_.clock->Now();
  call->deadline = absl::FromChrono(context->deadline());
  call->peer = context->peer();
  ++inflight_;
  if (metrics_ != nullptr) metrics_->AddInflight(1);
  auto finish = [this, call, response](absl::Status status) {
    if (status.ok()) {
      bool own = false;
      status = proto::FromGrpcStatus(
          grpc::SerializationTraits<moe::v1::ForwardResponse>::Serialize(
              call->response, response, &own));
    }
    admission_.Finish(&call->ticket, status.ok());
    const absl::Duration took = options_.clock->Now() - call->start;
    // Never the tensors, never a token: the shape, the layer, the outcome.
    if (!status.ok() || options_.log_requests) {
      const std::string line = absl::StrCat(
          "Forward from ", call->peer, " layer \"", call->request.layer(),
          "\" ", DescribeInput(call->request), ": ",
          absl::StatusCodeToString(status.code()), " in ",
          absl::FormatDuration(absl::Trunc(took, absl::Microseconds(100))),
          status.ok() ? "" : absl::StrCat(": ", status.message()),
          status.ok() && call->response.degraded() ? " (degraded)" : "");
      if (status.ok()) {
        MOE_LOG(INFO) << line;
      } else {
        MOE_LOG(WARNING) << line;
      }
    }
    --inflight_;
    if (metrics_ != nullptr) {
      metrics_->AddInflight(-1);
      metrics_->RecordRequest(status.code(), took);
    }
    call->Finish(proto::ToGrpcStatus(status));
  };
  if (const auto verdict = Authenticate(*context);
      verdict != common::TokenSet::Verdict::kAccepted) {
    if (metrics_ != nullptr) metrics_->RecordRejected("unauthenticated");
    finish(Unauthenticated(verdict));
    return call;
  }
  absl::Status admitted = Admit(*request, call);
  if (admitted.ok()) {
    std::string reason;
    admitted = admission_.Admit(Tokens(call->request), call->deadline,
                                &call->ticket, &reason);
    if (!admitted.ok() && metrics_ != nullptr) metrics_->RecordRejected(reason);
  }
  if (!admitted.ok()) {
    finish(admitted);
    return call;
  }
  const bool queued = queue_->TrySubmit([this, context, call, finish] {
    absl::Status status = admission_.Start(&call->ticket);
    if (!status.ok()) {
      if (metrics_ != nullptr) metrics_->RecordRejected("overloaded");
    } else if (context->IsCancelled()) {
      status = absl::CancelledError("cancelled before it ran");
    } else if (options_.clock->Now() >= call->deadline) {
      status = absl::DeadlineExceededError("deadline passed while queued");
    } else {
      status = RunForward(call);
    }
    finish(status);
  });
  if (!queued) {
    if (metrics_ != nullptr) metrics_->RecordRejected("queue_full");
    finish(absl::ResourceExhaustedError(
        absl::StrCat("router overloaded: ", options_.max_queued,
                     " requests already queued; retry later")));
  }
  return call;
}

moe::v1::ModelInfo RouterService::ModelInfo(bool with_workers) const {
  const ModelEngine& model = runner_->model();
  const common::ModelSpec& spec = model.spec();
  moe::v1::ModelInfo info;
  info.set_model_name(spec.name);
  info.set_fingerprint(model.fingerprint());
  info.set_dim(spec.dim);
  const std::vector<std::vector<int64_t>> uncovered = pool_->Uncovered();
  for (size_t l = 0; l < spec.layers.size(); ++l) {
    const common::LayerSpec& layer = spec.layers[l];
    const common::LayerConfig& c = layer.config;
    moe::v1::LayerInfo* li = info.add_layers();
    li->set_name(layer.name);
    li->set_kind(common::LayerKindName(c.kind));
    li->set_num_experts(c.num_experts);
    li->set_num_experts_inner(c.num_experts_inner);
    li->set_expert_hidden(c.expert_hidden());
    li->set_threshold_train(c.threshold_train);
    li->set_threshold_eval(c.threshold_eval);
    li->set_capacity_factor_train(c.capacity_factor_train);
    li->set_capacity_factor_eval(c.capacity_factor_eval);
    li->set_balance_loss_coef(c.balance_loss_coef);
    li->set_router_z_loss_coef(c.router_z_loss_coef);
    li->set_config_json(c.ToJson());
    for (int64_t e : uncovered[l]) li->add_uncovered_experts(e);
  }
  info.set_on_expert_failure(ExpertFailurePolicyName(options_.on_failure));
  info.set_max_tokens_per_request(runner_->limits().max_tokens_per_request);
  info.set_inflight_requests(inflight_.load());
  info.set_metrics_port(metrics_port_.load());
  info.set_ready(pool_->ready());
  info.set_workers_hidden(!with_workers);
  if (!with_workers) return info;
  int index = 0;
  for (const WorkerSnapshot& w : pool_->Snapshot()) {
    moe::v1::WorkerInfo* wi = info.add_workers();
    wi->set_waiting_forwards(batcher_->WaitingForwards(index++));
    wi->set_address(w.address);
    wi->set_up(w.state == WorkerState::kUp);
    wi->set_state(WorkerStateName(w.state));
    wi->set_reason(w.reason);
    wi->set_device(w.device);
    wi->set_compute_dtype(w.compute_dtype);
    wi->set_fingerprint(w.fingerprint);
    wi->set_model_name(w.model_name);
    wi->set_inflight_calls(w.inflight);
    for (size_t l = 0; l < w.experts.size() && l < spec.layers.size(); ++l) {
      if (w.experts[l].empty()) continue;
      moe::v1::WorkerExperts* e = wi->add_experts();
      e->set_layer(spec.layers[l].name);
      for (int64_t id : w.experts[l]) e->add_expert_ids(id);
    }
  }
  return info;
}

grpc::ServerUnaryReactor* RouterService::GetModelInfo(
    grpc::CallbackServerContext* context,
    const moe::v1::GetModelInfoRequest* /*request*/, moe::v1::ModelInfo* info) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const common::TokenSet::Verdict verdict = Authenticate(*context);
  if (verdict == common::TokenSet::Verdict::kUnknown) {
    if (metrics_ != nullptr) metrics_->RecordRejected("unauthenticated");
    reactor->Finish(proto::ToGrpcStatus(Unauthenticated(verdict)));
    return reactor;
  }
  *info = ModelInfo(verdict == common::TokenSet::Verdict::kAccepted);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace moe::router
