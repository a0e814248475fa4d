#include "testing/deployment.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "client/router_client.h"
#include "testing/golden.h"

namespace moe::testing {

std::unique_ptr<Process> StartProcess(
    std::vector<std::string> argv, std::string log_path,
    std::vector<std::pair<std::string, std::string>> env) {
  server::ChildOptions options;
  options.env_defaults = std::move(env);
  if (!argv.empty() && absl::EndsWith(argv[0], "/moe-up")) {
    options.destroy_grace = absl::Seconds(30);
  }
  options.argv = std::move(argv);
  options.log_path = std::move(log_path);
  absl::StatusOr<std::unique_ptr<Process>> p =
      server::ChildProcess::Start(std::move(options));
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? std::move(*p) : nullptr;
}

absl::StatusOr<int> WaitForPortFile(const std::string& path,
                                    absl::Duration timeout, Process* process) {
  return server::WaitForPortFile(path, absl::Now() + timeout, process);
}

absl::Status WaitServing(const std::string& address, absl::Duration timeout,
                         const client::ClientOptions& options) {
  server::HealthProbe probe;
  probe.credentials = options.credentials;
  probe.tls_server_name = options.tls_server_name;
  return server::WaitServing(address, absl::Now() + timeout, nullptr, probe);
}

Deployment::Deployment(std::string checkpoint,
                       std::vector<std::string> worker_experts,
                       std::vector<std::string> router_flags)
    : checkpoint_(std::move(checkpoint)),
      worker_experts_(std::move(worker_experts)),
      router_flags_(std::move(router_flags)),
      worker_checkpoints_(worker_experts_.size(), checkpoint_),
      workers_(worker_experts_.size()),
      worker_ports_(worker_experts_.size(), 0),
      worker_metrics_ports_(worker_experts_.size(), 0) {
  static int counter = 0;
  dir_ = absl::StrCat(TempDir(), "/deployment-", counter++);
  std::filesystem::create_directories(dir_);
}

Deployment::~Deployment() {
  router_.reset();
  workers_.clear();
}

void Deployment::SetWorkerCheckpoint(int i, std::string checkpoint) {
  worker_checkpoints_[i] = std::move(checkpoint);
}

absl::Status Deployment::StartWorker(int i, int port) {
  const std::string port_file = absl::StrCat(dir_, "/worker-", i, ".port");
  std::filesystem::remove(port_file);
  std::vector<std::string> argv = {
      BinaryPath(worker_binary_),
      "--checkpoint=" + worker_checkpoints_[i],
      "--experts=" + worker_experts_[i],
      "--host=127.0.0.1",
      absl::StrCat("--port=", port),
      "--port_file=" + port_file,
      "--metrics_port=0",
      "--metrics_port_file=" + port_file + ".metrics",
      "--grace_seconds=5"};
  argv.insert(argv.end(), worker_flags_.begin(), worker_flags_.end());
  workers_[i] =
      StartProcess(argv, absl::StrCat(dir_, "/worker-", i, ".log"), env_);
  absl::StatusOr<int> p =
      WaitForPortFile(port_file, absl::Seconds(60), workers_[i].get());
  if (!p.ok()) return p.status();
  worker_ports_[i] = *p;
  absl::StatusOr<int> m = WaitForPortFile(port_file + ".metrics",
                                          absl::Seconds(10), workers_[i].get());
  if (!m.ok()) return m.status();
  worker_metrics_ports_[i] = *m;
  return WaitServing(absl::StrCat("127.0.0.1:", *p), absl::Seconds(60),
                     worker_probe_);
}

absl::StatusOr<int> Deployment::ReserveWorkerPort(int i) {
  absl::StatusOr<int> port = FreeLoopbackPort();
  if (port.ok()) worker_ports_[i] = *port;
  return port;
}

absl::StatusOr<int> FreeLoopbackPort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::InternalError("socket() failed");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    ::close(fd);
    return absl::InternalError("no free loopback port");
  }
  ::close(fd);
  return static_cast<int>(ntohs(addr.sin_port));
}

std::string Deployment::worker_address(int i) const {
  return absl::StrCat("127.0.0.1:", worker_ports_[i]);
}

absl::Status Deployment::StartRouter() {
  std::vector<std::string> addresses;
  for (int p : worker_ports_)
    addresses.push_back(absl::StrCat("127.0.0.1:", p));
  const std::string port_file = dir_ + "/router.port";
  std::filesystem::remove(port_file);
  std::vector<std::string> argv = {
      BinaryPath("moe-router"),
      "--checkpoint=" + checkpoint_,
      "--workers=" + absl::StrJoin(addresses, ","),
      "--host=127.0.0.1",
      "--port=0",
      "--port_file=" + port_file,
      "--probe_interval_ms=100",
      "--metrics_port=0",
      "--metrics_port_file=" + port_file + ".metrics",
      "--grace_seconds=10"};
  argv.insert(argv.end(), router_flags_.begin(), router_flags_.end());
  router_ = StartProcess(argv, dir_ + "/router.log", env_);
  absl::StatusOr<int> p =
      WaitForPortFile(port_file, absl::Seconds(60), router_.get());
  if (!p.ok()) return p.status();
  router_port_ = *p;
  absl::StatusOr<int> m =
      WaitForPortFile(port_file + ".metrics", absl::Seconds(10), router_.get());
  if (!m.ok()) return m.status();
  router_metrics_port_ = *m;
  return WaitServing(router_address(), absl::Seconds(60), router_probe_);
}

absl::Status Deployment::WaitWorkerState(int i, bool up,
                                         absl::Duration timeout) {
  auto client = client::RouterClient::Create(router_address(), router_probe_);
  const std::string address = absl::StrCat("127.0.0.1:", worker_ports_[i]);
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    auto info = client->GetModelInfo();
    if (info.ok()) {
      for (const auto& w : info->workers()) {
        if (w.address() == address && w.up() == up) return absl::OkStatus();
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return absl::DeadlineExceededError(absl::StrCat(
      "worker ", address, " not ", up ? "up" : "down", " in time"));
}

std::string Deployment::PeakRss() const {
  auto mib = [](const Process* p) -> std::string {
    const double v = p == nullptr ? -1 : p->StatusMiB("VmHWM");
    return v < 0 ? "-" : absl::StrCat(static_cast<int64_t>(v));
  };
  std::vector<std::string> workers;
  for (const auto& w : workers_) workers.push_back(mib(w.get()));
  return absl::StrCat("peak RSS: router ", mib(router_.get()), " MiB, workers ",
                      absl::StrJoin(workers, ", "), " MiB");
}

std::string Deployment::router_address() const {
  return absl::StrCat("127.0.0.1:", router_port_);
}

std::string Deployment::router_metrics_address() const {
  return absl::StrCat("127.0.0.1:", router_metrics_port_);
}

std::string Deployment::worker_metrics_address(int i) const {
  return absl::StrCat("127.0.0.1:", worker_metrics_ports_[i]);
}

}  // namespace moe::testing
