// Integration-test helpers: real moe-expert / moe-router / moe-up processes
// on 127.0.0.1, ports from port files, readiness from health checks, all
// through the supervisor moe-up uses (server/supervisor.h).
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/router_client.h"
#include "server/supervisor.h"

namespace moe::testing {

// A child process of a test: the supervisor's (server/supervisor.h), the
// same code moe-up runs its children with; killed (SIGKILL) when destroyed
// if still running.
using Process = server::ChildProcess;

// Starts `argv` with stdout and stderr in `log_path`. A moe-up is stopped
// with SIGTERM when destroyed (SIGKILL after 30 s), so that it removes its
// temporary folder even when a test ends early.
// `env`: variables set in its environment (unless this process has them).
std::unique_ptr<Process> StartProcess(
    std::vector<std::string> argv, std::string log_path,
    std::vector<std::pair<std::string, std::string>> env = {});

// Reads an integer port from `path` once it exists; waits up to `timeout`,
// failing early (with its log) when `process` (may be null) exits.
absl::StatusOr<int> WaitForPortFile(const std::string& path,
                                    absl::Duration timeout, Process* process);

// A loopback port free now (bound and released).
absl::StatusOr<int> FreeLoopbackPort();

// Waits until `address` answers health SERVING (through `options`' TLS).
absl::Status WaitServing(const std::string& address, absl::Duration timeout,
                         const client::ClientOptions& options = {});

// Workers and a router started one by one (for failure tests).
class Deployment {
 public:
  // worker_experts[i] is the --experts list of worker i.
  Deployment(std::string checkpoint, std::vector<std::string> worker_experts,
             std::vector<std::string> router_flags = {});
  ~Deployment();

  // Worker i serves `checkpoint` instead of the deployment's (to test model
  // identity). Call before StartWorker(i).
  void SetWorkerCheckpoint(int i, std::string checkpoint);
  // Flags every worker started afterwards gets (TLS, say).
  void SetWorkerFlags(std::vector<std::string> flags) {
    worker_flags_ = std::move(flags);
  }
  // Environment variables of the processes started afterwards (unless this
  // process has them: they are defaults).
  void SetEnv(std::vector<std::pair<std::string, std::string>> env) {
    env_ = std::move(env);
  }
  // The worker binary started afterwards (default "moe-expert").
  void SetWorkerBinary(std::string name) { worker_binary_ = std::move(name); }
  // How the deployment's own health checks reach the processes (TLS).
  void SetProbeOptions(client::ClientOptions worker,
                       client::ClientOptions router) {
    worker_probe_ = std::move(worker);
    router_probe_ = std::move(router);
  }
  // Starts worker i on port `port` (0: a free one, recorded).
  absl::Status StartWorker(int i, int port = 0);
  // Picks a free port for worker i now, so that the router (and a
  // balancer) can list a worker that starts later (StartWorker(i,
  // worker_port(i))). Returns it.
  absl::StatusOr<int> ReserveWorkerPort(int i);
  // "127.0.0.1:PORT" of worker i.
  std::string worker_address(int i) const;
  // The folder of the deployment's files (logs, port files).
  const std::string& dir() const { return dir_; }
  absl::Status StartRouter();
  // Waits until the router reports worker i up (or down).
  absl::Status WaitWorkerState(int i, bool up, absl::Duration timeout);

  Process& worker(int i) { return *workers_[i]; }
  Process& router() { return *router_; }
  int worker_port(int i) const { return worker_ports_[i]; }
  int router_port() const { return router_port_; }
  std::string router_address() const;
  // "peak RSS: router 180 MiB, workers 250, 251 MiB" (VmHWM of the
  // processes running now; "-" for one that is not).
  std::string PeakRss() const;
  // HOST:PORT of the /metrics endpoints.
  std::string router_metrics_address() const;
  std::string worker_metrics_address(int i) const;

 private:
  std::string checkpoint_;
  std::vector<std::string> worker_experts_;
  std::vector<std::string> router_flags_;
  std::vector<std::string> worker_checkpoints_;
  std::vector<std::string> worker_flags_;
  std::string worker_binary_ = "moe-expert";
  std::vector<std::pair<std::string, std::string>> env_;
  client::ClientOptions worker_probe_, router_probe_;
  std::vector<std::unique_ptr<Process>> workers_;
  std::vector<int> worker_ports_;
  std::vector<int> worker_metrics_ports_;
  int router_metrics_port_ = 0;
  std::unique_ptr<Process> router_;
  int router_port_ = 0;
  std::string dir_;
};

}  // namespace moe::testing
