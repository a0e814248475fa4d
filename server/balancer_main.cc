// moe-balancer: the one writer of expert placement (docs/placement.md).
// Reads each worker's experts and load, heals lost experts, moves the
// experts of leaving workers, and replicates hot experts, make-before-
// break, through the workers' SetExperts (their admin token).
//
//   moe-balancer --checkpoint=model.safetensors
//       --workers=10.0.0.2:50052,10.0.0.3:50052 --admin_token_file=admin.txt
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "balancer/balancer.h"
#include "common/checkpoint.h"
#include "common/logging.h"
#include "common/resolve.h"
#include "common/status_macros.h"
#include "common/token_set.h"
#include "proto/tls.h"
#include "server/main_helpers.h"
#include "server/metrics_http.h"
#include "server/rpc_metrics.h"
#include "server/server_runner.h"
#include "server/worker_flags.h"

ABSL_FLAG(std::string, checkpoint, "",
          "The model's checkpoint (its layers and fingerprint; workers of "
          "another model are left alone).");
ABSL_FLAG(std::string, admin_token_file, "",
          "The workers' admin token (the first token line of the file): "
          "sent with every SetExperts. Required.");
ABSL_FLAG(absl::Duration, interval, absl::Seconds(1),
          "How often every worker is asked what it hosts and has run.");
ABSL_FLAG(absl::Duration, rebalance_every, absl::Seconds(30),
          "How often a load plan is considered (healing and leaving workers "
          "are acted on at once).");
ABSL_FLAG(absl::Duration, load_half_life, absl::Seconds(30),
          "Half-life of the decayed load per expert.");
ABSL_FLAG(double, min_gain, 0.1,
          "Apply a load plan only when it lowers the worst layer's imbalance "
          "((max - mean) / mean of the workers' load) by at least this.");
ABSL_FLAG(absl::Duration, settle, absl::Seconds(3),
          "Wait between loading new copies and dropping old ones, so that "
          "every router's probe (--probe_interval_ms) has seen them.");
ABSL_FLAG(absl::Duration, dead_after, absl::Seconds(3),
          "A worker unreachable this long has its experts placed elsewhere.");
ABSL_FLAG(int64_t, max_move_mb_per_minute, 0,
          "Most MiB of weights load plans may load per minute (0: no cap; "
          "healing is never capped).");
ABSL_FLAG(double, copies_per_expert, 2.5,
          "Room of workers without --expert_memory_mb: the pool holds this "
          "many copies of the model's experts, shared evenly.");
ABSL_FLAG(bool, dry_run, false, "Log the plans; change nothing.");
ABSL_FLAG(std::string, metrics_host, "0.0.0.0", "Address /metrics listens on.");
ABSL_FLAG(int, metrics_port, 9466,
          "Port of the Prometheus /metrics endpoint; 0 picks a free one, -1 "
          "disables it.");
ABSL_FLAG(std::string, metrics_port_file, "",
          "Write the /metrics port here once listening.");

namespace moe {
namespace {

absl::Status Run() {
  const std::string path = absl::GetFlag(FLAGS_checkpoint);
  if (path.empty()) {
    return absl::InvalidArgumentError("--checkpoint is required");
  }
  MOE_ASSIGN_OR_RETURN(std::vector<std::string> addresses,
                       server::WorkerAddressesFromFlags());
  balancer::WorkerAdminOptions admin;
  const std::string token_file = absl::GetFlag(FLAGS_admin_token_file);
  if (token_file.empty()) {
    return absl::InvalidArgumentError(
        "--admin_token_file is required: workers refuse placement changes "
        "without their admin token");
  }
  MOE_ASSIGN_OR_RETURN(
      admin.admin_token,
      common::ReadFirstToken(token_file, "--admin_token_file"));
  MOE_ASSIGN_OR_RETURN(
      admin.credentials,
      proto::MakeChannelCredentials(server::WorkerTlsFilesFromFlags()));
  admin.tls_server_name = server::WorkerTlsServerNameFromFlags();
  balancer::BalancerOptions options;
  options.interval = absl::GetFlag(FLAGS_interval);
  options.rebalance_every = absl::GetFlag(FLAGS_rebalance_every);
  options.load_half_life = absl::GetFlag(FLAGS_load_half_life);
  options.min_gain = absl::GetFlag(FLAGS_min_gain);
  options.settle = absl::GetFlag(FLAGS_settle);
  options.dead_after = absl::GetFlag(FLAGS_dead_after);
  options.max_move_bytes_per_minute =
      absl::GetFlag(FLAGS_max_move_mb_per_minute) << 20;
  options.copies_per_expert = absl::GetFlag(FLAGS_copies_per_expert);
  options.dry_run = absl::GetFlag(FLAGS_dry_run);
  if (options.interval <= absl::ZeroDuration() ||
      options.load_half_life <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "--interval and --load_half_life must be positive");
  }
  if (options.copies_per_expert < 1) {
    return absl::InvalidArgumentError("--copies_per_expert must be >= 1");
  }
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<common::Checkpoint> ckpt,
                       common::Checkpoint::Open(path));
  std::vector<std::unique_ptr<balancer::WorkerAdmin>> workers;
  for (const std::string& a : addresses) {
    workers.push_back(balancer::MakeGrpcWorkerAdmin(a, admin));
  }
  auto registry = std::make_shared<prometheus::Registry>();
  server::AddBuildInfo(*registry, "none");
  MOE_ASSIGN_OR_RETURN(
      std::unique_ptr<server::MetricsHttpServer> metrics_http,
      server::StartMetricsEndpoint(
          absl::GetFlag(FLAGS_metrics_host), absl::GetFlag(FLAGS_metrics_port),
          absl::GetFlag(FLAGS_metrics_port_file), registry));
  balancer::Balancer balancer(ckpt->spec(), ckpt->fingerprint(),
                              std::move(workers), options, registry.get());
  if (const std::string dns = server::WorkerDnsFromFlags(); !dns.empty()) {
    balancer.DiscoverWorkers([dns] { return common::ResolveAll(dns); },
                             [admin](const std::string& address) {
                               return balancer::MakeGrpcWorkerAdmin(address,
                                                                    admin);
                             },
                             server::DnsRefreshFromFlags());
  }
  MOE_LOG(INFO) << "balancing model \"" << ckpt->spec().name << "\" "
                << ckpt->fingerprint() << " over " << addresses.size()
                << " worker(s)" << (options.dry_run ? " (dry run)" : "")
                << (metrics_http ? absl::StrCat(", /metrics on port ",
                                                metrics_http->port())
                                 : "");
  absl::Notification stop;
  std::thread loop([&] { balancer.Run(&stop); });
  while (!server::ShutdownRequested(absl::Hours(1))) {
  }
  MOE_LOG(INFO) << "stop signal: finishing the current pass";
  stop.Notify();
  loop.join();
  return absl::OkStatus();
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  return moe::server::ServerMain(
      argc, argv, "moe-balancer",
      "places the experts of a model on its moe-expert workers by load: "
      "replicates hot experts, heals lost ones, moves the experts of leaving "
      "workers (docs/placement.md).\n\n  moe-balancer --checkpoint=F "
      "--workers=HOST:PORT,... --admin_token_file=F",
      [] { return moe::Run(); });
}
