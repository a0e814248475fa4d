// One unary call of raw bytes through gRPC's generic stub, waited for: how
// the integration tests send what a typed stub could not (malformed
// messages, hand-built RunExperts requests, messages above the default
// size limits).
#pragma once

#include <grpcpp/grpcpp.h>

#include <string>

#include "absl/time/time.h"

namespace moe::testing {

// The status of `method` ("/moe.v1.Router/Forward") called with `request`
// at `address` (plaintext, messages up to 1 GiB both ways) within
// `timeout`; the answer's bytes in *response when it is not null.
grpc::Status RawCall(const std::string& address, const std::string& method,
                     grpc::ByteBuffer request, absl::Duration timeout,
                     grpc::ByteBuffer* response = nullptr);

// The same with the request's bytes as a string.
grpc::Status RawCall(const std::string& address, const std::string& method,
                     const std::string& request, absl::Duration timeout,
                     grpc::ByteBuffer* response = nullptr);

}  // namespace moe::testing
