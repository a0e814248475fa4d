// RouterClient: the C++ client library of the moe.v1.Router service. It
// needs gRPC, protobuf and abseil only: tensors are common::HostTensor
// (dtype, shape, little-endian bytes), never LibTorch.
//
// Example:
//   auto client = RouterClient::Create("127.0.0.1:50051");
//   ForwardOptions options;
//   options.layer = "blocks.3.ff";
//   MOE_ASSIGN_OR_RETURN(ForwardOutput out, client->Forward(x, options));
//   // out.y: [B, n, d] in x's dtype; out.response: losses, stats, trace
//
// Forward calls have no side effects, so the client retries them on
// UNAVAILABLE (with backoff, within the call's timeout); nothing else is
// retried. A CANCELLED from the server (one shutting down cancels calls it
// has not started; this client never cancels its own) counts as
// UNAVAILABLE. An answer that lacks some experts' outputs (`degraded`, under
// the router's drop policy) is an error unless the caller allows it.
// Every Forward carries a request ID ("x-request-id", the same on each
// attempt), which the router logs the call under; a failed call's message
// ends with it ("[request 5f0c...]").
// Thread-safe.
#pragma once

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/host_tensor.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "moe/v1/router.grpc.pb.h"

namespace moe::client {

struct ClientOptions {
  absl::Duration timeout = absl::Seconds(60);  // per call, retries included
  int max_attempts = 3;
  int max_message_bytes = 1 << 30;
  // TLS toward the router (CA, and a client certificate for mutual TLS);
  // plaintext when null.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  // The name the router's certificate must carry, when it is not the host
  // of the target (empty: the host).
  std::string tls_server_name;
  // Sent as "authorization: Bearer <token>" when not empty. Printable
  // ASCII only (common::CheckSendableToken): with any other byte every call
  // fails with INVALID_ARGUMENT (gRPC itself would abort the process).
  std::string token;
};

struct ForwardOptions {
  std::string layer;  // may be empty for a one-layer model
  moe::v1::RoutingOptions routing;
  moe::v1::ExpertFailurePolicy on_expert_failure =
      moe::v1::ON_FAILURE_UNSPECIFIED;
  // Accept an answer missing some experts' outputs (degraded) instead of
  // failing with UNAVAILABLE.
  bool allow_degraded = false;
  // Sent as "x-request-id" with every attempt, so that the router's logs
  // name the call by it; empty: one made here (common/request_id.h). At
  // most 128 bytes of letters, digits and . _ - : / + = (else the call
  // fails with INVALID_ARGUMENT, unsent).
  std::string request_id;
  // The caller's W3C trace context, sent as "traceparent": a sampled one
  // puts the router's span of the call, and its worker calls', in the
  // caller's trace (docs/operations.md, "Traces"). Empty: none. A value
  // that is not a traceparent fails the call with INVALID_ARGUMENT, unsent.
  std::string traceparent;
};

struct ForwardOutput {
  common::HostTensor y;  // decoded from response.y
  moe::v1::ForwardResponse response;
  std::string request_id;  // the call's "x-request-id"
};

class RouterClient {
 public:
  static std::unique_ptr<RouterClient> Create(
      const std::string& target, const ClientOptions& options = {});

  const std::string& target() const { return target_; }

  // The raw call (a degraded answer is returned as it is), under
  // `request_id` (ForwardOptions::request_id says what it may be; empty:
  // a new one), in the trace of `traceparent` (ForwardOptions::traceparent).
  absl::StatusOr<moe::v1::ForwardResponse> Forward(
      const moe::v1::ForwardRequest& request,
      const std::string& request_id = "",
      const std::string& traceparent = "") const;

  // Encodes x (float32, bfloat16 or float16 [B, n, d]) and decodes y.
  // UNAVAILABLE for a degraded answer unless options.allow_degraded.
  absl::StatusOr<ForwardOutput> Forward(const common::HostTensor& x,
                                        const ForwardOptions& options) const;

  // Asynchronous raw form: `done` runs on a gRPC thread when the call ends
  // (no retries). `request` is copied.
  void ForwardAsync(
      const moe::v1::ForwardRequest& request,
      std::function<void(absl::StatusOr<moe::v1::ForwardResponse>)> done) const;

  absl::StatusOr<moe::v1::ModelInfo> GetModelInfo() const;

  std::shared_ptr<grpc::Channel> channel() const { return channel_; }

 private:
  RouterClient(std::string target, std::shared_ptr<grpc::Channel> channel,
               const ClientOptions& options);
  // The deadline and the token; the token's error (CheckToken), if any.
  absl::Status Prepare(grpc::ClientContext* context, absl::Time deadline) const;

  std::string target_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<moe::v1::Router::Stub> stub_;
  ClientOptions options_;
  absl::Status token_status_;  // common::CheckSendableToken(options_.token)
};

// The error of a degraded answer: UNAVAILABLE naming the failed experts.
absl::Status DegradedError(const moe::v1::ForwardResponse& response);

// A failed call's status, its message ending with the call's request ID
// ("... [request 5f0c...]"): the name the router's logs give it.
absl::Status WithRequestId(const absl::Status& status, absl::string_view id);

// The grpc.health.v1 status of `service` ("" = the whole process) at
// `target`; UNAVAILABLE when it cannot be reached within `timeout`,
// NOT_FOUND when the server has no such service.
absl::StatusOr<grpc::health::v1::HealthCheckResponse::ServingStatus>
CheckHealth(const std::string& target, absl::Duration timeout,
            const std::string& service = "", const ClientOptions& options = {});

}  // namespace moe::client
