// WorkerAdmin: how the balancer reaches one expert worker: what it hosts
// and has run (GetShardInfo with load), and its placement (SetExperts, with
// the admin token). The gRPC implementation holds one channel.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "moe/v1/expert.pb.h"

namespace moe::balancer {

class WorkerAdmin {
 public:
  virtual ~WorkerAdmin() = default;
  virtual const std::string& address() const = 0;
  // GetShardInfo with the experts' load, by `deadline`.
  virtual absl::StatusOr<moe::v1::ShardInfo> Info(absl::Time deadline) = 0;
  // SetExperts, by `deadline`: the worker's ShardInfo after the change.
  virtual absl::StatusOr<moe::v1::ShardInfo> SetExperts(
      const moe::v1::SetExpertsRequest& request, absl::Time deadline) = 0;
};

struct WorkerAdminOptions {
  // TLS toward the workers; insecure when null.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  std::string tls_server_name;  // when it is not the host of the address
  std::string admin_token;      // sent as "authorization: Bearer <token>"
};

std::unique_ptr<WorkerAdmin> MakeGrpcWorkerAdmin(
    const std::string& address, const WorkerAdminOptions& options);

}  // namespace moe::balancer
