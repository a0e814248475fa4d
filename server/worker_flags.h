// The flags of a process that reaches the expert workers (moe-router,
// moe-balancer): which workers, and how to reach them.
//   --workers, --workers_file, --worker_template with --num_workers, or
//   --workers_dns (re-resolved every --dns_refresh)
//   --worker_tls_ca_file, --worker_tls_cert_file, --worker_tls_key_file,
//   --worker_tls_server_name
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proto/tls.h"

namespace moe::server {

// HOST:PORT of every worker, from whichever of the flags is given
// (InvalidArgument naming the flags otherwise); with --workers_dns, the
// addresses the name has now (none when it does not resolve yet).
absl::StatusOr<std::vector<std::string>> WorkerAddressesFromFlags();

// --workers_dns ("" when the workers are listed) and --dns_refresh.
std::string WorkerDnsFromFlags();
absl::Duration DnsRefreshFromFlags();

// The TLS files toward the workers (plaintext when none is given), their
// flag names for messages.
proto::TlsFiles WorkerTlsFilesFromFlags();

// --worker_tls_server_name.
std::string WorkerTlsServerNameFromFlags();

}  // namespace moe::server
