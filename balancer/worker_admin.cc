#include "balancer/worker_admin.h"

#include "moe/v1/expert.grpc.pb.h"
#include "proto/grpc_status.h"

namespace moe::balancer {
namespace {

class GrpcWorkerAdmin : public WorkerAdmin {
 public:
  GrpcWorkerAdmin(std::string address, const WorkerAdminOptions& o)
      : address_(std::move(address)), token_(o.admin_token) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    if (!o.tls_server_name.empty()) {
      args.SetSslTargetNameOverride(o.tls_server_name);
    }
    stub_ = moe::v1::ExpertWorker::NewStub(grpc::CreateCustomChannel(
        address_,
        o.credentials != nullptr ? o.credentials
                                 : grpc::InsecureChannelCredentials(),
        args));
  }

  const std::string& address() const override { return address_; }

  absl::StatusOr<moe::v1::ShardInfo> Info(absl::Time deadline) override {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(deadline));
    moe::v1::GetShardInfoRequest request;
    request.set_include_load(true);
    moe::v1::ShardInfo info;
    grpc::Status status = stub_->GetShardInfo(&context, request, &info);
    if (!status.ok()) return proto::FromGrpcStatus(status);
    return info;
  }

  absl::StatusOr<moe::v1::ShardInfo> SetExperts(
      const moe::v1::SetExpertsRequest& request, absl::Time deadline) override {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(deadline));
    if (!token_.empty()) {
      context.AddMetadata("authorization", "Bearer " + token_);
    }
    moe::v1::ShardInfo info;
    grpc::Status status = stub_->SetExperts(&context, request, &info);
    if (!status.ok()) return proto::FromGrpcStatus(status);
    return info;
  }

 private:
  const std::string address_;
  const std::string token_;
  std::unique_ptr<moe::v1::ExpertWorker::Stub> stub_;
};

}  // namespace

std::unique_ptr<WorkerAdmin> MakeGrpcWorkerAdmin(
    const std::string& address, const WorkerAdminOptions& options) {
  return std::make_unique<GrpcWorkerAdmin>(address, options);
}

}  // namespace moe::balancer
