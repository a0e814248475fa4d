#include "server/serving_flags.h"

#include <algorithm>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "proto/tls.h"

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

}  // namespace moe::server
