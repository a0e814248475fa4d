// gRPC server metrics, recorded by an interceptor the ServerRunner installs
// (so services know nothing of them):
//   moe_grpc_server_handled_total{method, code}
//   moe_grpc_server_handling_seconds{method}   (histogram)
// and moe_build_info{version, revision, device} = 1.
#pragma once

#include <grpcpp/support/server_interceptor.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace moe::server {

class RpcMetrics {
 public:
  // `registry` must outlive this object.
  explicit RpcMetrics(prometheus::Registry& registry);

  // Thread-safe.
  void Record(const std::string& method, absl::StatusCode code,
              absl::Duration elapsed);

  // An interceptor factory that records every call of a server here.
  // `this` must outlive the server.
  std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
  InterceptorFactory();

 private:
  prometheus::Family<prometheus::Counter>& handled_;
  prometheus::Family<prometheus::Histogram>& seconds_;
};

// Adds moe_build_info{version, revision, device} 1.
void AddBuildInfo(prometheus::Registry& registry, const std::string& device);

}  // namespace moe::server
