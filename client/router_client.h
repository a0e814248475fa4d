// RouterClient: the C++ client library of the moe.v1.Router service.
//
// Example:
//   auto client = RouterClient::Create("127.0.0.1:50051");
//   moe::v1::RoutingOptions options;
//   options.set_mode(moe::v1::EVAL);
//   MOE_ASSIGN_OR_RETURN(ForwardOutput out, client->Forward(x, options));
//   // out.y: [B, n, d] in x's dtype; out.response: losses, stats, trace
//
// Forward calls have no side effects, so the client retries them on
// UNAVAILABLE (with backoff, within the call's timeout); nothing else is
// retried. Thread-safe.
#pragma once

#include <ATen/core/Tensor.h>
#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "moe/v1/router.grpc.pb.h"

namespace moe::client {

struct ClientOptions {
  absl::Duration timeout = absl::Seconds(60);  // per call, retries included
  int max_attempts = 3;
  int max_message_bytes = 1 << 30;
};

struct ForwardOutput {
  at::Tensor y;  // decoded from response.y
  moe::v1::ForwardResponse response;
};

class RouterClient {
 public:
  static std::unique_ptr<RouterClient> Create(
      const std::string& target, const ClientOptions& options = {});

  const std::string& target() const { return target_; }

  // The raw call.
  absl::StatusOr<moe::v1::ForwardResponse> Forward(
      const moe::v1::ForwardRequest& request) const;

  // Encodes x (float32, bfloat16 or float16 [B, n, d]) and decodes y.
  absl::StatusOr<ForwardOutput> Forward(
      const at::Tensor& x, const moe::v1::RoutingOptions& options) const;

  // Asynchronous form: `done` runs on a gRPC thread when the call ends (no
  // retries). `request` is copied.
  void ForwardAsync(
      const moe::v1::ForwardRequest& request,
      std::function<void(absl::StatusOr<moe::v1::ForwardResponse>)> done) const;

  absl::StatusOr<moe::v1::ModelInfo> GetModelInfo() const;

  std::shared_ptr<grpc::Channel> channel() const { return channel_; }

 private:
  RouterClient(std::string target, std::shared_ptr<grpc::Channel> channel,
               const ClientOptions& options);

  std::string target_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<moe::v1::Router::Stub> stub_;
  ClientOptions options_;
};

// The grpc.health.v1 status of `service` ("" = the whole server) at
// `target`; UNAVAILABLE when it cannot be reached within `timeout`.
absl::StatusOr<grpc::health::v1::HealthCheckResponse::ServingStatus>
CheckHealth(const std::string& target, absl::Duration timeout,
            const std::string& service = "");

}  // namespace moe::client
