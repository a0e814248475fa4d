#include "proto/health_check.h"

#include "proto/grpc_status.h"

namespace moe::proto {

absl::StatusOr<grpc::health::v1::HealthCheckResponse::ServingStatus>
CheckHealth(const std::string& target, absl::Duration timeout,
            const std::string& service,
            std::shared_ptr<grpc::ChannelCredentials> credentials,
            const std::string& tls_server_name) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
  if (!tls_server_name.empty()) args.SetSslTargetNameOverride(tls_server_name);
  auto stub = grpc::health::v1::Health::NewStub(grpc::CreateCustomChannel(
      target,
      credentials != nullptr ? credentials : grpc::InsecureChannelCredentials(),
      args));
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  const grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) return FromGrpcStatus(status);
  return response.status();
}

}  // namespace moe::proto
