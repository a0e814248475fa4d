#include "router/remote/worker_transport.h"

#include <grpcpp/generic/generic_stub.h>

#include "common/logging.h"
#include "common/request_id.h"
#include "common/tracing.h"
#include "moe/v1/expert.grpc.pb.h"
#include "proto/grpc_status.h"

namespace moe::router {
namespace {

constexpr char kRunExperts[] = "/moe.v1.ExpertWorker/RunExperts";

class GrpcWorkerCall : public WorkerCall {
 public:
  void Cancel() override { context.TryCancel(); }
  grpc::ClientContext context;
  grpc::ByteBuffer request;
  grpc::ByteBuffer response;
};

class GrpcWorkerTransport : public WorkerTransport {
 public:
  GrpcWorkerTransport(std::string address, const GrpcTransportOptions& o)
      : address_(std::move(address)) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(o.max_message_bytes);
    args.SetMaxSendMessageSize(o.max_message_bytes);
    // Reconnect quickly after a worker restarts.
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    // Retries are the router's decision (replicas, failure policy).
    args.SetInt(GRPC_ARG_ENABLE_RETRIES, 0);
    if (!o.tls_server_name.empty()) {
      args.SetSslTargetNameOverride(o.tls_server_name);
    }
    channel_ = grpc::CreateCustomChannel(
        address_,
        o.credentials != nullptr ? o.credentials
                                 : grpc::InsecureChannelCredentials(),
        args);
    stub_ = moe::v1::ExpertWorker::NewStub(channel_);
    generic_ = std::make_unique<grpc::GenericStub>(channel_);
  }

  const std::string& address() const override { return address_; }

  std::shared_ptr<WorkerCall> StartRunExperts(
      grpc::ByteBuffer request, absl::Time deadline,
      const WorkerCallMetadata& metadata, Done done) override {
    auto call = std::make_shared<GrpcWorkerCall>();
    call->request = std::move(request);
    call->context.set_deadline(absl::ToChronoTime(deadline));
    for (const std::string& id : metadata.request_ids) {
      call->context.AddMetadata(common::kRequestIdKey, id);
    }
    if (!metadata.traceparent.empty()) {
      call->context.AddMetadata(common::kTraceparentKey, metadata.traceparent);
    }
    for (const std::string& link : metadata.trace_links) {
      call->context.AddMetadata(common::kTraceLinkKey, link);
    }
    // The completion holds the call until it ran.
    generic_->UnaryCall(
        &call->context, kRunExperts, grpc::StubOptions(), &call->request,
        &call->response, [call, done = std::move(done)](grpc::Status s) {
          done(proto::FromGrpcStatus(s), std::move(call->response));
        });
    return call;
  }

  absl::StatusOr<moe::v1::ShardInfo> GetShardInfo(
      absl::Time deadline) override {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(deadline));
    moe::v1::ShardInfo info;
    grpc::Status status =
        stub_->GetShardInfo(&context, moe::v1::GetShardInfoRequest(), &info);
    if (!status.ok()) return proto::FromGrpcStatus(status);
    return info;
  }

 private:
  std::string address_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<moe::v1::ExpertWorker::Stub> stub_;
  std::unique_ptr<grpc::GenericStub> generic_;
};

}  // namespace

std::unique_ptr<WorkerTransport> MakeGrpcWorkerTransport(
    const std::string& address, const GrpcTransportOptions& options) {
  return std::make_unique<GrpcWorkerTransport>(address, options);
}

std::vector<std::unique_ptr<WorkerTransport>> MakeGrpcWorkerTransports(
    const std::vector<std::string>& addresses,
    const GrpcTransportOptions& options) {
  if (options.credentials == nullptr) {
    MOE_LOG(WARNING) << "talking to the workers in plaintext (no worker TLS: "
                        "--worker_tls_ca_file)";
  }
  std::vector<std::unique_ptr<WorkerTransport>> transports;
  for (const std::string& a : addresses) {
    transports.push_back(MakeGrpcWorkerTransport(a, options));
  }
  return transports;
}

}  // namespace moe::router
