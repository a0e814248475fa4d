// The flags every server shares (moe-router, moe-expert), defined once:
//   --host, --port_file                 where it listens (--port is each
//                                       server's own: its default differs)
//   --grace_seconds, --drain_seconds    graceful shutdown
//   --reflection                        gRPC server reflection
//   --warmup                            a warm-up before SERVING
//   --max_queued                        calls that may wait
//   --max_connection_idle_seconds, --max_connection_age_seconds,
//   --max_connection_age_grace_seconds, --max_concurrent_streams
//                                       connection limits
//   --grpc_memory_bytes                 memory gRPC may hold for incoming
//                                       messages (a ResourceQuota)
//   --metrics_host, --metrics_port_file the /metrics endpoint (--metrics_port
//                                       is each server's own)
//   --tls_cert_file, --tls_key_file     serve TLS with this certificate
//   --tls_client_ca_file                require client certificates of this CA
//   --tls_refresh_seconds               how often the files are re-read
//   --health_port, --health_port_file   plaintext grpc.health.v1 for probes
//   --otlp_traces_endpoint              an OTLP collector's URL ("" off;
//                                       docs/operations.md, "Traces")
//   --otlp_traces_protocol              http/json, http/protobuf or grpc
//   --otlp_traces_compression           gzip or none
//   --trace_sample_ratio                the share of calls without a sampled
//                                       caller context that start a trace
#pragma once

#include <prometheus/registry.h>

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/tracing.h"
#include "server/metrics_http.h"
#include "server/otlp_exporter.h"
#include "server/server_runner.h"

namespace moe::server {

// Fills *options from the shared flags: host, port_file, grace, drain,
// reflection, TLS credentials and the health listener; `port` and
// `health_services` are the server's. InvalidArgument naming the flag (and
// file) on a bad value, certificate or key. Certificates are read here,
// so call it before slow work (loading weights).
absl::Status ServerOptionsFromFlags(int port,
                                    std::vector<std::string> health_services,
                                    ServerOptions* options);

// /metrics on --metrics_host (default: `host`), `port` (the server's
// --metrics_port: -1 none, 0 a free one), its port written to
// --metrics_port_file. Null when `port` is -1.
absl::StatusOr<std::unique_ptr<MetricsHttpServer>> StartMetricsFromFlags(
    const std::string& host, int port,
    std::shared_ptr<prometheus::Registry> registry);

bool WarmupFromFlags();
size_t MaxQueuedFromFlags();
// --tls_refresh_seconds, for the credentials a server makes as a client.
int TlsRefreshSecondsFromFlags();

// The tracer of --otlp_traces_endpoint and the exporter its spans go to.
struct Tracing {
  std::unique_ptr<OtlpExporter> exporter;
  std::unique_ptr<common::Tracer> tracer;
};
// Null when --otlp_traces_endpoint is empty; spans name the service
// `service_name`; what becomes of them is counted in `registry`
// (moe_trace_spans_total, server/otlp_exporter.h), which must outlive the
// Tracing.
absl::StatusOr<std::unique_ptr<Tracing>> TracingFromFlags(
    const std::string& service_name, prometheus::Registry* registry);

}  // namespace moe::server
