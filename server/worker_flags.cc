#include "server/worker_flags.h"

#include "absl/flags/flag.h"
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

std::string WorkerTlsServerNameFromFlags() {
  return absl::GetFlag(FLAGS_worker_tls_server_name);
}

}  // namespace moe::server
