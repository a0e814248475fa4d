#include "client/router_client.h"

#include <ATen/ATen.h>

#include <thread>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "proto/grpc_status.h"
#include "proto/tensor_codec.h"

namespace moe::client {
namespace {

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& target,
                                           int max_message_bytes) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(max_message_bytes);
  args.SetMaxSendMessageSize(max_message_bytes);
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(),
                                   args);
}

}  // namespace

RouterClient::RouterClient(std::string target,
                           std::shared_ptr<grpc::Channel> channel,
                           const ClientOptions& options)
    : target_(std::move(target)),
      channel_(std::move(channel)),
      stub_(moe::v1::Router::NewStub(channel_)),
      options_(options) {}

std::unique_ptr<RouterClient> RouterClient::Create(
    const std::string& target, const ClientOptions& options) {
  return std::unique_ptr<RouterClient>(new RouterClient(
      target, MakeChannel(target, options.max_message_bytes), options));
}

absl::StatusOr<moe::v1::ForwardResponse> RouterClient::Forward(
    const moe::v1::ForwardRequest& request) const {
  const absl::Time deadline = absl::Now() + options_.timeout;
  absl::Duration backoff = absl::Milliseconds(100);
  for (int attempt = 1;; ++attempt) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(deadline));
    moe::v1::ForwardResponse response;
    grpc::Status status = stub_->Forward(&context, request, &response);
    if (status.ok()) return response;
    if (status.error_code() != grpc::StatusCode::UNAVAILABLE ||
        attempt >= options_.max_attempts || absl::Now() + backoff >= deadline) {
      return proto::FromGrpcStatus(status);
    }
    std::this_thread::sleep_for(absl::ToChronoMilliseconds(backoff));
    backoff *= 2;
  }
}

absl::StatusOr<ForwardOutput> RouterClient::Forward(
    const at::Tensor& x, const moe::v1::RoutingOptions& options) const {
  moe::v1::ForwardRequest request;
  MOE_ASSIGN_OR_RETURN(moe::v1::DType dtype, proto::WireDType(x.scalar_type()));
  MOE_RETURN_IF_ERROR(proto::EncodeTensor(x, dtype, request.mutable_x()));
  *request.mutable_options() = options;
  ForwardOutput out;
  MOE_ASSIGN_OR_RETURN(out.response, Forward(request));
  MOE_ASSIGN_OR_RETURN(
      out.y, proto::DecodeTensor(out.response.y(), "y",
                                 std::numeric_limits<int64_t>::max()));
  return out;
}

void RouterClient::ForwardAsync(
    const moe::v1::ForwardRequest& request,
    std::function<void(absl::StatusOr<moe::v1::ForwardResponse>)> done) const {
  struct Call {
    grpc::ClientContext context;
    moe::v1::ForwardRequest request;
    moe::v1::ForwardResponse response;
    std::function<void(absl::StatusOr<moe::v1::ForwardResponse>)> done;
  };
  auto* call = new Call;
  call->request = request;
  call->done = std::move(done);
  call->context.set_deadline(
      absl::ToChronoTime(absl::Now() + options_.timeout));
  stub_->async()->Forward(&call->context, &call->request, &call->response,
                          [call](grpc::Status status) {
                            if (status.ok()) {
                              call->done(std::move(call->response));
                            } else {
                              call->done(proto::FromGrpcStatus(status));
                            }
                            delete call;
                          });
}

absl::StatusOr<moe::v1::ModelInfo> RouterClient::GetModelInfo() const {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + options_.timeout));
  moe::v1::ModelInfo info;
  grpc::Status status =
      stub_->GetModelInfo(&context, moe::v1::GetModelInfoRequest(), &info);
  if (!status.ok()) return proto::FromGrpcStatus(status);
  return info;
}

absl::StatusOr<grpc::health::v1::HealthCheckResponse::ServingStatus>
CheckHealth(const std::string& target, absl::Duration timeout,
            const std::string& service) {
  auto stub = grpc::health::v1::Health::NewStub(
      grpc::CreateChannel(target, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  grpc::health::v1::HealthCheckRequest request;
  request.set_service(service);
  grpc::health::v1::HealthCheckResponse response;
  grpc::Status status = stub->Check(&context, request, &response);
  if (!status.ok()) return proto::FromGrpcStatus(status);
  return response.status();
}

}  // namespace moe::client
