#include "router/service/router_service.h"

#include <grpcpp/support/proto_buffer_reader.h>
#include <grpcpp/support/proto_buffer_writer.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/clock.h"
#include "common/logging.h"
#include "common/request_id.h"
#include "common/status_macros.h"
#include "proto/grpc_status.h"

namespace moe::router {

namespace {

// The caller's metadata `key` ("x-request-id", "traceparent"; empty: none).
absl::string_view CallerMetadata(const grpc::CallbackServerContext& context,
                                 const char* key) {
  const auto& metadata = context.client_metadata();
  auto it = metadata.find(key);
  if (it == metadata.end()) return {};
  return absl::string_view(it->second.data(), it->second.size());
}

}  // namespace

RouterService::Job::Job(grpc::CallbackServerContext* context, absl::Time start,
                        const char* method, Protocol protocol,
                        std::function<absl::Status()> answer,
                        std::function<void(absl::Status)> done,
                        absl::string_view body_id)
    : Job(
          start, absl::FromChrono(context->deadline()), context->peer(),
          common::RequestIdOrNew(
              CallerMetadata(*context, common::kRequestIdKey), body_id,
              CallerMetadata(*context, common::kTraceparentKey)),
          std::string(CallerMetadata(*context, common::kTraceparentKey)),
          method, protocol, [context] { return context->IsCancelled(); },
          std::move(answer), std::move(done)) {
  context->AddInitialMetadata(common::kRequestIdKey, request_id_);
}

RouterService::Job::Job(const grpc::CallbackServerContext& stream,
                        absl::Time start, const char* method, Protocol protocol,
                        std::function<bool()> cancelled,
                        std::function<absl::Status()> answer,
                        std::function<void(absl::Status)> done,
                        absl::string_view body_id)
    : Job(start, absl::FromChrono(stream.deadline()), stream.peer(),
          common::RequestIdOrNew(
              body_id, CallerMetadata(stream, common::kRequestIdKey),
              CallerMetadata(stream, common::kTraceparentKey)),
          std::string(CallerMetadata(stream, common::kTraceparentKey)), method,
          protocol, std::move(cancelled), std::move(answer), std::move(done)) {}

RouterService::Job::Job(absl::Time start, absl::Time deadline, std::string peer,
                        std::string request_id, std::string traceparent,
                        const char* method, Protocol protocol,
                        std::function<bool()> cancelled,
                        std::function<absl::Status()> answer,
                        std::function<void(absl::Status)> done)
    : cancelled_(std::move(cancelled)),
      waiter_(std::make_shared<ForwardWaiter>()),
      start_(start),
      deadline_(deadline),
      peer_(std::move(peer)),
      request_id_(std::move(request_id)),
      traceparent_(std::move(traceparent)),
      method_(method),
      protocol_(protocol),
      answer_(std::move(answer)),
      done_(std::move(done)) {}

// One moe.v1 Forward call: its job, answered as serialized bytes. Finishes
// once; on client cancellation cancels the worker calls.
class RouterService::ForwardCall : public grpc::ServerUnaryReactor {
 public:
  ForwardCall(grpc::CallbackServerContext* context, absl::Time start,
              grpc::ByteBuffer* response_bytes)
      : job(
            context, start, "Forward", Protocol::kMoeV1,
            [this, response_bytes] {
              bool own = false;
              return proto::FromGrpcStatus(
                  grpc::SerializationTraits<
                      moe::v1::ForwardResponse>::Serialize(job.response,
                                                           response_bytes,
                                                           &own));
            },
            [this](absl::Status status) {
              Finish(proto::ToGrpcStatus(status));
            }) {}
  void OnCancel() override { job.Cancel(); }
  void OnDone() override { delete this; }

  Job job;
};

namespace {

constexpr int kRefusalLogsPerSecond = 10;

AdmissionOptions AdmissionFor(const RouterServiceOptions& o) {
  AdmissionOptions a;
  a.max_queued_tokens = o.max_queued_tokens;
  a.max_queue_time = o.max_queue_time;
  a.clock = o.clock;
  return a;
}

// "x [4, 1024, 512] FLOAT32" of a request, without touching its data; "no
// x" when it has none (not sent, or not parsed).
std::string DescribeInput(const moe::v1::ForwardRequest& r) {
  if (!r.has_x()) return "no x";
  std::string shape;
  for (int i = 0; i < r.x().shape_size() && i < 8; ++i) {
    absl::StrAppend(&shape, i ? ", " : "", r.x().shape(i));
  }
  if (r.x().shape_size() > 8) absl::StrAppend(&shape, ", ...");
  return absl::StrCat("x [", shape, "] ",
                      moe::v1::DType_IsValid(r.x().dtype())
                          ? moe::v1::DType_Name(r.x().dtype())
                          : absl::StrCat("dtype ", r.x().dtype()));
}

// Refusals (overload, tokens, readiness) come in floods: their log lines
// are rate-limited, with a count of what was left out.
bool IsRefusal(absl::StatusCode code) {
  return code == absl::StatusCode::kResourceExhausted ||
         code == absl::StatusCode::kUnauthenticated ||
         code == absl::StatusCode::kUnavailable;
}

common::LogRateLimiter& RefusalLogs() {
  static common::LogRateLimiter* limiter =
      new common::LogRateLimiter(kRefusalLogsPerSecond);
  return *limiter;
}

absl::Status Parse(const grpc::ByteBuffer& bytes,
                   moe::v1::ForwardRequest* request) {
  grpc::ByteBuffer copy(bytes);
  grpc::ProtoBufferReader reader(&copy);
  if (!request->ParseFromZeroCopyStream(&reader)) {
    return absl::InvalidArgumentError(
        "the request could not be parsed as a moe.v1.ForwardRequest "
        "(malformed protobuf)");
  }
  return absl::OkStatus();
}

absl::Status Unauthenticated(common::TokenSet::Verdict verdict) {
  return absl::UnauthenticatedError(
      verdict == common::TokenSet::Verdict::kMissing
          ? "this router requires a token: send \"authorization: Bearer "
            "<token>\" (moe-client --token_file, RouterClient token=)"
          : "the bearer token is not one this router accepts");
}

// The request's own failure policy, or the router's.
absl::StatusOr<ExpertFailurePolicy> FailurePolicy(
    moe::v1::ExpertFailurePolicy requested, ExpertFailurePolicy router) {
  switch (requested) {
    case moe::v1::ON_FAILURE_DROP:
      return ExpertFailurePolicy::kDrop;
    case moe::v1::ON_FAILURE_FAIL:
      return ExpertFailurePolicy::kFail;
    case moe::v1::ON_FAILURE_UNSPECIFIED:
      return router;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("on_expert_failure: unknown value ", requested));
  }
}

}  // namespace

absl::Status RouterServiceOptions::Validate() const {
  if (threads < 1) return absl::InvalidArgumentError("--threads must be >= 1");
  if (batch_window < absl::ZeroDuration() || batch_window > absl::Seconds(60)) {
    return absl::InvalidArgumentError(
        "--batch_window_us must be in [0, 60000000]");
  }
  if (batch_max_rows < 1) {
    return absl::InvalidArgumentError("--batch_max_tokens must be >= 1");
  }
  if (inline_max_tokens < 0) {
    return absl::InvalidArgumentError("--inline_max_tokens must be >= 0");
  }
  if (max_queued_tokens < 1 || max_queue_time < absl::Milliseconds(1)) {
    return absl::InvalidArgumentError(
        "--max_queued_tokens and --max_queue_ms must be >= 1");
  }
  if (worker_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--worker_timeout_ms must be >= 1");
  }
  if (!common::IsFloatingPoint(wire_dtype) ||
      wire_dtype == common::DType::kFloat64) {
    return absl::InvalidArgumentError(
        "--wire_dtype must be float32, bfloat16 or float16");
  }
  return absl::OkStatus();
}

std::string RouterServiceOptions::Describe() const {
  return absl::StrCat(
      "on_expert_failure=", ExpertFailurePolicyName(on_failure), ", wire ",
      common::DTypeName(wire_dtype), ", ",
      batch_window > absl::ZeroDuration()
          ? absl::StrCat("batch window ", absl::FormatDuration(batch_window))
          : std::string("no batching"),
      ", ", threads, " forward threads",
      inline_max_tokens > 0
          ? absl::StrCat(", inline up to ", inline_max_tokens, " tokens")
          : std::string(", never inline"),
      join_open_batches ? "" : ", small segments to the least busy copy",
      tokens != nullptr ? ", tokens required" : "");
}

absl::StatusOr<std::unique_ptr<RouterService>> RouterService::Create(
    const ForwardRunner* runner, WorkerPool* pool,
    const RouterServiceOptions& options, RouterMetrics* metrics) {
  MOE_RETURN_IF_ERROR(options.Validate());
  if (options.tokens == nullptr) {
    MOE_LOG(WARNING) << "no --auth_tokens_file: every caller that reaches "
                        "the router may call Forward";
  } else {
    MOE_LOG(INFO) << "Forward and GetModelInfo require one of the "
                  << options.tokens->size() << " token(s) of "
                  << options.tokens->path();
  }
  return std::unique_ptr<RouterService>(
      new RouterService(runner, pool, options, metrics));
}

RouterService::RouterService(const ForwardRunner* runner, WorkerPool* pool,
                             const RouterServiceOptions& options,
                             RouterMetrics* metrics)
    : runner_(runner),
      pool_(pool),
      options_(options),
      metrics_(*metrics),
      admission_(AdmissionFor(options)),
      statistics_(static_cast<int>(runner->model().spec().layers.size())),
      queue_(std::make_unique<common::WorkQueue>(
          options.threads, options.max_queued, "moe-router")) {
  BatcherOptions batching;
  batching.window = options.batch_window;
  batching.max_rows = options.batch_max_rows;
  batching.wire_dtype = options.wire_dtype;
  batching.clock = options.clock;
  batching.tracer = options.tracer;
  batching.on_encode = [this](absl::Duration d) {
    metrics_.RecordStage(RouterStage::kEncode, d);
  };
  batching.on_rpc = [this](int worker, absl::Duration d, int forwards,
                           int64_t rows) {
    metrics_.RecordWorkerRpc(worker, d, forwards, rows);
  };
  batcher_ = std::make_unique<WorkerBatcher>(pool_, batching);
}

RouterService::~RouterService() { Drain(); }

void RouterService::Drain() {
  queue_.reset();  // every queued forward has finished
  // A forward running inline on a gRPC thread finishes too.
  while (inline_running_.load()) absl::SleepFor(absl::Milliseconds(1));
  batcher_.reset();  // and every worker call
}

absl::Status RouterService::AwaitReady(
    absl::Duration timeout, const std::function<bool()>& interrupted) const {
  const absl::Time start = options_.clock->Now();
  absl::Time last_log = start;
  while (!pool_->ready()) {
    const absl::Time now = options_.clock->Now();
    if (timeout > absl::ZeroDuration() && now - start > timeout) {
      return absl::UnavailableError(absl::StrCat(
          "no healthy worker after ", absl::FormatDuration(timeout), " for ",
          pool_->DescribeUncovered()));
    }
    if (now - last_log > absl::Seconds(5)) {
      MOE_LOG(INFO) << "waiting for workers: no worker yet for "
                    << pool_->DescribeUncovered();
      last_log = now;
    }
    if (interrupted()) {
      return absl::CancelledError(
          "shutdown requested while waiting for "
          "workers");
    }
  }
  return absl::OkStatus();
}

absl::Status RouterService::Admit(Job* job) const {
  absl::StatusOr<AdmittedForward> admitted = runner_->Admit(job->request);
  if (!admitted.ok()) {
    if (absl::IsResourceExhausted(admitted.status())) {
      metrics_.RecordRejected(RejectReason::kTooManyTokens);
    }
    return admitted.status();
  }
  job->admitted_ = *admitted;
  if (!pool_->ready()) {
    metrics_.RecordRejected(RejectReason::kNotReady);
    return absl::UnavailableError(
        absl::StrCat("the router is not ready: no worker yet for ",
                     pool_->DescribeUncovered()));
  }
  RejectReason reason;
  absl::Status status = admission_.Admit(
      job->admitted_.tokens(), job->deadline_, &job->ticket_, &reason);
  if (!status.ok()) metrics_.RecordRejected(reason);
  return status;
}

namespace {

// The wall time of a forward's stages (ForwardTimings) as attributes of
// its span, in microseconds.
void AddStages(const ForwardTimings& t, common::Span* span) {
  for (const auto& [key, d] :
       {std::pair<const char*, absl::Duration>{"moe.pre_us", t.pre},
        {"moe.gate_us", t.gate},
        {"moe.plan_us", t.plan},
        {"moe.experts_us", t.experts},
        {"moe.batch_wait_us", t.batch_wait},
        {"moe.rpc_wait_us", t.rpc_wait},
        {"moe.combine_us", t.combine}}) {
    span->attributes.emplace_back(key, absl::ToInt64Microseconds(d));
  }
}

// The forward's phases (ForwardTimings::Marks) as spans of their own,
// children of its span `parent`, which started when the call arrived:
// moe.queue (from arrival to the engine: parsing, admission, waiting for a
// forward thread), moe.pre, moe.gate, moe.plan, moe.experts (the worker
// calls, whose client spans overlap it, their waits as attributes, and
// combining their answers as they come) and moe.post; none when the
// forward did not run through.
void EndForwardPhaseSpans(const common::Tracer& tracer,
                          const common::Span& parent, const ForwardTimings& t) {
  const ForwardTimings::Marks& m = t.marks;
  if (!(m.pre >= parent.start && m.end >= m.pre)) return;
  common::EndPhaseSpans(
      tracer, parent,
      {{"moe.queue", parent.start, m.pre},
       {"moe.pre", m.pre, m.gate},
       {"moe.gate", m.gate, m.plan},
       {"moe.plan", m.plan, m.experts},
       {"moe.experts",
        m.experts,
        m.post,
        {{"moe.batch_wait_us", absl::ToInt64Microseconds(t.batch_wait)},
         {"moe.rpc_wait_us", absl::ToInt64Microseconds(t.rpc_wait)}}},
       {"moe.post", m.post, m.end}});
}

}  // namespace

absl::Status RouterService::RunForward(Job* job) const {
  // Open worker batches may wait for this forward until it dispatches.
  WorkerBatcher::Gating gating(batcher_.get());
  RemoteCallOptions remote;
  remote.deadline = job->deadline_;
  remote.worker_timeout = options_.worker_timeout;
  remote.clock = options_.clock;
  remote.request_id = job->request_id_;
  remote.join_open_batches = options_.join_open_batches;
  if (job->span_) remote.traceparent = common::TraceparentOf(*job->span_);
  MOE_ASSIGN_OR_RETURN(
      remote.on_failure,
      FailurePolicy(job->request.on_expert_failure(), options_.on_failure));
  RemoteExpertBackend backend(pool_, batcher_.get(), job->waiter_, remote,
                              &gating);
  ForwardResult result;
  const absl::Duration cpu_start = common::ThreadCpuTime();
  MOE_RETURN_IF_ERROR(
      runner_->Run(job->admitted_, backend, &job->response, &result));
  metrics_.RecordForward(job->admitted_.layer->index(), result);
  metrics_.RecordStages(result.timings);
  job->timings_ = result.timings;
  job->ran_ = true;
  metrics_.RecordForwardCpu(common::ThreadCpuTime() - cpu_start);
  if (job->span_) {
    AddStages(result.timings, &*job->span_);
    EndForwardPhaseSpans(*options_.tracer, *job->span_, result.timings);
  }
  return absl::OkStatus();
}

absl::Status RouterService::Authorize(
    const grpc::CallbackServerContext& context) const {
  return Refused(Authenticate(context));
}

absl::Status RouterService::Authorize(absl::string_view authorization) const {
  if (options_.tokens == nullptr) return absl::OkStatus();
  return Refused(authorization.empty() ? common::TokenSet::Verdict::kMissing
                                       : options_.tokens->Check(authorization));
}

absl::Status RouterService::AuthorizeHeaders(
    absl::string_view path, absl::string_view authorization,
    absl::string_view request_id, absl::string_view traceparent) const {
  const char* method;
  Protocol protocol;
  if (path == "/moe.v1.Router/Forward") {
    method = "Forward";
    protocol = Protocol::kMoeV1;
  } else if (path == "/inference.GRPCInferenceService/ModelInfer") {
    method = "ModelInfer";
    protocol = Protocol::kOipGrpc;
  } else {
    return absl::OkStatus();  // small messages: the handler decides
  }
  absl::Status status = Authorize(authorization);
  if (status.ok()) return status;
  // gRPC sends no metadata with a refusal at this hook, so the request ID
  // (the caller's, or the one made for the log) travels in the message, as
  // the clients write it into their errors (they then add nothing).
  const std::string id = common::RequestIdOrNew(request_id, {}, traceparent);
  int64_t suppressed = 0;
  if (RefusalLogs().Allow(&suppressed)) {
    MOE_LOG_WITH(WARNING, "request_id", id)
        << method << " " << id << " refused at its headers, message unread: "
        << absl::StatusCodeToString(status.code()) << ": " << status.message()
        << common::SuppressedNote(suppressed);
  }
  metrics_.RecordRequest(protocol, status.code(), absl::ZeroDuration());
  return absl::Status(
      status.code(), absl::StrCat(status.message(), common::RequestIdNote(id)));
}

absl::Status RouterService::Refused(common::TokenSet::Verdict verdict) const {
  if (verdict == common::TokenSet::Verdict::kAccepted) {
    return absl::OkStatus();
  }
  metrics_.RecordRejected(RejectReason::kUnauthenticated);
  return Unauthenticated(verdict);
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

void RouterService::Finish(Job* job, absl::Status status) {
  absl::Duration answering;
  if (status.ok()) {
    const absl::Time start = absl::Now();
    status = job->answer_();
    answering = absl::Now() - start;
  }
  admission_.Finish(&job->ticket_, status.ok());
  const absl::Time now = options_.clock->Now();
  const absl::Duration took = now - job->start_;
  if (job->admitted_.layer != nullptr) {
    RecordStatistics(*job, status.ok(), now, took, answering);
  }
  // Never the tensors, never a token: the shape, the layer (quoted and
  // cut: a client sent it), the outcome.
  if (!status.ok() || options_.log_requests) {
    int64_t suppressed = 0;
    if (status.ok() || !IsRefusal(status.code()) ||
        RefusalLogs().Allow(&suppressed)) {
      const std::string line = absl::StrCat(
          job->method_, " ", job->request_id_, " from ", job->peer_, " layer ",
          common::QuoteForLog(job->request.layer()), " ",
          DescribeInput(job->request), ": ",
          absl::StatusCodeToString(status.code()), " in ",
          absl::FormatDuration(absl::Trunc(took, absl::Microseconds(100))),
          status.ok() ? "" : absl::StrCat(": ", status.message()),
          status.ok() && job->response.degraded() ? " (degraded)" : "",
          common::SuppressedNote(suppressed));
      if (status.ok()) {
        MOE_LOG_WITH(INFO, "request_id", job->request_id_) << line;
      } else {
        MOE_LOG_WITH(WARNING, "request_id", job->request_id_) << line;
      }
    }
  }
  if (job->span_) EndSpan(job, status);
  --inflight_;
  metrics_.AddInflight(-1);
  metrics_.RecordRequest(job->protocol_, status.code(), took);
  job->done_(std::move(status));
}

void RouterService::RecordStatistics(const Job& job, bool ok, absl::Time now,
                                     absl::Duration took,
                                     absl::Duration answering) {
  LayerStatistics::Outcome outcome;
  outcome.ok = ok;
  outcome.batch_size = job.admitted_.x.shape[0];
  outcome.total = took;
  outcome.end = now;
  if (ok && job.ran_) {
    // The engine marks its phases on absl::Now, as `answering` is timed.
    const ForwardTimings::Marks& m = job.timings_.marks;
    outcome.queue = std::max(absl::ZeroDuration(), m.pre - job.start_);
    outcome.input = m.experts - m.pre;
    outcome.infer = m.post - m.experts;
    outcome.output = m.end - m.post + answering;
  }
  statistics_.Record(job.admitted_.layer->index(), outcome);
}

void RouterService::EndSpan(Job* job, const absl::Status& status) {
  common::Span& span = *job->span_;
  span.end = options_.clock->Now();
  auto add = [&span](const char* key, common::SpanAttribute value) {
    span.attributes.emplace_back(key, std::move(value));
  };
  if (job->protocol_ == Protocol::kOipRest) {
    add("http.request.method", std::string("POST"));
    add("http.route", std::string("/v2/models/{model_name}/infer"));
  } else {
    add("rpc.system", std::string("grpc"));
    add("rpc.grpc.status_code", static_cast<int64_t>(status.code()));
  }
  add("client.address", job->peer_);
  add("moe.request_id", job->request_id_);
  add("moe.layer", job->request.layer());
  const auto& shape = job->request.x().shape();
  int64_t tokens = shape.empty() ? 0 : 1;
  for (int i = 0; i + 1 < shape.size(); ++i) tokens *= shape[i];
  add("moe.tokens", tokens);
  if (status.ok()) {
    int64_t kept = 0;
    for (int64_t k : job->response.stats().kept_per_expert()) kept += k;
    add("moe.kept_assignments", kept);
    add("moe.degraded", job->response.degraded());
  } else {
    span.error = true;
    span.status_message = absl::StrCat(absl::StatusCodeToString(status.code()),
                                       ": ", status.message());
  }
  options_.tracer->End(*std::move(job->span_));
  job->span_.reset();
}

grpc::ServerUnaryReactor* RouterService::Forward(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  auto* call = new ForwardCall(context, options_.clock->Now(), response);
  // The token before the bytes: nothing of an unauthenticated caller is
  // parsed.
  absl::Status status = Authorize(*context);
  if (status.ok()) status = Parse(*request, &call->job.request);
  Serve(&call->job, std::move(status));
  return call;
}

namespace {

// The span name of a protocol's forward (OpenTelemetry's conventions:
// "service/method" for gRPC, "METHOD route" for HTTP).
const char* SpanName(Protocol protocol) {
  switch (protocol) {
    case Protocol::kMoeV1:
      return "moe.v1.Router/Forward";
    case Protocol::kOipGrpc:
      return "inference.GRPCInferenceService/ModelInfer";
    case Protocol::kOipRest:
      return "POST /v2/models/{model_name}/infer";
  }
  return "forward";
}

}  // namespace

void RouterService::Serve(Job* job, absl::Status edge_status) {
  if (options_.tracer != nullptr) {
    job->span_ = options_.tracer->Start(SpanName(job->protocol_),
                                        job->traceparent_, job->start_);
  }
  ++inflight_;
  metrics_.AddInflight(1);
  if (edge_status.ok()) edge_status = Admit(job);
  if (!edge_status.ok()) {
    Finish(job, std::move(edge_status));
    return;
  }
  auto run = [this, job] {
    RejectReason reason;
    absl::Status status = admission_.Start(&job->ticket_, &reason);
    if (!status.ok()) {
      metrics_.RecordRejected(reason);
    } else if (job->cancelled_()) {
      status = absl::CancelledError("cancelled before it ran");
    } else if (options_.clock->Now() >= job->deadline_) {
      status = absl::DeadlineExceededError("deadline passed while queued");
    } else {
      status = RunForward(job);
    }
    Finish(job, std::move(status));
  };
  if (RunInline(job->admitted_.tokens())) {
    metrics_.RecordInlineForward();
    run();
    inline_running_.store(false);
    return;
  }
  if (!queue_->TrySubmit(std::move(run))) {
    metrics_.RecordRejected(RejectReason::kQueueFull);
    Finish(job, absl::ResourceExhaustedError(
                    absl::StrCat("router overloaded: ", options_.max_queued,
                                 " requests already queued; retry later")));
  }
}

bool RouterService::RunInline(int64_t tokens) {
  // One at a time: the forward waits for its workers on this gRPC thread,
  // and their answers need another one (gRPC's callback threads are few:
  // 2 on a 2-core machine).
  return tokens <= options_.inline_max_tokens && queue_->load() == 0 &&
         !inline_running_.exchange(true);
}

std::string RouterService::Describe() const {
  const common::ModelSpec& spec = runner_->model().spec();
  std::vector<std::string> addresses;
  for (int i = 0; i < pool_->size(); ++i)
    addresses.push_back(pool_->address(i));
  const int metrics_port = metrics_port_.load();
  return absl::StrCat(
      "model \"", spec.name, "\" ", runner_->model().fingerprint(), ", ",
      spec.layers.size(), " layer(s), dim ", spec.dim, ", on ",
      addresses.size(), " workers [", absl::StrJoin(addresses, ","), "], ",
      options_.Describe(),
      metrics_port > 0 ? absl::StrCat(", /metrics on port ", metrics_port)
                       : "");
}

moe::v1::ModelInfo RouterService::ModelInfo(bool with_workers) const {
  const ModelEngine& model = runner_->model();
  const common::ModelSpec& spec = model.spec();
  moe::v1::ModelInfo info;
  info.set_model_name(spec.name);
  info.set_fingerprint(model.fingerprint());
  info.set_dim(spec.dim);
  const common::ExpertSet uncovered = pool_->Uncovered();
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
    for (int64_t e : uncovered.ids(l)) li->add_uncovered_experts(e);
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
    for (size_t l = 0; l < spec.layers.size(); ++l) {
      if (w.experts.ids(l).empty()) continue;
      moe::v1::WorkerExperts* e = wi->add_experts();
      e->set_layer(spec.layers[l].name);
      for (int64_t id : w.experts.ids(l)) e->add_expert_ids(id);
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
    metrics_.RecordRejected(RejectReason::kUnauthenticated);
    reactor->Finish(proto::ToGrpcStatus(Unauthenticated(verdict)));
    return reactor;
  }
  *info = ModelInfo(verdict == common::TokenSet::Verdict::kAccepted);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace moe::router
