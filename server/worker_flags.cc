#include "server/worker_flags.h"

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "common/resolve.h"
#include "server/main_helpers.h"

ABSL_FLAG(std::string, workers, "",
          "Expert workers, HOST:PORT,HOST:PORT,... (or use --workers_file).");
ABSL_FLAG(std::string, workers_file, "",
          "File with one worker HOST:PORT per line.");
ABSL_FLAG(std::string, worker_template, "",
          "Workers by stable name, e.g. moe-expert-{i}.moe-expert:50052 "
          "(a StatefulSet's pods), with --num_workers. Names are resolved and "
          "re-resolved by gRPC; workers may start later, or not at all (a "
          "name without a pod is unreachable).");
ABSL_FLAG(int, num_workers, 0, "Number of workers of --worker_template.");
ABSL_FLAG(std::string, workers_dns, "",
          "Instead of a list: NAME:PORT, every address NAME resolves to is a "
          "worker (a StatefulSet's headless Service, e.g. "
          "moe-expert.moe-serve.svc.cluster.local:50052), re-resolved every "
          "--dns_refresh: new addresses join, addresses gone leave.");
ABSL_FLAG(absl::Duration, dns_refresh, absl::Seconds(5),
          "How often --workers_dns is resolved again.");
ABSL_FLAG(std::string, worker_tls_ca_file, "",
          "Talk TLS to the workers, checking their certificates against this "
          "CA (PEM).");
ABSL_FLAG(std::string, worker_tls_cert_file, "",
          "Client certificate for workers that require one (mutual TLS).");
ABSL_FLAG(std::string, worker_tls_key_file, "",
          "Private key of --worker_tls_cert_file.");
ABSL_FLAG(std::string, worker_tls_server_name, "",
          "Name the workers' certificates must carry, when it is not the "
          "host of their addresses.");

namespace moe::server {

absl::StatusOr<std::vector<std::string>> WorkerAddressesFromFlags() {
  const std::string dns = absl::GetFlag(FLAGS_workers_dns);
  if (absl::GetFlag(FLAGS_dns_refresh) <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--dns_refresh must be positive");
  }
  if (!dns.empty()) {
    if (!absl::GetFlag(FLAGS_workers).empty() ||
        !absl::GetFlag(FLAGS_workers_file).empty() ||
        !absl::GetFlag(FLAGS_worker_template).empty()) {
      return absl::InvalidArgumentError(
          "give --workers_dns or a list of workers (--workers, "
          "--workers_file, --worker_template), not both");
    }
    absl::StatusOr<std::vector<std::string>> now = common::ResolveAll(dns);
    if (absl::IsInvalidArgument(now.status())) {
      return absl::InvalidArgumentError(
          absl::StrCat("--workers_dns: ", now.status().message()));
    }
    if (!now.ok()) return std::vector<std::string>();  // none yet
    return now;
  }
  return WorkerAddresses(
      absl::GetFlag(FLAGS_workers), absl::GetFlag(FLAGS_workers_file),
      absl::GetFlag(FLAGS_worker_template), absl::GetFlag(FLAGS_num_workers));
}

proto::TlsFiles WorkerTlsFilesFromFlags() {
  proto::TlsFiles tls;
  tls.ca_file = absl::GetFlag(FLAGS_worker_tls_ca_file);
  tls.cert_file = absl::GetFlag(FLAGS_worker_tls_cert_file);
  tls.key_file = absl::GetFlag(FLAGS_worker_tls_key_file);
  tls.flag_prefix = "--worker_tls";
  return tls;
}

std::string WorkerDnsFromFlags() { return absl::GetFlag(FLAGS_workers_dns); }

absl::Duration DnsRefreshFromFlags() {
  return absl::GetFlag(FLAGS_dns_refresh);
}

std::string WorkerTlsServerNameFromFlags() {
  return absl::GetFlag(FLAGS_worker_tls_server_name);
}

}  // namespace moe::server
