// WorkerTransport: how the router reaches one expert worker. The gRPC
// implementation (GrpcWorkerTransport) holds a channel; unit tests of the
// pool, the batcher and the remote backend use a fake
// (tests/testing/fake_worker.h) and never start a process.
#pragma once

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "moe/v1/expert.pb.h"

namespace moe::router {

// A RunExperts call in flight.
class WorkerCall {
 public:
  virtual ~WorkerCall() = default;
  // Asks the call to end early (CANCELLED); harmless once it ended.
  virtual void Cancel() = 0;
};

// What a RunExperts call carries besides its bytes, as gRPC metadata.
struct WorkerCallMetadata {
  // The request IDs of the forwards it serves (x-request-id, one value
  // each, for the worker's logs).
  std::vector<std::string> request_ids;
  // The call's span as a W3C traceparent ("" when not traced): the
  // worker's span of the call is its child.
  std::string traceparent;
  // The spans of the same call for other traced forwards it serves
  // (common::kTraceLinkKey, one traceparent each): the worker's span links
  // them.
  std::vector<std::string> trace_links;
};

class WorkerTransport {
 public:
  // Runs once per call, on any thread, with the call's status and (when OK)
  // the serialized RunExpertsResponse.
  using Done = std::function<void(absl::Status, grpc::ByteBuffer)>;

  virtual ~WorkerTransport() = default;
  virtual const std::string& address() const = 0;

  // Starts RunExperts with the serialized `request`, ending by `deadline`,
  // with `metadata`.
  virtual std::shared_ptr<WorkerCall> StartRunExperts(
      grpc::ByteBuffer request, absl::Time deadline,
      const WorkerCallMetadata& metadata, Done done) = 0;

  // GetShardInfo, blocking until it answers or `deadline`.
  virtual absl::StatusOr<moe::v1::ShardInfo> GetShardInfo(
      absl::Time deadline) = 0;
};

struct GrpcTransportOptions {
  int max_message_bytes = 256 << 20;
  // TLS toward the workers; insecure when null.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  // The name the workers' certificates must carry, when it is not the host
  // of their addresses (empty: the host).
  std::string tls_server_name;
};

// Makes the gRPC transport of a worker address.
std::unique_ptr<WorkerTransport> MakeGrpcWorkerTransport(
    const std::string& address, const GrpcTransportOptions& options);
// One per address, in order.
std::vector<std::unique_ptr<WorkerTransport>> MakeGrpcWorkerTransports(
    const std::vector<std::string>& addresses,
    const GrpcTransportOptions& options);

}  // namespace moe::router
