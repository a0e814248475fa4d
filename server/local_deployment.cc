#include "server/local_deployment.h"

#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/checkpoint.h"
#include "common/expert_set.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "server/server_runner.h"

namespace moe::server {

struct LocalDeployment::Child {
  std::string name;
  std::unique_ptr<ChildProcess> process;
  std::string port_file;
  std::string metrics_port_file;
  int port = 0;
};

namespace {

// OpenBLAS threads each child may use, so that the N workers (and the
// router) share the cores instead of oversubscribing them: OpenBLAS sizes its
// pool to every core in each process, and its idle threads spin. Measured in
// BENCHMARKS.md. An OPENBLAS_NUM_THREADS already in the environment wins.
int BlasThreadsPerChild(int workers) {
  const long cores = ::sysconf(_SC_NPROCESSORS_ONLN);
  return static_cast<int>(std::max<long>(1, cores / std::max(1, workers)));
}

ChildOptions ChildFor(std::vector<std::string> argv, int blas_threads) {
  ChildOptions o;
  o.argv = std::move(argv);
  o.env_defaults = {{"OPENBLAS_NUM_THREADS", absl::StrCat(blas_threads)}};
  // Ctrl-C in the terminal reaches the parent alone, which stops the
  // children in order; they stop with it even if it is killed.
  o.own_process_group = true;
  o.die_with_parent = true;
  return o;
}

}  // namespace

LocalDeployment::LocalDeployment(LocalDeploymentOptions options)
    : options_(std::move(options)),
      deadline_(absl::Now() + options_.start_timeout) {
  options_.probe.interrupted = [this] {
    return ShutdownRequested(absl::Milliseconds(50)) || !DeadChild().empty();
  };
}

LocalDeployment::~LocalDeployment() {
  StopAll();
  if (remove_work_dir_) std::filesystem::remove_all(options_.work_dir);
}

absl::StatusOr<std::unique_ptr<LocalDeployment>> LocalDeployment::Start(
    LocalDeploymentOptions options) {
  std::unique_ptr<LocalDeployment> d(new LocalDeployment(std::move(options)));
  MOE_RETURN_IF_ERROR(d->Prepare());
  MOE_RETURN_IF_ERROR(d->StartWorkers());
  MOE_RETURN_IF_ERROR(d->StartRouter());
  if (d->options_.balance) MOE_RETURN_IF_ERROR(d->StartBalancer());
  return d;
}

// The work directory, the checkpoint (the demo model written by moe-run
// when none is given) and its layers.
absl::Status LocalDeployment::Prepare() {
  if (options_.work_dir.empty()) {
    std::string tmpl =
        (std::filesystem::temp_directory_path() / "moe-up-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) {
      return absl::InternalError("cannot create a temporary directory");
    }
    options_.work_dir = tmpl;
    remove_work_dir_ = true;
  }
  std::filesystem::create_directories(options_.work_dir);
  if (options_.checkpoint.empty()) {
    options_.checkpoint = options_.work_dir + "/demo.safetensors";
    MOE_LOG(INFO) << "no --checkpoint: writing the demo model ("
                  << options_.demo_layers
                  << " layer(s) of dim 512, 16 experts, hidden_mult 4, seed "
                  << options_.seed << ") to " << options_.checkpoint;
    MOE_ASSIGN_OR_RETURN(auto writer,
                         ChildProcess::Start(ChildFor(
                             {options_.bin_dir + "/moe-run", "demo-checkpoint",
                              "--output=" + options_.checkpoint,
                              absl::StrCat("--layers=", options_.demo_layers),
                              absl::StrCat("--seed=", options_.seed)},
                             /*blas_threads=*/1)));
    if (writer->Wait(absl::InfiniteDuration()) != 0) {
      return absl::InternalError(
          absl::StrCat("moe-run demo-checkpoint ", writer->DescribeExit()));
    }
  }
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<common::Checkpoint> ckpt,
                       common::Checkpoint::Open(options_.checkpoint));
  spec_ = ckpt->spec();
  if (options_.balance) {
    // A fresh token per deployment, readable by this user only.
    std::ifstream random("/dev/urandom", std::ios::binary);
    unsigned char bytes[24];
    random.read(reinterpret_cast<char*>(bytes), sizeof(bytes));
    if (!random) return absl::InternalError("cannot read /dev/urandom");
    std::string token;
    for (unsigned char b : bytes)
      absl::StrAppend(&token, absl::Hex(b, absl::kZeroPad2));
    {
      std::ofstream out(AdminTokenFile());
      out << token << "\n";
    }
    std::filesystem::permissions(AdminTokenFile(),
                                 std::filesystem::perms::owner_read |
                                     std::filesystem::perms::owner_write);
    // Every worker takes placement changes; moe-up stops them all at once,
    // so none waits for its experts to move (--leave_timeout=0).
    options_.worker_flags.push_back("--admin_token_file=" + AdminTokenFile());
    options_.worker_flags.push_back("--leave_timeout=0s");
  }
  reported_dead_.assign(options_.workers, false);
  return absl::OkStatus();
}

std::string LocalDeployment::AdminTokenFile() const {
  return options_.work_dir + "/admin-token";
}

absl::Status LocalDeployment::StartBalancer() {
  std::vector<std::string> workers;
  for (size_t i = 0; i + 1 < children_.size(); ++i) {
    workers.push_back(absl::StrCat(options_.host, ":", children_[i].port));
  }
  const std::string port_file = options_.work_dir + "/balancer.metrics.port";
  std::filesystem::remove(port_file);
  std::vector<std::string> argv = {options_.bin_dir + "/moe-balancer",
                                   "--checkpoint=" + options_.checkpoint,
                                   "--workers=" + absl::StrJoin(workers, ","),
                                   "--admin_token_file=" + AdminTokenFile(),
                                   "--metrics_host=" + options_.host,
                                   "--metrics_port=0",
                                   "--metrics_port_file=" + port_file};
  argv.insert(argv.end(), options_.balancer_flags.begin(),
              options_.balancer_flags.end());
  MOE_ASSIGN_OR_RETURN(balancer_, ChildProcess::Start(ChildFor(
                                      std::move(argv), /*blas_threads=*/1)));
  absl::StatusOr<int> port = WaitForPortFile(
      port_file, deadline_, balancer_.get(), options_.probe.interrupted);
  if (!port.ok()) {
    return absl::Status(port.status().code(),
                        absl::StrCat("balancer: ", port.status().message()));
  }
  balancer_metrics_port_ = *port;
  return absl::OkStatus();
}

absl::Status LocalDeployment::StartWorkers() {
  const int n = options_.workers;
  for (int i = 0; i < n; ++i) {
    absl::StatusOr<common::ExpertSet> shard =
        common::ExpertSet::Shard(i, n, spec_);
    if (!shard.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--workers=", n, ": ", shard.status().message()));
    }
    std::vector<std::string> argv = {
        options_.bin_dir + "/moe-expert", "--checkpoint=" + options_.checkpoint,
        absl::StrCat("--shard=", i), absl::StrCat("--num_shards=", n),
        absl::StrCat("--max_tokens_per_call=",
                     2 * options_.max_tokens_per_request),
        // bfloat16 GEMMs run on LibTorch's threads, sized as OpenBLAS's.
        absl::StrCat("--compute_threads_bf16=", BlasThreadsPerChild(n)),
        "--port=0"};
    argv.insert(argv.end(), options_.worker_flags.begin(),
                options_.worker_flags.end());
    MOE_RETURN_IF_ERROR(StartChild(
        absl::StrCat("worker ", i, " (experts ", shard->Describe(spec_), ")"),
        absl::StrCat("worker-", i), std::move(argv), BlasThreadsPerChild(n)));
  }
  for (Child& c : children_) MOE_RETURN_IF_ERROR(WaitReady(c));
  return absl::OkStatus();
}

absl::Status LocalDeployment::StartRouter() {
  std::vector<std::string> workers;
  for (const Child& c : children_) {
    workers.push_back(absl::StrCat(options_.host, ":", c.port));
  }
  std::vector<std::string> argv = {
      options_.bin_dir + "/moe-router", "--checkpoint=" + options_.checkpoint,
      "--workers=" + absl::StrJoin(workers, ","),
      absl::StrCat("--port=", options_.router_port),
      absl::StrCat("--max_tokens_per_request=",
                   options_.max_tokens_per_request)};
  if (options_.router_http_port >= 0) {
    argv.push_back(absl::StrCat("--http_port=", options_.router_http_port));
    argv.push_back("--http_port_file=" + HttpPortFile());
  }
  argv.insert(argv.end(), options_.router_flags.begin(),
              options_.router_flags.end());
  MOE_RETURN_IF_ERROR(
      StartChild("router", "router", std::move(argv), /*blas_threads=*/1));
  return WaitReady(children_.back());
}

absl::Status LocalDeployment::StartChild(std::string name,
                                         const std::string& file,
                                         std::vector<std::string> argv,
                                         int blas_threads) {
  Child c;
  c.name = std::move(name);
  c.port_file = absl::StrCat(options_.work_dir, "/", file, ".port");
  c.metrics_port_file =
      absl::StrCat(options_.work_dir, "/", file, ".metrics.port");
  std::filesystem::remove(c.port_file);
  std::filesystem::remove(c.metrics_port_file);
  // Where every child listens and reports its ports.
  for (std::string flag :
       {"--host=" + options_.host, "--port_file=" + c.port_file,
        std::string("--metrics_port=0"),
        "--metrics_port_file=" + c.metrics_port_file}) {
    argv.push_back(std::move(flag));
  }
  argv.insert(argv.end(), options_.common_flags.begin(),
              options_.common_flags.end());
  MOE_ASSIGN_OR_RETURN(
      c.process, ChildProcess::Start(ChildFor(std::move(argv), blas_threads)));
  children_.push_back(std::move(c));
  return absl::OkStatus();
}

// Its port file, then its health; a dead child or a signal ends the wait.
absl::Status LocalDeployment::WaitReady(Child& c) {
  absl::StatusOr<int> port = WaitForPortFile(
      c.port_file, deadline_, c.process.get(), options_.probe.interrupted);
  absl::Status status = port.status();
  if (port.ok()) {
    c.port = *port;
    status = WaitServing(absl::StrCat(options_.host, ":", c.port), deadline_,
                         c.process.get(), options_.probe);
  }
  if (absl::IsCancelled(status)) {
    const std::string dead = DeadChild();
    return dead.empty() ? absl::CancelledError("interrupted during start-up")
                        : absl::UnavailableError(dead + " during start-up");
  }
  if (absl::IsDeadlineExceeded(status)) {
    return absl::DeadlineExceededError(
        absl::StrCat(c.name, " not healthy after ",
                     absl::FormatDuration(options_.start_timeout)));
  }
  if (!status.ok()) {
    return absl::Status(status.code(),
                        absl::StrCat(c.name, ": ", status.message()));
  }
  return absl::OkStatus();
}

std::string LocalDeployment::DeadChild() {
  for (size_t i = 0; i < children_.size(); ++i) {
    Child& c = children_[i];
    if (c.process == nullptr || c.process->running()) continue;
    const std::string dead =
        absl::StrCat(c.name, " ", c.process->DescribeExit());
    // Under the balancer a lost worker is healed, not a reason to stop.
    if (options_.balance && c.name != "router" && i < reported_dead_.size()) {
      if (!reported_dead_[i]) {
        reported_dead_[i] = true;
        MOE_LOG(WARNING) << dead
                         << "; serving on: the balancer places its experts "
                            "on the other workers";
      }
      continue;
    }
    return dead;
  }
  if (balancer_ != nullptr && !balancer_->running()) {
    return absl::StrCat("balancer ", balancer_->DescribeExit());
  }
  return "";
}

void LocalDeployment::StopAll() {
  auto stop = [](Child& c) {
    if (c.process != nullptr && !c.process->Stop(absl::Seconds(15))) {
      MOE_LOG(WARNING) << c.name << " did not stop in time; killed it";
    }
  };
  // The balancer first (no placement change while stopping), then the
  // router, so that its in-flight requests can still reach the workers;
  // then the workers together.
  if (balancer_ != nullptr && !balancer_->Stop(absl::Seconds(15))) {
    MOE_LOG(WARNING) << "the balancer did not stop in time; killed it";
  }
  if (!children_.empty() && children_.back().name == "router") {
    stop(children_.back());
  }
  for (Child& c : children_) {
    if (c.process != nullptr) c.process->Signal(SIGTERM);
  }
  for (Child& c : children_) stop(c);
}

std::string LocalDeployment::HttpPortFile() const {
  return options_.work_dir + "/router.http.port";
}

std::string LocalDeployment::router_address() const {
  return absl::StrCat(options_.host, ":", router_port());
}

int LocalDeployment::router_port() const { return children_.back().port; }

std::string LocalDeployment::Endpoints() const {
  std::string endpoints;
  for (size_t i = 0; i < children_.size(); ++i) {
    const Child& c = children_[i];
    const std::string name =
        c.name == "router" ? "router" : absl::StrCat("worker", i);
    std::ifstream in(c.metrics_port_file);
    std::string metrics_port;
    in >> metrics_port;
    absl::StrAppend(&endpoints, name, " ", options_.host, ":", c.port, "\n",
                    name, "_metrics ", options_.host, ":", metrics_port, "\n");
  }
  if (balancer_ != nullptr) {
    absl::StrAppend(&endpoints, "balancer_metrics ", options_.host, ":",
                    balancer_metrics_port_, "\n");
  }
  if (options_.router_http_port >= 0) {
    std::ifstream in(HttpPortFile());
    std::string http_port;
    in >> http_port;
    absl::StrAppend(&endpoints, "router_http ", options_.host, ":", http_port,
                    "\n");
  }
  return endpoints;
}

absl::Status LocalDeployment::Supervise() {
  for (;;) {
    if (ShutdownRequested(absl::Milliseconds(200))) {
      MOE_LOG(INFO) << "stopping the router and " << children_.size() - 1
                    << " workers";
      StopAll();
      return absl::OkStatus();
    }
    if (std::string dead = DeadChild(); !dead.empty()) {
      MOE_LOG(ERROR) << dead << "; stopping the others";
      StopAll();
      return absl::UnavailableError(dead);
    }
  }
}

}  // namespace moe::server
