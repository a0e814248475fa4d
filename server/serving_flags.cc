#include "server/serving_flags.h"

#include <algorithm>
#include <cstdlib>
#include <optional>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "proto/tls.h"
#include "server/main_helpers.h"
#include "server/otel_environment.h"

ABSL_FLAG(std::string, host, "0.0.0.0", "Address to listen on.");
ABSL_FLAG(std::string, port_file, "",
          "Write the port here once listening (useful with --port=0).");
ABSL_FLAG(double, grace_seconds, 10, "Time in-flight calls get on shutdown.");
ABSL_FLAG(double, drain_seconds, 0,
          "On SIGTERM, report NOT_SERVING but keep serving this long before "
          "taking no new calls (time for a load balancer to stop sending).");
ABSL_FLAG(bool, reflection, false, "Serve gRPC server reflection.");
ABSL_FLAG(bool, warmup, true,
          "Before reporting SERVING, run a warm-up on synthetic inputs (the "
          "router: one forward of the first layer, up to 4096 tokens, whose "
          "experts compute nothing; a worker: the experts of its first "
          "hosted layer on 4, then up to 512 rows each), so that the first "
          "real calls do not pay for start-up and first-touch page faults.");
ABSL_FLAG(int, max_queued, 64,
          "Calls that may wait for a thread; more are refused with "
          "RESOURCE_EXHAUSTED.");
ABSL_FLAG(double, max_connection_idle_seconds, 300,
          "Close a connection that has had no call for this long (clients "
          "reconnect when they call again).");
ABSL_FLAG(double, max_connection_age_seconds, 1800,
          "Ask a connection to close after this long (clients reconnect, "
          "spreading over new replicas); calls still open get "
          "--max_connection_age_grace_seconds.");
ABSL_FLAG(double, max_connection_age_grace_seconds, 60,
          "Time the calls of a connection past its age get to finish.");
ABSL_FLAG(int, max_concurrent_streams, 256,
          "Calls one connection may have open at once.");
ABSL_FLAG(int64_t, grpc_memory_bytes, 0,
          "The most memory gRPC may hold for incoming messages, all "
          "connections together (messages being received and those being "
          "served); past it gRPC cancels calls RESOURCE_EXHAUSTED instead of "
          "the process growing. 0: 8 times the receive message limit. At "
          "least two messages of that limit.");
ABSL_FLAG(std::string, metrics_host, "",
          "Address /metrics listens on (default: --host).");
ABSL_FLAG(std::string, metrics_port_file, "",
          "Write the metrics port here once listening.");
ABSL_FLAG(std::string, tls_cert_file, "",
          "Serve TLS with this certificate (PEM, may hold the chain); needs "
          "--tls_key_file. Without it the server speaks plaintext.");
ABSL_FLAG(std::string, tls_key_file, "",
          "Private key of --tls_cert_file (PEM).");
ABSL_FLAG(std::string, tls_client_ca_file, "",
          "Require a client certificate signed by this CA (mutual TLS).");
ABSL_FLAG(int, tls_refresh_seconds, 10,
          "How often certificate, key and CA files are checked for changes "
          "(a changed file is used for new connections, without a "
          "restart).");
ABSL_FLAG(int, health_port, -1,
          "Also serve grpc.health.v1 (and nothing else) in plaintext on this "
          "port, for probes that cannot speak TLS; -1: no, 0: a free port.");
ABSL_FLAG(std::string, health_port_file, "",
          "Write the --health_port here once listening.");

ABSL_FLAG(std::string, otlp_traces_endpoint, "",
          "Send a span of every recorded call to this OpenTelemetry "
          "collector (e.g. http://otel-collector:4318/v1/traces for "
          "OTLP/HTTP, http://otel-collector:4317 for OTLP/gRPC; https:// "
          "for TLS). A call is recorded when its caller's W3C traceparent "
          "is sampled, as a child of the caller's span. The router records "
          "forwards (Forward, ModelInfer, REST infer) and its calls to the "
          "workers; a worker records the RunExperts calls of recorded "
          "forwards. Empty (default): OpenTelemetry's "
          "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, or OTEL_EXPORTER_OTLP_ENDPOINT "
          "(+ /v1/traces over HTTP), when set; else no tracing. "
          "OTEL_EXPORTER_OTLP_HEADERS, _CERTIFICATE, _CLIENT_CERTIFICATE, "
          "_CLIENT_KEY, _TIMEOUT, _INSECURE, OTEL_BSP_*, OTEL_SERVICE_NAME and "
          "OTEL_RESOURCE_ATTRIBUTES are followed (docs/operations.md, "
          "\"Traces\"). A failed export is sent again when the collector "
          "may recover (HTTP 429/502/503/504, gRPC UNAVAILABLE, no answer).");
ABSL_FLAG(std::string, otlp_traces_protocol, "",
          "How spans reach the collector: http/json (POSTs with JSON "
          "bodies), http/protobuf (POSTs with protobuf bodies) or grpc "
          "(OTLP/gRPC's TraceService/Export). Empty (default): "
          "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or OTEL_EXPORTER_OTLP_PROTOCOL "
          "when set, else http/json.");
ABSL_FLAG(std::string, otlp_traces_compression, "",
          "gzip or none: whether span exports are gzip-compressed. Empty "
          "(default): OTEL_EXPORTER_OTLP_TRACES_COMPRESSION or "
          "OTEL_EXPORTER_OTLP_COMPRESSION when set, else none.");
ABSL_FLAG(std::optional<double>, trace_sample_ratio, std::nullopt,
          "When tracing: the share (0 to 1) of calls without a usable "
          "traceparent that start a trace of their own. Not given: "
          "OpenTelemetry's OTEL_TRACES_SAMPLER (parentbased_always_on 1, "
          "parentbased_always_off 0, parentbased_traceidratio "
          "OTEL_TRACES_SAMPLER_ARG) when set, else 0.");

namespace moe::server {

int TlsRefreshSecondsFromFlags() {
  return absl::GetFlag(FLAGS_tls_refresh_seconds);
}

bool WarmupFromFlags() { return absl::GetFlag(FLAGS_warmup); }

size_t MaxQueuedFromFlags() {
  return static_cast<size_t>(std::max(0, absl::GetFlag(FLAGS_max_queued)));
}

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> StartMetricsFromFlags(
    const std::string& host, int port,
    std::shared_ptr<prometheus::Registry> registry) {
  const std::string metrics_host = absl::GetFlag(FLAGS_metrics_host);
  return StartMetricsEndpoint(metrics_host.empty() ? host : metrics_host, port,
                              absl::GetFlag(FLAGS_metrics_port_file),
                              std::move(registry));
}

absl::Status ServerOptionsFromFlags(int port,
                                    std::vector<std::string> health_services,
                                    ServerOptions* options) {
  options->host = absl::GetFlag(FLAGS_host);
  options->port = port;
  options->port_file = absl::GetFlag(FLAGS_port_file);
  options->grace = absl::Seconds(absl::GetFlag(FLAGS_grace_seconds));
  options->drain = absl::Seconds(absl::GetFlag(FLAGS_drain_seconds));
  options->reflection = absl::GetFlag(FLAGS_reflection);
  options->health_services = std::move(health_services);
  ConnectionLimits& limits = options->limits;
  limits.max_idle =
      absl::Seconds(absl::GetFlag(FLAGS_max_connection_idle_seconds));
  limits.max_age =
      absl::Seconds(absl::GetFlag(FLAGS_max_connection_age_seconds));
  limits.age_grace =
      absl::Seconds(absl::GetFlag(FLAGS_max_connection_age_grace_seconds));
  limits.max_concurrent_streams = absl::GetFlag(FLAGS_max_concurrent_streams);
  options->memory_quota_bytes = absl::GetFlag(FLAGS_grpc_memory_bytes);
  if (options->memory_quota_bytes < 0) {
    return absl::InvalidArgumentError(
        "--grpc_memory_bytes must be >= 0 (0: 8 times the receive message "
        "limit)");
  }
  if (limits.max_idle <= absl::ZeroDuration() ||
      limits.max_age <= absl::ZeroDuration() ||
      limits.age_grace < absl::ZeroDuration() ||
      limits.max_concurrent_streams < 1) {
    return absl::InvalidArgumentError(
        "--max_connection_idle_seconds and --max_connection_age_seconds must "
        "be > 0, --max_connection_age_grace_seconds >= 0, "
        "--max_concurrent_streams >= 1");
  }
  if (absl::GetFlag(FLAGS_tls_refresh_seconds) < 1) {
    return absl::InvalidArgumentError("--tls_refresh_seconds must be >= 1");
  }
  proto::TlsFiles files;
  files.cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  files.key_file = absl::GetFlag(FLAGS_tls_key_file);
  files.ca_file = absl::GetFlag(FLAGS_tls_client_ca_file);
  files.refresh_seconds = absl::GetFlag(FLAGS_tls_refresh_seconds);
  files.flag_prefix = "--tls";
  files.ca_flag = "--tls_client_ca_file";
  if (files.cert_file.empty() && !files.ca_file.empty()) {
    return absl::InvalidArgumentError(
        "--tls_client_ca_file needs --tls_cert_file and --tls_key_file: "
        "client certificates are checked only over TLS");
  }
  MOE_ASSIGN_OR_RETURN(options->credentials,
                       proto::MakeServerCredentials(files));
  options->tls_files = files;
  if (options->credentials != nullptr) {
    MOE_LOG(INFO) << "TLS with " << files.cert_file
                  << (files.ca_file.empty()
                          ? std::string(" (no client certificate required)")
                          : absl::StrCat("; client certificates of ",
                                         files.ca_file, " required"))
                  << "; files re-read every " << files.refresh_seconds << " s";
  }
  options->health_port = absl::GetFlag(FLAGS_health_port);
  options->health_port_file = absl::GetFlag(FLAGS_health_port_file);
  if (options->health_port < -1 || options->health_port > 65535) {
    return absl::InvalidArgumentError("--health_port must be -1 or a port");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Tracing>> TracingFromFlags(
    const std::string& service_name, prometheus::Registry* registry) {
  std::string endpoint = absl::GetFlag(FLAGS_otlp_traces_endpoint);
  MOE_ASSIGN_OR_RETURN(
      const OtelEnvironment env,
      ReadOtelEnvironment([](const char* name) { return std::getenv(name); },
                          /*endpoint_given=*/!endpoint.empty()));
  std::string from = "--otlp_traces_endpoint";
  const std::optional<double> given = absl::GetFlag(FLAGS_trace_sample_ratio);
  if (given.has_value() && !(*given >= 0 && *given <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--trace_sample_ratio must be 0 to 1, not ", *given));
  }
  // The flag is checked even when nothing is traced.
  std::optional<OtlpProtocol> protocol_given;
  if (const std::string p = absl::GetFlag(FLAGS_otlp_traces_protocol);
      !p.empty()) {
    MOE_ASSIGN_OR_RETURN(protocol_given, ForFlag("--otlp_traces_protocol",
                                                 ParseOtlpProtocol(p)));
  }
  std::optional<bool> gzip_given;
  if (const std::string c = absl::GetFlag(FLAGS_otlp_traces_compression);
      !c.empty()) {
    MOE_ASSIGN_OR_RETURN(
        gzip_given, ForFlag("--otlp_traces_compression", ParseOtlpGzip(c)));
  }
  if (endpoint.empty() && !env.traces_endpoint.empty()) {
    endpoint = env.traces_endpoint;
    from = env.endpoint_variable;
  }
  if (endpoint.empty()) return std::unique_ptr<Tracing>();
  for (const std::string& w : env.warnings)
    MOE_LOG(WARNING) << "tracing: " << w;
  const double ratio = given.value_or(env.sample_ratio.value_or(0.0));
  OtlpExporter::Options o;
  o.endpoint = endpoint;
  if (protocol_given.has_value()) {
    o.protocol = *protocol_given;
  } else if (!env.protocol.empty()) {
    MOE_ASSIGN_OR_RETURN(o.protocol, ForFlag(env.protocol_variable,
                                             ParseOtlpProtocol(env.protocol)));
  }
  if (gzip_given.has_value()) {
    o.gzip = *gzip_given;
  } else if (!env.compression.empty()) {
    MOE_ASSIGN_OR_RETURN(o.gzip, ForFlag(env.compression_variable,
                                         ParseOtlpGzip(env.compression)));
  }
  o.service_name = env.service_name.empty() ? service_name : env.service_name;
  o.resource_attributes = env.resource_attributes;
  o.headers = env.headers;
  o.ca_file = env.certificate;
  o.client_cert_file = env.client_certificate;
  o.client_key_file = env.client_key;
  o.insecure = env.insecure.value_or(false);
  o.registry = registry;
  // Readable PEM, the key the certificate's: a mistake stops the server
  // naming the variable, not every export later.
  proto::TlsFiles files;
  files.ca_file = o.ca_file;
  files.ca_flag = env.certificate_variable;
  files.cert_file = o.client_cert_file;
  files.cert_flag = env.client_certificate_variable;
  files.key_file = o.client_key_file;
  files.key_flag = env.client_key_variable;
  MOE_RETURN_IF_ERROR(proto::CheckTlsFiles(files));
  if (env.timeout_ms) o.timeout = absl::Milliseconds(*env.timeout_ms);
  if (env.schedule_delay_ms) {
    o.interval = absl::Milliseconds(*env.schedule_delay_ms);
  }
  if (env.max_queue_size) o.max_queued = static_cast<int>(*env.max_queue_size);
  if (env.max_export_batch_size) {
    o.max_batch = static_cast<int>(*env.max_export_batch_size);
  }
  if (env.export_timeout_ms) {
    o.export_timeout = absl::Milliseconds(*env.export_timeout_ms);
  }
  auto tracing = std::make_unique<Tracing>();
  MOE_ASSIGN_OR_RETURN(tracing->exporter,
                       ForFlag(from, OtlpExporter::Create(o)));
  OtlpExporter* exporter = tracing->exporter.get();
  tracing->tracer = std::make_unique<common::Tracer>(
      ratio,
      [exporter](common::Span span) { exporter->Export(std::move(span)); });
  // Never the headers' values: they hold API keys.
  MOE_LOG(INFO) << "tracing: spans of service " << o.service_name << " to "
                << tracing->exporter->destination() << " over OTLP "
                << OtlpProtocolName(o.protocol) << " (" << from
                << "; callers' sampled traces, " << ratio
                << " of the calls without one"
                << (o.headers.empty()
                        ? ""
                        : absl::StrCat("; ", o.headers.size(), " header(s)"))
                << (o.protocol != OtlpProtocol::kGrpc ? ""
                    : tracing->exporter->tls()        ? "; TLS"
                                                      : "; plaintext")
                << (o.ca_file.empty() ? "" : "; CA " + o.ca_file)
                << (o.client_cert_file.empty()
                        ? ""
                        : "; client certificate " + o.client_cert_file)
                << (o.gzip ? "; gzip" : "") << ")";
  return tracing;
}

}  // namespace moe::server
