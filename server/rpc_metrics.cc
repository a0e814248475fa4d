#include "server/rpc_metrics.h"

#include <prometheus/gauge.h>

#include "absl/time/clock.h"
#include "common/metrics_buckets.h"
#include "moe_version.h"

namespace moe::server {
namespace {

// One per call: the time from its start to the status it sends.
class MetricsInterceptor : public grpc::experimental::Interceptor {
 public:
  MetricsInterceptor(RpcMetrics* metrics, std::string method)
      : metrics_(metrics), method_(std::move(method)), start_(absl::Now()) {}

  void Intercept(
      grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      const grpc::Status status = methods->GetSendStatus();
      metrics_->Record(method_,
                       static_cast<absl::StatusCode>(status.error_code()),
                       absl::Now() - start_);
    }
    methods->Proceed();
  }

 private:
  RpcMetrics* metrics_;
  std::string method_;
  absl::Time start_;
};

class MetricsInterceptorFactory
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit MetricsInterceptorFactory(RpcMetrics* metrics) : metrics_(metrics) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new MetricsInterceptor(metrics_, info->method());
  }

 private:
  RpcMetrics* metrics_;
};

}  // namespace

RpcMetrics::RpcMetrics(prometheus::Registry& registry)
    : handled_(prometheus::BuildCounter()
                   .Name("moe_grpc_server_handled_total")
                   .Help("RPCs completed by the server, by method and code.")
                   .Register(registry)),
      seconds_(prometheus::BuildHistogram()
                   .Name("moe_grpc_server_handling_seconds")
                   .Help("Time from receiving an RPC to finishing it.")
                   .Register(registry)) {}

void RpcMetrics::Record(const std::string& method, absl::StatusCode code,
                        absl::Duration elapsed) {
  handled_.Add({{"method", method}, {"code", absl::StatusCodeToString(code)}})
      .Increment();
  seconds_.Add({{"method", method}}, common::LatencyBucketsSeconds())
      .Observe(absl::ToDoubleSeconds(elapsed));
}

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>
RpcMetrics::InterceptorFactory() {
  return std::make_unique<MetricsInterceptorFactory>(this);
}

void AddBuildInfo(prometheus::Registry& registry, const std::string& device) {
  prometheus::BuildGauge()
      .Name("moe_build_info")
      .Help("moe-serve build information (always 1).")
      .Register(registry)
      .Add({{"version", moe::kVersion},
            {"revision", moe::kGitRevision},
            {"device", device}})
      .Set(1);
}

}  // namespace moe::server
