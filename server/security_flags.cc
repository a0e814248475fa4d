#include "server/security_flags.h"

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "proto/tls.h"

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

absl::Status ApplySecurityFlags(ServerOptions* options) {
  if (absl::GetFlag(FLAGS_tls_refresh_seconds) < 1) {
    return absl::InvalidArgumentError("--tls_refresh_seconds must be >= 1");
  }
  proto::TlsFiles files;
  files.cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  files.key_file = absl::GetFlag(FLAGS_tls_key_file);
  files.ca_file = absl::GetFlag(FLAGS_tls_client_ca_file);
  files.refresh_seconds = absl::GetFlag(FLAGS_tls_refresh_seconds);
  files.flag_prefix = "--tls";
  if (files.cert_file.empty() && !files.ca_file.empty()) {
    return absl::InvalidArgumentError(
        "--tls_client_ca_file needs --tls_cert_file and --tls_key_file: "
        "client certificates are checked only over TLS");
  }
  MOE_ASSIGN_OR_RETURN(options->credentials,
                       proto::MakeServerCredentials(files));
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
