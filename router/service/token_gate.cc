#include "router/service/token_gate.h"

#include <string>

#include "absl/strings/string_view.h"
#include "common/request_id.h"
#include "proto/grpc_status.h"

namespace moe::router {
namespace {

absl::string_view Header(
    const grpc::AuthMetadataProcessor::InputMetadata& metadata,
    absl::string_view name) {
  auto it = metadata.find(grpc::string_ref(name.data(), name.size()));
  if (it == metadata.end()) return {};
  return absl::string_view(it->second.data(), it->second.size());
}

}  // namespace

grpc::Status TokenGate::Process(const InputMetadata& auth_metadata,
                                grpc::AuthContext* /*context*/,
                                OutputMetadata* /*consumed_auth_metadata*/,
                                OutputMetadata* /*response_metadata*/) {
  // The header stays for the handler, which checks it again.
  return proto::ToGrpcStatus(service_->AuthorizeHeaders(
      Header(auth_metadata, ":path"), Header(auth_metadata, "authorization"),
      Header(auth_metadata, common::kRequestIdKey),
      Header(auth_metadata, common::kTraceparentKey)));
}

}  // namespace moe::router
