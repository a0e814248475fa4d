// ForwardRunner: one moe.v1.Forward request to its response, whatever runs
// the experts. Admit() finds the layer and checks the request once (the
// input's dtype, shape and size against the layer and the limits, without
// decoding it); Run() decodes x in place, translates the options, runs the
// layer engine over the given backend and builds the response. The router
// service admits before it queues and runs on a router thread with the
// remote backend; moe-run does both at once with the in-process one; so
// both answer alike to the same request.
//
// Example:
//   MOE_ASSIGN_OR_RETURN(AdmittedForward admitted, runner.Admit(request));
//   MOE_RETURN_IF_ERROR(runner.Run(admitted, backend, &response));
//
// Thread-safety: const methods may be called concurrently.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "moe/v1/router.pb.h"
#include "proto/tensor_codec.h"
#include "router/engine/expert_backend.h"
#include "router/engine/model_engine.h"

namespace moe::router {

struct ForwardLimits {
  // Largest batch x tokens of one request (RESOURCE_EXHAUSTED above).
  int64_t max_tokens_per_request = 65536;
};

// A request that passed Admit(). `request` must outlive it.
struct AdmittedForward {
  const moe::v1::ForwardRequest* request = nullptr;
  const LayerEngine* layer = nullptr;
  proto::TensorView x;  // checked: [batch, tokens, dim] of a float dtype
  int64_t tokens() const { return x.shape[0] * x.shape[1]; }
};

class ForwardRunner {
 public:
  // `model` must outlive the runner.
  ForwardRunner(const ModelEngine* model, const ForwardLimits& limits);

  const ModelEngine& model() const { return *model_; }
  const ForwardLimits& limits() const { return limits_; }

  // The layer `request` names, and its x checked without decoding: NOT_FOUND
  // for an unknown layer; INVALID_ARGUMENT naming the field for a missing
  // x, a dtype other than FLOAT32/BFLOAT16/FLOAT16, data that does not
  // match the shape, or a shape the layer does not take
  // (LayerEngine::ValidateInputShape); RESOURCE_EXHAUSTED over
  // max_tokens_per_request.
  absl::StatusOr<AdmittedForward> Admit(
      const moe::v1::ForwardRequest& request) const;

  // Runs an admitted request on `backend` and fills `response`; `result`
  // (may be null) receives the engine's result, for metrics.
  // INVALID_ARGUMENT naming the field (values that are not finite, bad
  // options), or the backend's error.
  absl::Status Run(const AdmittedForward& admitted, ExpertBackend& backend,
                   moe::v1::ForwardResponse* response,
                   ForwardResult* result = nullptr) const;

  // Largest ForwardRequest the limits allow, in bytes (x in float32 and
  // replay uniforms, plus framing): the server's message size limit.
  int64_t MaxRequestBytes() const;

 private:
  const ModelEngine* model_;
  const ForwardLimits limits_;
};

}  // namespace moe::router
