// grpc.health.v1 Check of a server, for everything that must know whether
// one is up: the client library (moe-client health), moe-up and the test
// deployments (server/supervisor.h).
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace moe::proto {

// The health of `service` ("" = the whole process) at `target`, through
// `credentials` (plaintext when null; `tls_server_name`, when set, is the
// name the server's certificate must carry). UNAVAILABLE when it cannot be
// reached within `timeout`, NOT_FOUND when the server has no such service.
absl::StatusOr<grpc::health::v1::HealthCheckResponse::ServingStatus>
CheckHealth(const std::string& target, absl::Duration timeout,
            const std::string& service = "",
            std::shared_ptr<grpc::ChannelCredentials> credentials = nullptr,
            const std::string& tls_server_name = "");

}  // namespace moe::proto
