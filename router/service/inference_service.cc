#include "router/service/inference_service.h"

#include <memory>
#include <string>
#include <utility>

#include "absl/synchronization/mutex.h"
#include "common/status_macros.h"
#include "moe_version.h"
#include "proto/grpc_status.h"
#include "router/api/open_inference.h"

namespace moe::router {
namespace {

grpc::ServerUnaryReactor* Answer(grpc::CallbackServerContext* context,
                                 const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(proto::ToGrpcStatus(status));
  return reactor;
}

// A call that needs the token, answered with `of(router, request)`.
template <typename Request, typename Response, typename Of>
grpc::ServerUnaryReactor* AnswerWithToken(const RouterService& router,
                                          grpc::CallbackServerContext* context,
                                          const Request& request,
                                          Response* response, Of of) {
  absl::Status status = router.Authorize(*context);
  if (!status.ok()) return Answer(context, status);
  absl::StatusOr<Response> answer = of(router, request);
  if (answer.ok()) *response = *std::move(answer);
  return Answer(context, answer.status());
}

// What `request` asks of the served model: the forward into
// `asked`, the model's name and version; NOT_FOUND for an unknown model,
// INVALID_ARGUMENT naming what is wrong with its inputs or parameters.
absl::Status Translate(const RouterService& router,
                       const inference::ModelInferRequest& request,
                       OipInferRequest* asked, std::string* model_name,
                       std::string* version) {
  const ModelEngine& model = router.runner().model();
  MOE_ASSIGN_OR_RETURN(
      int layer, FindOipModel(model.spec(), model.fingerprint(),
                              request.model_name(), request.model_version()));
  MOE_ASSIGN_OR_RETURN(*asked, FromModelInfer(request, model.spec(), layer));
  *model_name = OipModelName(model.spec(), layer);
  *version = model.fingerprint();
  return absl::OkStatus();
}

}  // namespace

// One ModelInfer call: the translated forward, answered in OIP terms.
class InferenceService::InferCall : public grpc::ServerUnaryReactor {
 public:
  InferCall(grpc::CallbackServerContext* context, common::Clock* clock,
            const inference::ModelInferRequest* request,
            inference::ModelInferResponse* response)
      : job(
            context, clock->Now(), "ModelInfer", Protocol::kOipGrpc,
            [this, clock, request, response]() -> absl::Status {
              MOE_ASSIGN_OR_RETURN(
                  *response,
                  ToModelInfer(&job.response, asked, model_name, version,
                               request->id(), clock->Now() >= job.deadline()));
              return absl::OkStatus();
            },
            [this](absl::Status status) {
              Finish(proto::ToGrpcStatus(status));
            },
            request->id()) {}
  void OnCancel() override { job.Cancel(); }
  void OnDone() override { delete this; }

  RouterService::Job job;
  OipInferRequest asked;
  std::string model_name;
  std::string version;
};

grpc::ServerUnaryReactor* InferenceService::ServerLive(
    grpc::CallbackServerContext* context,
    const inference::ServerLiveRequest* /*request*/,
    inference::ServerLiveResponse* response) {
  response->set_live(true);
  return Answer(context, absl::OkStatus());
}

std::string WhyLayerNotReady(const RouterService& router, int layer) {
  if (!router.pool().ready()) return "the router is not ready";
  const size_t missing = router.pool().Uncovered().ids(layer).size();
  if (missing == 0) return "";
  return absl::StrCat(
      missing, missing == 1 ? " of its experts has" : " of its experts have",
      " no worker up");
}

absl::StatusOr<inference::RepositoryIndexResponse> RepositoryIndexOf(
    const RouterService& router,
    const inference::RepositoryIndexRequest& request) {
  const ModelEngine& model = router.runner().model();
  return OipRepositoryIndex(
      request, model.spec(), model.fingerprint(),
      [&router](int layer) { return WhyLayerNotReady(router, layer); });
}

absl::StatusOr<inference::ModelStatisticsResponse> ModelStatisticsOf(
    const RouterService& router,
    const inference::ModelStatisticsRequest& request) {
  const ModelEngine& model = router.runner().model();
  return OipModelStatistics(
      request, model.spec(), model.fingerprint(),
      [&router](int layer, inference::ModelStatistics* stats) {
        router.statistics().Fill(layer, stats);
      });
}

absl::StatusOr<inference::ModelMetadataResponse> ModelMetadataOf(
    const RouterService& router,
    const inference::ModelMetadataRequest& request) {
  const ModelEngine& model = router.runner().model();
  MOE_ASSIGN_OR_RETURN(
      int layer, FindOipModel(model.spec(), model.fingerprint(), request.name(),
                              request.version()));
  return OipModelMetadata(model.spec(), model.fingerprint(), layer);
}

absl::StatusOr<inference::ModelConfigResponse> ModelConfigOf(
    const RouterService& router, const inference::ModelConfigRequest& request) {
  inference::ModelMetadataRequest metadata;
  metadata.set_name(request.name());
  metadata.set_version(request.version());
  MOE_ASSIGN_OR_RETURN(inference::ModelMetadataResponse m,
                       ModelMetadataOf(router, metadata));
  return OipModelConfig(m);
}

grpc::ServerUnaryReactor* InferenceService::ModelStatistics(
    grpc::CallbackServerContext* context,
    const inference::ModelStatisticsRequest* request,
    inference::ModelStatisticsResponse* response) {
  return AnswerWithToken(*router_, context, *request, response,
                         ModelStatisticsOf);
}

grpc::ServerUnaryReactor* InferenceService::ServerReady(
    grpc::CallbackServerContext* context,
    const inference::ServerReadyRequest* /*request*/,
    inference::ServerReadyResponse* response) {
  response->set_ready(router_->pool().ready());
  return Answer(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* InferenceService::ModelReady(
    grpc::CallbackServerContext* context,
    const inference::ModelReadyRequest* request,
    inference::ModelReadyResponse* response) {
  const ModelEngine& model = router_->runner().model();
  absl::StatusOr<int> layer = FindOipModel(model.spec(), model.fingerprint(),
                                           request->name(), request->version());
  if (!layer.ok()) return Answer(context, layer.status());
  response->set_ready(WhyLayerNotReady(*router_, *layer).empty());
  return Answer(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* InferenceService::RepositoryIndex(
    grpc::CallbackServerContext* context,
    const inference::RepositoryIndexRequest* request,
    inference::RepositoryIndexResponse* response) {
  return AnswerWithToken(*router_, context, *request, response,
                         RepositoryIndexOf);
}

grpc::ServerUnaryReactor* InferenceService::ServerMetadata(
    grpc::CallbackServerContext* context,
    const inference::ServerMetadataRequest* /*request*/,
    inference::ServerMetadataResponse* response) {
  absl::Status status = router_->Authorize(*context);
  if (status.ok()) *response = OipServerMetadata(kVersion);
  return Answer(context, status);
}

grpc::ServerUnaryReactor* InferenceService::ModelMetadata(
    grpc::CallbackServerContext* context,
    const inference::ModelMetadataRequest* request,
    inference::ModelMetadataResponse* response) {
  return AnswerWithToken(*router_, context, *request, response,
                         ModelMetadataOf);
}

grpc::ServerUnaryReactor* InferenceService::ModelConfig(
    grpc::CallbackServerContext* context,
    const inference::ModelConfigRequest* request,
    inference::ModelConfigResponse* response) {
  return AnswerWithToken(*router_, context, *request, response, ModelConfigOf);
}

grpc::ServerUnaryReactor* InferenceService::ModelInfer(
    grpc::CallbackServerContext* context,
    const inference::ModelInferRequest* request,
    inference::ModelInferResponse* response) {
  auto* call = new InferCall(context, router_->clock(), request, response);
  absl::Status status = router_->Authorize(*context);
  if (status.ok()) {
    status = Translate(*router_, *request, &call->asked, &call->model_name,
                       &call->version);
  }
  if (status.ok()) {
    call->job.LimitTime(call->asked.timeout);
    call->job.request = std::move(call->asked.forward);
  }
  router_->Serve(&call->job, std::move(status));
  return call;
}

// One ModelStreamInfer stream: read a request, serve it, write its answer,
// read the next; so at most one request of the stream is in flight. It
// finishes once: after the client's last request (OK), once a read or
// write fails (the client went away), or when the service ends its
// streams (EndStreams: at once while a read waits, which then fails, or
// after the answer being written).
class InferenceService::StreamCall
    : public grpc::ServerBidiReactor<inference::ModelInferRequest,
                                     inference::ModelStreamInferResponse> {
 public:
  StreamCall(grpc::CallbackServerContext* context, InferenceService* service)
      : context_(context), service_(service), router_(service->router_) {}

  // Once registered with the service: starts the stream, or ends it when
  // the service is ending its streams or the token is wrong.
  void Start(bool ending) {
    absl::Status status = ending ? Ending() : router_->Authorize(*context_);
    if (!status.ok()) {
      FinishOnce(proto::ToGrpcStatus(status));
      return;
    }
    Read();
  }
  // The service ends its streams.
  void End() {
    absl::MutexLock lock(&mu_);
    ending_ = true;
    if (reading_) FinishLocked(proto::ToGrpcStatus(Ending()));
  }

  void OnReadDone(bool ok) override {
    {
      absl::MutexLock lock(&mu_);
      reading_ = false;
      if (finished_) return;  // ended while it waited
      if (!ok) {
        // The client's last request was answered.
        FinishLocked(grpc::Status::OK);
        return;
      }
    }
    Serve();
  }
  void OnWriteDone(bool ok) override {
    // The answered job stays until the next request replaces it (its
    // `done`, which started this write, may still be returning).
    if (!ok) {
      FinishOnce(grpc::Status(grpc::StatusCode::CANCELLED,
                              "ModelStreamInfer: the stream closed before an "
                              "answer was written"));
      return;
    }
    {
      absl::MutexLock lock(&mu_);
      if (ending_) {
        FinishLocked(proto::ToGrpcStatus(Ending()));
        return;
      }
    }
    Read();
  }
  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    if (job_ != nullptr) job_->Cancel();
  }
  void OnDone() override {
    {
      absl::MutexLock lock(&service_->mu_);
      service_->streams_.erase(this);
    }
    delete this;
  }

 private:
  static absl::Status Ending() {
    return absl::UnavailableError(
        "ModelStreamInfer: the router is shutting down; open a new stream");
  }
  void Read() {
    {
      absl::MutexLock lock(&mu_);
      if (ending_) {
        FinishLocked(proto::ToGrpcStatus(Ending()));
        return;
      }
      reading_ = true;
    }
    StartRead(&request_);
  }
  void FinishOnce(const grpc::Status& status) {
    absl::MutexLock lock(&mu_);
    FinishLocked(status);
  }
  void FinishLocked(const grpc::Status& status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    finished_ = true;
    Finish(status);
  }

  void Serve() {
    response_.Clear();
    asked_ = OipInferRequest{};
    std::string model_name, version;
    absl::Status status =
        Translate(*router_, request_, &asked_, &model_name, &version);
    common::Clock* clock = router_->clock();
    RouterService::Job* job = nullptr;
    {
      absl::MutexLock lock(&mu_);
      job_ = std::make_unique<RouterService::Job>(
          *context_, clock->Now(), "ModelStreamInfer", Protocol::kOipGrpc,
          [context = context_] { return context->IsCancelled(); },
          [this, clock, model_name, version]() -> absl::Status {
            MOE_ASSIGN_OR_RETURN(
                *response_.mutable_infer_response(),
                ToModelInfer(&current_->response, asked_, model_name, version,
                             request_.id(),
                             clock->Now() >= current_->deadline()));
            return absl::OkStatus();
          },
          [this, model_name, version](absl::Status s) {
            if (!s.ok()) {
              response_.Clear();
              response_.set_error_message(absl::StrCat(
                  absl::StatusCodeToString(s.code()), ": ", s.message()));
              inference::ModelInferResponse* r =
                  response_.mutable_infer_response();
              r->set_model_name(model_name.empty() ? request_.model_name()
                                                   : model_name);
              r->set_model_version(version);
              r->set_id(request_.id());
            }
            StartWrite(&response_);
          },
          request_.id());
      job = job_.get();
    }
    current_ = job;
    if (status.ok()) {
      job->LimitTime(asked_.timeout);
      job->request = std::move(asked_.forward);
    }
    router_->Serve(job, std::move(status));
  }

  grpc::CallbackServerContext* const context_;
  InferenceService* const service_;
  RouterService* const router_;
  inference::ModelInferRequest request_;
  inference::ModelStreamInferResponse response_;
  OipInferRequest asked_;
  absl::Mutex mu_;
  bool reading_ ABSL_GUARDED_BY(mu_) = false;  // a read is pending
  bool ending_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  // The request in flight, or the last one answered. The lock is
  // OnCancel's (any thread); the reads and writes of the stream come one
  // after another, and so do a job's callbacks and its Serve, which read it
  // through `current_`.
  std::unique_ptr<RouterService::Job> job_ ABSL_GUARDED_BY(mu_);
  RouterService::Job* current_ = nullptr;
};

grpc::ServerBidiReactor<inference::ModelInferRequest,
                        inference::ModelStreamInferResponse>*
InferenceService::ModelStreamInfer(grpc::CallbackServerContext* context) {
  auto* stream = new StreamCall(context, this);
  bool ending = false;
  {
    absl::MutexLock lock(&mu_);
    streams_.insert(stream);
    ending = ending_;
  }
  // An EndStreams from now on reaches it through End().
  stream->Start(ending);
  return stream;
}

void InferenceService::EndStreams() {
  // Under the lock, so that no stream is deleted meanwhile (OnDone takes
  // it; gRPC never runs OnDone inline in Finish).
  absl::MutexLock lock(&mu_);
  ending_ = true;
  for (StreamCall* stream : streams_) stream->End();
}

}  // namespace moe::router
