// TokenGate: the router's token check at a call's headers, before its
// message is read.
//
// gRPC hands a unary handler its whole request message, so a Forward
// without a token was refused only after the router had received and held
// up to a message limit of bytes (about 136 MB at the defaults), on each of
// up to --max_concurrent_streams streams of every connection. Over TLS,
// gRPC runs an AuthMetadataProcessor on a call's headers alone: with this
// gate, a Forward or ModelInfer without a token the router accepts ends
// there, UNAUTHENTICATED with the handler's message, before its message
// is read (RouterService::AuthorizeHeaders). The handlers still check
// (plaintext servers have no such hook), so the gate decides nothing they
// would not.
//
//   server_options.credentials->SetAuthMetadataProcessor(
//       std::make_shared<router::TokenGate>(service.get()));
#pragma once

#include <grpcpp/security/auth_metadata_processor.h>

#include "router/service/router_service.h"

namespace moe::router {

class TokenGate final : public grpc::AuthMetadataProcessor {
 public:
  // `service` must outlive the server the gate is attached to.
  explicit TokenGate(const RouterService* service) : service_(service) {}

  // A digest and a constant-time compare (and, at most once a second, a
  // stat of the token file): cheap enough for gRPC's own thread.
  bool IsBlocking() const override { return false; }

  grpc::Status Process(const InputMetadata& auth_metadata,
                       grpc::AuthContext* context,
                       OutputMetadata* consumed_auth_metadata,
                       OutputMetadata* response_metadata) override;

 private:
  const RouterService* const service_;
};

}  // namespace moe::router
