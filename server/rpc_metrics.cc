#include "server/rpc_metrics.h"

#include <prometheus/gauge.h>

namespace moe::server {

prometheus::Histogram::BucketBoundaries LatencyBuckets() {
  return {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
          0.25,   0.5,   1.0,    2.5,   5.0,  10.0,  30.0};
}

std::string StatusCodeName(grpc::StatusCode code) {
  static const char* const kNames[] = {"OK",
                                       "CANCELLED",
                                       "UNKNOWN",
                                       "INVALID_ARGUMENT",
                                       "DEADLINE_EXCEEDED",
                                       "NOT_FOUND",
                                       "ALREADY_EXISTS",
                                       "PERMISSION_DENIED",
                                       "RESOURCE_EXHAUSTED",
                                       "FAILED_PRECONDITION",
                                       "ABORTED",
                                       "OUT_OF_RANGE",
                                       "UNIMPLEMENTED",
                                       "INTERNAL",
                                       "UNAVAILABLE",
                                       "DATA_LOSS",
                                       "UNAUTHENTICATED"};
  const int i = static_cast<int>(code);
  return i >= 0 && i < 17 ? kNames[i] : "UNKNOWN";
}

RpcMetrics::RpcMetrics(prometheus::Registry& registry)
    : handled_(prometheus::BuildCounter()
                   .Name("moe_grpc_server_handled_total")
                   .Help("RPCs completed by the server, by method and code.")
                   .Register(registry)),
      seconds_(prometheus::BuildHistogram()
                   .Name("moe_grpc_server_handling_seconds")
                   .Help("Time from receiving an RPC to finishing it.")
                   .Register(registry)) {}

void RpcMetrics::Record(const std::string& method, grpc::StatusCode code,
                        absl::Duration elapsed) {
  handled_.Add({{"method", method}, {"code", StatusCodeName(code)}})
      .Increment();
  seconds_.Add({{"method", method}}, LatencyBuckets())
      .Observe(absl::ToDoubleSeconds(elapsed));
}

void AddBuildInfo(prometheus::Registry& registry, const std::string& device) {
  prometheus::BuildGauge()
      .Name("moe_build_info")
      .Help("moe-serve build information (always 1).")
      .Register(registry)
      .Add({{"version", kMoeVersion}, {"device", device}})
      .Set(1);
}

}  // namespace moe::server
