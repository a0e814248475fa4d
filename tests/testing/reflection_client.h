// A gRPC server-reflection client for tests: asks a server which services
// it lists (grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo,
// list_services), the way grpcurl and grpc_cli do.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/security/credentials.h"

namespace moe::testing {

// The services `address` lists; UNIMPLEMENTED when it serves no reflection.
absl::StatusOr<std::vector<std::string>> ListServicesByReflection(
    const std::string& address, absl::Duration timeout = absl::Seconds(10),
    std::shared_ptr<grpc::ChannelCredentials> credentials = nullptr);

}  // namespace moe::testing
