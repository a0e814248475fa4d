// The TLS and health-port flags moe-router and moe-expert share:
//   --tls_cert_file, --tls_key_file     serve TLS with this certificate
//   --tls_client_ca_file                require client certificates of this CA
//   --tls_refresh_seconds               how often the files are re-read
//   --health_port, --health_port_file   plaintext grpc.health.v1 for probes
#pragma once

#include "absl/status/status.h"
#include "server/server_runner.h"

namespace moe::server {

// Fills options->credentials and the health listener from the flags.
// InvalidArgument naming the flag and file on a bad certificate or key.
absl::Status ApplySecurityFlags(ServerOptions* options);

// --tls_refresh_seconds, for the credentials a server makes as a client.
int TlsRefreshSecondsFromFlags();

}  // namespace moe::server
