#include "router/service/inference_service.h"

#include <string>
#include <utility>

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
  const ModelEngine& model = router_->runner().model();
  absl::Status status = router_->Authorize(*context);
  if (status.ok()) {
    absl::StatusOr<int> layer =
        FindOipModel(model.spec(), model.fingerprint(), request->model_name(),
                     request->model_version());
    absl::StatusOr<OipInferRequest> asked =
        layer.ok() ? FromModelInfer(*request, model.spec(), *layer)
                   : absl::StatusOr<OipInferRequest>(layer.status());
    if (asked.ok()) {
      call->asked = std::move(*asked);
      call->job.LimitTime(call->asked.timeout);
      call->job.request = std::move(call->asked.forward);
      call->model_name = OipModelName(model.spec(), *layer);
      call->version = model.fingerprint();
    }
    status = asked.status();
  }
  router_->Serve(&call->job, std::move(status));
  return call;
}

}  // namespace moe::router
