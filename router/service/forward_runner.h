// ForwardRunner: one moe.v1.Forward request to its response, whatever runs
// the experts: find the layer, check the request against the limits, decode
// x in place, translate the options, run the layer engine over the given
// backend, build the response. The router service runs it with the remote
// backend; moe-run with the in-process one; so both answer alike to the
// same request.
//
// Thread-safety: Run() may be called concurrently.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "moe/v1/router.pb.h"
#include "router/engine/expert_backend.h"
#include "router/engine/model_engine.h"

namespace moe::router {

struct ForwardLimits {
  // Largest batch x tokens of one request (RESOURCE_EXHAUSTED above).
  int64_t max_tokens_per_request = 65536;
};

class ForwardRunner {
 public:
  // `model` must outlive the runner.
  ForwardRunner(const ModelEngine* model, const ForwardLimits& limits);

  const ModelEngine& model() const { return *model_; }
  const ForwardLimits& limits() const { return limits_; }

  // The layer a request names, and its input checked against the limits
  // without decoding (shape, dtype, token count): what the router checks
  // before it queues the request.
  absl::StatusOr<const LayerEngine*> Admit(
      const moe::v1::ForwardRequest& request) const;

  // Runs `request` on `backend` and fills `response`; `result` (may be null)
  // receives the engine's result, for metrics. INVALID_ARGUMENT naming the
  // field, NOT_FOUND for an unknown layer, RESOURCE_EXHAUSTED over the
  // limits, or the backend's error.
  absl::Status Run(const moe::v1::ForwardRequest& request,
                   ExpertBackend& backend, moe::v1::ForwardResponse* response,
                   ForwardResult* result = nullptr) const;

  // Largest ForwardRequest the limits allow, in bytes (x in float32 and
  // replay uniforms, plus framing): the server's message size limit.
  int64_t MaxRequestBytes() const;

 private:
  const ModelEngine* model_;
  const ForwardLimits limits_;
};

}  // namespace moe::router
