#include "client/router_client.h"

#include <limits>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/request_id.h"
#include "common/status_macros.h"
#include "common/token_set.h"
#include "proto/grpc_status.h"
#include "proto/health_check.h"
#include "proto/tensor_codec.h"

namespace moe::client {
namespace {

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& target,
                                           const ClientOptions& options) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetMaxSendMessageSize(options.max_message_bytes);
  args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
  if (!options.tls_server_name.empty()) {
    args.SetSslTargetNameOverride(options.tls_server_name);
  }
  return grpc::CreateCustomChannel(target,
                                   options.credentials != nullptr
                                       ? options.credentials
                                       : grpc::InsecureChannelCredentials(),
                                   args);
}

// gRPC's own refusals (message size, a failed TLS handshake) say nothing
// of what to do about them. This client never cancels a call itself, so a
// CANCELLED is the server's: one shutting down cancels calls that reached
// it but not yet a handler. A forward is a pure function, so that is
// UNAVAILABLE (retried, by us or by a caller that holds other replicas).
absl::Status Explain(absl::Status status, bool tls) {
  if (absl::IsCancelled(status)) {
    return absl::UnavailableError(absl::StrCat(
        "the server cancelled the call (a server shutting down does this "
        "to calls it has not started; safe to retry): ",
        status.message()));
  }
  if (absl::IsResourceExhausted(status) &&
      absl::StrContains(status.message(), "larger than max")) {
    return absl::ResourceExhaustedError(absl::StrCat(
        status.message(),
        ": the request is larger than the router accepts; send fewer "
        "tokens per request (moe-client info shows max_tokens_per_request)"));
  }
  if (absl::IsUnavailable(status) &&
      (absl::StrContains(status.message(), "Socket closed") ||
       absl::StrContains(status.message(), "handshake") ||
       absl::StrContains(status.message(), "SSL"))) {
    return absl::UnavailableError(absl::StrCat(
        status.message(),
        tls ? " (a refused TLS handshake looks like this: check the CA "
              "(--tls_ca_file), and the client certificate if the router "
              "requires one)"
            : " (if the server speaks TLS, connect with --tls_ca_file)"));
  }
  return status;
}

}  // namespace

absl::Status WithRequestId(const absl::Status& status, absl::string_view id) {
  const std::string suffix = common::RequestIdNote(id);
  // The router's token gate names the request itself.
  if (absl::EndsWith(status.message(), suffix)) return status;
  return absl::Status(status.code(), absl::StrCat(status.message(), suffix));
}

RouterClient::RouterClient(std::string target,
                           std::shared_ptr<grpc::Channel> channel,
                           const ClientOptions& options)
    : target_(std::move(target)),
      channel_(std::move(channel)),
      stub_(moe::v1::Router::NewStub(channel_)),
      options_(options),
      token_status_(common::CheckSendableToken(options.token)) {}

std::unique_ptr<RouterClient> RouterClient::Create(
    const std::string& target, const ClientOptions& options) {
  return std::unique_ptr<RouterClient>(
      new RouterClient(target, MakeChannel(target, options), options));
}

absl::Status RouterClient::Prepare(grpc::ClientContext* context,
                                   absl::Time deadline) const {
  MOE_RETURN_IF_ERROR(token_status_);
  context->set_deadline(absl::ToChronoTime(deadline));
  if (!options_.token.empty()) {
    context->AddMetadata("authorization", "Bearer " + options_.token);
  }
  return absl::OkStatus();
}

absl::StatusOr<moe::v1::ForwardResponse> RouterClient::Forward(
    const moe::v1::ForwardRequest& request, const std::string& request_id,
    const std::string& traceparent) const {
  const std::string id =
      request_id.empty() ? common::NewRequestId() : request_id;
  MOE_RETURN_IF_ERROR(common::CheckRequestId(id));
  if (!traceparent.empty() && common::TraceIdOf(traceparent).empty()) {
    return absl::InvalidArgumentError(
        "traceparent is not a W3C traceparent value "
        "(00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>)");
  }
  const absl::Time deadline = absl::Now() + options_.timeout;
  absl::Duration backoff = absl::Milliseconds(100);
  for (int attempt = 1;; ++attempt) {
    grpc::ClientContext context;
    MOE_RETURN_IF_ERROR(Prepare(&context, deadline));
    context.AddMetadata(common::kRequestIdKey, id);
    if (!traceparent.empty()) {
      context.AddMetadata(common::kTraceparentKey, traceparent);
    }
    moe::v1::ForwardResponse response;
    grpc::Status status = stub_->Forward(&context, request, &response);
    if (status.ok()) return response;
    absl::Status error =
        Explain(proto::FromGrpcStatus(status), options_.credentials != nullptr);
    if (!absl::IsUnavailable(error) || attempt >= options_.max_attempts ||
        absl::Now() + backoff >= deadline) {
      return WithRequestId(error, id);
    }
    std::this_thread::sleep_for(absl::ToChronoMilliseconds(backoff));
    backoff *= 2;
  }
}

absl::Status DegradedError(const moe::v1::ForwardResponse& response) {
  return absl::UnavailableError(absl::StrCat(
      "degraded answer: experts [",
      absl::StrJoin(response.failed_experts(), ","), "] of layer \"",
      response.layer(), "\" were unavailable (",
      response.stats().dropped_expert_unavailable(),
      " assignments dropped); allow degraded answers to accept it"));
}

absl::StatusOr<ForwardOutput> RouterClient::Forward(
    const common::HostTensor& x, const ForwardOptions& options) const {
  moe::v1::ForwardRequest request;
  MOE_RETURN_IF_ERROR(proto::EncodeTensor(x, request.mutable_x()));
  *request.mutable_options() = options.routing;
  request.set_layer(options.layer);
  request.set_on_expert_failure(options.on_expert_failure);
  ForwardOutput out;
  out.request_id =
      options.request_id.empty() ? common::NewRequestId() : options.request_id;
  MOE_ASSIGN_OR_RETURN(out.response,
                       Forward(request, out.request_id, options.traceparent));
  if (out.response.degraded() && !options.allow_degraded) {
    return WithRequestId(DegradedError(out.response), out.request_id);
  }
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
    std::string request_id;
    std::function<void(absl::StatusOr<moe::v1::ForwardResponse>)> done;
  };
  if (!token_status_.ok()) {
    done(token_status_);
    return;
  }
  auto* call = new Call;
  call->request = request;
  call->done = std::move(done);
  (void)Prepare(&call->context, absl::Now() + options_.timeout);  // OK
  call->request_id = common::NewRequestId();
  call->context.AddMetadata(common::kRequestIdKey, call->request_id);
  stub_->async()->Forward(
      &call->context, &call->request, &call->response,
      [call, tls = options_.credentials != nullptr](grpc::Status status) {
        if (status.ok()) {
          call->done(std::move(call->response));
        } else {
          call->done(WithRequestId(Explain(proto::FromGrpcStatus(status), tls),
                                   call->request_id));
        }
        delete call;
      });
}

absl::StatusOr<moe::v1::ModelInfo> RouterClient::GetModelInfo() const {
  grpc::ClientContext context;
  MOE_RETURN_IF_ERROR(Prepare(&context, absl::Now() + options_.timeout));
  moe::v1::ModelInfo info;
  grpc::Status status =
      stub_->GetModelInfo(&context, moe::v1::GetModelInfoRequest(), &info);
  if (!status.ok()) {
    return Explain(proto::FromGrpcStatus(status),
                   options_.credentials != nullptr);
  }
  return info;
}

absl::StatusOr<grpc::health::v1::HealthCheckResponse::ServingStatus>
CheckHealth(const std::string& target, absl::Duration timeout,
            const std::string& service, const ClientOptions& options) {
  auto health = proto::CheckHealth(
      target, timeout, service, options.credentials, options.tls_server_name);
  if (!health.ok()) {
    return Explain(health.status(), options.credentials != nullptr);
  }
  return *health;
}

}  // namespace moe::client
