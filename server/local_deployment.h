// LocalDeployment: one moe-router and N moe-expert workers on one host from
// one checkpoint, every worker hosting its share of every layer
// (common::ExpertSet::Shard): what moe-up runs. It starts the workers, then
// the router on them, waits until each is healthy, and stops them all
// (the router first) when it is destroyed. The processes are the
// supervisor's (server/supervisor.h).
//
// Example (moe-up):
//   MOE_ASSIGN_OR_RETURN(auto deployment, LocalDeployment::Start(options));
//   std::printf("%s\n", deployment->router_address().c_str());
//   return deployment->Supervise();  // until Ctrl-C, or a child dies
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/model_spec.h"
#include "server/supervisor.h"

namespace moe::server {

struct LocalDeploymentOptions {
  // Where moe-router, moe-expert and moe-run are.
  std::string bin_dir;
  // Port files and the demo model; empty: a temporary directory, removed
  // when the deployment ends.
  std::string work_dir;
  // The model; empty: a demo model (the st-moe-pytorch README
  // configuration) of `demo_layers` layers and `seed`, written by moe-run.
  std::string checkpoint;
  int demo_layers = 4;
  uint64_t seed = 0;
  int workers = 2;
  std::string host = "127.0.0.1";
  int router_port = 50051;  // 0: a free one
  absl::Duration start_timeout = absl::Seconds(120);
  // The router's --max_tokens_per_request; the workers take twice as many
  // rows per call.
  int64_t max_tokens_per_request = 65536;
  // The router's --http_port (the Open Inference Protocol's REST form; 0: a
  // free one; -1: off), reported as "router_http" by Endpoints().
  int router_http_port = -1;
  // Extra flags: to every child, to each worker, to the router.
  std::vector<std::string> common_flags;
  std::vector<std::string> worker_flags;
  std::vector<std::string> router_flags;
  // How the deployment reaches the children's health (their TLS).
  HealthProbe probe;
  // Runs moe-balancer (docs/placement.md) with these flags: the workers
  // take placement changes (an admin token made here), and a worker that
  // dies is not a reason to stop: its experts are healed onto the others.
  bool balance = false;
  std::vector<std::string> balancer_flags;
};

class LocalDeployment {
 public:
  // Starts everything and waits until the router is SERVING.
  // UNAVAILABLE naming the child that died during start-up,
  // DEADLINE_EXCEEDED naming the one not healthy in time, CANCELLED on
  // SIGTERM/SIGINT (blocked by the caller, server::BlockShutdownSignals).
  static absl::StatusOr<std::unique_ptr<LocalDeployment>> Start(
      LocalDeploymentOptions options);
  ~LocalDeployment();

  const common::ModelSpec& spec() const { return spec_; }
  std::string router_address() const;
  int router_port() const;
  // One per line: "router HOST:PORT", "router_metrics HOST:PORT",
  // "worker<i> HOST:PORT", "worker<i>_metrics HOST:PORT", and with the
  // balancer "balancer_metrics HOST:PORT".
  std::string Endpoints() const;

  // Serves until SIGTERM/SIGINT (OK) or until a child dies (UNAVAILABLE
  // naming it); stops every child either way.
  absl::Status Supervise();

 private:
  struct Child;
  explicit LocalDeployment(LocalDeploymentOptions options);
  absl::Status Prepare();
  absl::Status StartWorkers();
  absl::Status StartRouter();
  // The balancer, once the router serves; its /metrics port is its sign of
  // life (it serves no gRPC).
  absl::Status StartBalancer();
  // The admin token file of the workers and the balancer (made here).
  std::string AdminTokenFile() const;
  // Where the router reports its --http_port.
  std::string HttpPortFile() const;
  absl::Status StartChild(std::string name, const std::string& file,
                          std::vector<std::string> argv, int blas_threads);
  absl::Status WaitReady(Child& c);
  // "worker 1 (experts ...) exited with code 1"; "" while all run.
  std::string DeadChild();
  void StopAll();

  LocalDeploymentOptions options_;
  bool remove_work_dir_ = false;
  absl::Time deadline_;
  common::ModelSpec spec_;
  std::vector<Child> children_;
  std::unique_ptr<ChildProcess> balancer_;
  int balancer_metrics_port_ = 0;
  std::vector<bool> reported_dead_;  // workers whose death was logged
};

}  // namespace moe::server
