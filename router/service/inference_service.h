// The Open Inference Protocol v2 (inference.GRPCInferenceService) on the
// router's port, beside moe.v1.Router: every MoE layer is a model
// (router/api/open_inference.h has the mapping). ModelInfer is translated
// into a moe.v1 ForwardRequest and served by RouterService::Serve: the same
// token check, admission, queue, forward, logs and metrics as Forward, and
// the same bits of y. ServerLive, ServerReady and ModelReady need no token
// (like grpc.health.v1); ServerMetadata, ModelMetadata, ModelInfer and
// RepositoryIndex (Triton's and MLServer's, read-only) need one when the
// router has tokens, as do ModelStatistics (Triton's statistics
// extension: each layer's counts and durations) and ModelConfig (Triton's
// model configuration, from the metadata). Errors: unknown model or
// version NOT_FOUND, bad input INVALID_ARGUMENT naming the tensor, overload
// RESOURCE_EXHAUSTED, not ready UNAVAILABLE.
#pragma once

#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "inference/open_inference_grpc.grpc.pb.h"
#include "router/service/router_service.h"

namespace moe::router {

// Why layer `layer` of the served model is not ready for inference, or ""
// when it is: the router not ready, or experts of it without a worker up.
// ModelReady, the REST /ready and the repository index all ask this.
std::string WhyLayerNotReady(const RouterService& router, int layer);

// The repository index of the served model as `request` asks for it
// (router/api/open_inference.h, OipRepositoryIndex), for both edges.
absl::StatusOr<inference::RepositoryIndexResponse> RepositoryIndexOf(
    const RouterService& router,
    const inference::RepositoryIndexRequest& request);

// A model's metadata, and Triton's configuration of it (router/api/
// open_inference.h): NOT_FOUND for an unknown model or version; for both
// edges.
absl::StatusOr<inference::ModelMetadataResponse> ModelMetadataOf(
    const RouterService& router,
    const inference::ModelMetadataRequest& request);
absl::StatusOr<inference::ModelConfigResponse> ModelConfigOf(
    const RouterService& router, const inference::ModelConfigRequest& request);

// The statistics extension's answer for `request` (router/api/
// open_inference.h, OipModelStatistics, over the router's LayerStatistics),
// for both edges.
absl::StatusOr<inference::ModelStatisticsResponse> ModelStatisticsOf(
    const RouterService& router,
    const inference::ModelStatisticsRequest& request);

class InferenceService final
    : public inference::GRPCInferenceService::CallbackService {
 public:
  // `router` must outlive the service.
  explicit InferenceService(RouterService* router) : router_(router) {}

  grpc::ServerUnaryReactor* ServerLive(
      grpc::CallbackServerContext* context,
      const inference::ServerLiveRequest* request,
      inference::ServerLiveResponse* response) override;
  grpc::ServerUnaryReactor* ServerReady(
      grpc::CallbackServerContext* context,
      const inference::ServerReadyRequest* request,
      inference::ServerReadyResponse* response) override;
  grpc::ServerUnaryReactor* ModelReady(
      grpc::CallbackServerContext* context,
      const inference::ModelReadyRequest* request,
      inference::ModelReadyResponse* response) override;
  grpc::ServerUnaryReactor* ServerMetadata(
      grpc::CallbackServerContext* context,
      const inference::ServerMetadataRequest* request,
      inference::ServerMetadataResponse* response) override;
  grpc::ServerUnaryReactor* ModelMetadata(
      grpc::CallbackServerContext* context,
      const inference::ModelMetadataRequest* request,
      inference::ModelMetadataResponse* response) override;
  grpc::ServerUnaryReactor* ModelInfer(
      grpc::CallbackServerContext* context,
      const inference::ModelInferRequest* request,
      inference::ModelInferResponse* response) override;
  grpc::ServerUnaryReactor* RepositoryIndex(
      grpc::CallbackServerContext* context,
      const inference::RepositoryIndexRequest* request,
      inference::RepositoryIndexResponse* response) override;
  grpc::ServerUnaryReactor* ModelConfig(
      grpc::CallbackServerContext* context,
      const inference::ModelConfigRequest* request,
      inference::ModelConfigResponse* response) override;
  grpc::ServerUnaryReactor* ModelStatistics(
      grpc::CallbackServerContext* context,
      const inference::ModelStatisticsRequest* request,
      inference::ModelStatisticsResponse* response) override;
  // Triton's streaming inference: the token checked once, when the stream
  // opens (UNAUTHENTICATED ends it); then each request served as soon as it
  // is read, as ModelInfer serves one (admission, queue, logs, metrics,
  // statistics under protocol "oip_grpc"), up to 32 of a stream at once,
  // and answered on the stream in the requests' order. A request that
  // fails is answered with its error_message ("INVALID_ARGUMENT: ...") and
  // its id, and the stream goes on. The stream's deadline bounds each
  // request (and a request's own `timeout` parameter, as in ModelInfer).
  grpc::ServerBidiReactor<inference::ModelInferRequest,
                          inference::ModelStreamInferResponse>*
  ModelStreamInfer(grpc::CallbackServerContext* context) override;

  // The server is shutting down: every stream ends UNAVAILABLE ("open a
  // new stream") at once when it waits for its next request, else once
  // the requests it has in flight are answered; a stream opened later
  // ends so at once. Call when the server stops taking calls (so that a client
  // holding a stream moves to another router, rather than being served
  // on until the server's grace cuts its request).
  void EndStreams();

 private:
  class InferCall;
  class StreamCall;

  RouterService* const router_;
  absl::Mutex mu_;
  bool ending_ ABSL_GUARDED_BY(mu_) = false;
  absl::flat_hash_set<StreamCall*> streams_ ABSL_GUARDED_BY(mu_);
};

}  // namespace moe::router
