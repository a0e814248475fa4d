// gRPC server metrics both servers record in their handlers:
//   moe_grpc_server_handled_total{method, code}
//   moe_grpc_server_handling_seconds{method}   (histogram)
// plus moe_build_info{version, device} = 1.
#pragma once

#include <grpcpp/support/status.h>
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <string>

#include "absl/time/time.h"

namespace moe::server {

inline constexpr const char* kMoeVersion = "0.1.0";

class RpcMetrics {
 public:
  // `registry` must outlive this object.
  explicit RpcMetrics(prometheus::Registry& registry);

  // Thread-safe.
  void Record(const std::string& method, grpc::StatusCode code,
              absl::Duration elapsed);

 private:
  prometheus::Family<prometheus::Counter>& handled_;
  prometheus::Family<prometheus::Histogram>& seconds_;
};

// Adds moe_build_info{version, device} 1.
void AddBuildInfo(prometheus::Registry& registry, const std::string& device);

// Latency buckets in seconds, 0.5 ms to 30 s.
prometheus::Histogram::BucketBoundaries LatencyBuckets();

// The canonical upper-case name of a gRPC code ("INVALID_ARGUMENT").
std::string StatusCodeName(grpc::StatusCode code);

}  // namespace moe::server
