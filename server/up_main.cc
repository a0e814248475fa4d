// moe-up: the embedded default. Starts one moe-router and N moe-expert
// workers on one host from one checkpoint (or a generated demo model of 4
// layers, written by moe-run), every worker hosting its share of every
// layer, waits until all are healthy, prints the router's address, and
// stops them all on Ctrl-C or SIGTERM. If a child dies, it stops the others
// and exits non-zero, saying which.
//
//   moe-up [--checkpoint=F] [--workers=2] [--port=50051]
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/cli/command_line.h"
#include "client/router_client.h"
#include "common/checkpoint.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "server/main_helpers.h"
#include "server/metrics_http.h"
#include "server/server_runner.h"

ABSL_FLAG(std::string, checkpoint, "",
          "Checkpoint to serve (default: a generated demo model, the "
          "st-moe-pytorch README configuration).");
ABSL_FLAG(uint64_t, seed, 0, "Seed of the demo model.");
ABSL_FLAG(int, demo_layers, 4,
          "Layers of the demo model (each the README configuration: dim 512, "
          "16 experts).");
ABSL_FLAG(bool, reflection, true, "Passed to the router and the workers.");
ABSL_FLAG(int, workers, 2, "Number of expert workers.");
ABSL_FLAG(std::string, host, "127.0.0.1", "Address everything listens on.");
ABSL_FLAG(int, port, 50051, "Router port; 0 picks a free one.");
ABSL_FLAG(std::string, port_file, "", "Write the router port here when ready.");
ABSL_FLAG(std::string, on_expert_failure, "drop", "Passed to moe-router.");
ABSL_FLAG(std::string, wire_dtype, "float32", "Passed to moe-router.");
ABSL_FLAG(int, batch_window_us, 20000,
          "Passed to moe-router: dynamic batching window (0: off).");
ABSL_FLAG(int64_t, max_tokens_per_request, 65536,
          "Passed to moe-router; the workers get twice as many rows per call "
          "(--max_tokens_per_call).");
ABSL_FLAG(double, start_timeout_seconds, 120,
          "Give up when the deployment is not healthy after this long.");
ABSL_FLAG(std::string, endpoints_file, "",
          "Write the endpoints here when ready, one per line: "
          "\"router HOST:PORT\", \"router_metrics HOST:PORT\", "
          "\"worker<i> HOST:PORT\", \"worker<i>_metrics HOST:PORT\".");
ABSL_FLAG(std::string, work_dir, "",
          "Where port files and the demo model go (default: a temporary "
          "directory, removed on exit).");

namespace moe {
namespace {

struct Child {
  std::string name;
  pid_t pid = -1;
  std::string port_file;
  int port = 0;
  std::string metrics_port_file;
};

std::string SelfDir() {
  return std::filesystem::read_symlink("/proc/self/exe").parent_path().string();
}

// OpenBLAS threads each child may use, so that the N workers (and the
// router) share the cores instead of oversubscribing them: OpenBLAS sizes its
// pool to every core in each process, and its idle threads spin. Measured in
// BENCHMARKS.md. An OPENBLAS_NUM_THREADS already in the environment wins.
int BlasThreadsPerChild(int workers) {
  const long cores = ::sysconf(_SC_NPROCESSORS_ONLN);
  return static_cast<int>(std::max<long>(1, cores / std::max(1, workers)));
}

absl::StatusOr<pid_t> Spawn(const std::vector<std::string>& argv,
                            int blas_threads) {
  pid_t pid = ::fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    // Children take SIGTERM/SIGINT normally; moe-up blocked them for sigwait.
    sigset_t set;
    sigemptyset(&set);
    pthread_sigmask(SIG_SETMASK, &set, nullptr);
    // Keep Ctrl-C in the terminal from reaching the children directly: moe-up
    // stops them in order.
    setpgid(0, 0);
    // Stop with moe-up even if it is killed without a chance to clean up.
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    ::setenv("OPENBLAS_NUM_THREADS", absl::StrCat(blas_threads).c_str(),
             /*overwrite=*/0);
    std::vector<char*> args;
    for (const std::string& a : argv)
      args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    std::perror(("exec " + argv[0]).c_str());
    std::_Exit(127);
  }
  return pid;
}

std::string DescribeExit(int status) {
  if (WIFEXITED(status))
    return absl::StrCat("exited with code ", WEXITSTATUS(status));
  if (WIFSIGNALED(status))
    return absl::StrCat("was killed by signal ", WTERMSIG(status));
  return "stopped";
}

// Reaps any exited child; returns its description, or "" if all run.
std::string ReapDeadChild(std::vector<Child>& children) {
  for (Child& c : children) {
    if (c.pid <= 0) continue;
    int status = 0;
    if (::waitpid(c.pid, &status, WNOHANG) == c.pid) {
      c.pid = -1;
      return absl::StrCat(c.name, " ", DescribeExit(status));
    }
  }
  return "";
}

// Stops one child: SIGTERM, then SIGKILL after `grace`.
void Stop(Child& c, absl::Duration grace) {
  if (c.pid <= 0) return;
  ::kill(c.pid, SIGTERM);
  const absl::Time deadline = absl::Now() + grace;
  int status = 0;
  while (::waitpid(c.pid, &status, WNOHANG) != c.pid) {
    if (absl::Now() > deadline) {
      MOE_LOG(WARNING) << c.name << " did not stop in time; killing it";
      ::kill(c.pid, SIGKILL);
      ::waitpid(c.pid, &status, 0);
      break;
    }
    ::usleep(20000);
  }
  c.pid = -1;
}

void StopAll(std::vector<Child>& children) {
  // The router first (the last child), so that its in-flight requests can
  // still reach the workers; then the workers together.
  if (!children.empty() && children.back().name == "router") {
    Stop(children.back(), absl::Seconds(15));
  }
  for (Child& c : children) {
    if (c.pid > 0) ::kill(c.pid, SIGTERM);
  }
  for (Child& c : children) Stop(c, absl::Seconds(15));
}

bool ShutdownRequested(absl::Duration wait) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  timespec ts{static_cast<time_t>(absl::ToInt64Seconds(wait)),
              static_cast<long>(absl::ToInt64Nanoseconds(
                  wait - absl::Seconds(absl::ToInt64Seconds(wait))))};
  return sigtimedwait(&set, nullptr, &ts) > 0;
}

// Waits for the child's port file and then its health; "" on success.
absl::Status WaitReady(Child& c, std::vector<Child>& all, absl::Time deadline,
                       const std::string& host) {
  for (;;) {
    if (std::string dead = ReapDeadChild(all); !dead.empty()) {
      return absl::UnavailableError(dead + " during start-up");
    }
    if (ShutdownRequested(absl::Milliseconds(50))) {
      return absl::CancelledError("interrupted during start-up");
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat(c.name, " not healthy after ",
                       absl::GetFlag(FLAGS_start_timeout_seconds), " s"));
    }
    if (c.port == 0) {
      std::ifstream in(c.port_file);
      std::string text;
      if (!(in >> text) || !absl::SimpleAtoi(text, &c.port)) continue;
    }
    auto health = client::CheckHealth(absl::StrCat(host, ":", c.port),
                                      absl::Milliseconds(500));
    if (health.ok() &&
        *health == grpc::health::v1::HealthCheckResponse::SERVING) {
      return absl::OkStatus();
    }
  }
}

absl::Status Run() {
  const int n = absl::GetFlag(FLAGS_workers);
  const std::string host = absl::GetFlag(FLAGS_host);
  std::string dir = absl::GetFlag(FLAGS_work_dir);
  bool remove_dir = false;
  if (dir.empty()) {
    std::string tmpl =
        (std::filesystem::temp_directory_path() / "moe-up-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) {
      return absl::InternalError("cannot create a temporary directory");
    }
    dir = tmpl;
    remove_dir = true;
  }
  std::filesystem::create_directories(dir);
  struct Cleanup {
    std::string dir;
    bool remove;
    ~Cleanup() {
      if (remove) std::filesystem::remove_all(dir);
    }
  } cleanup{dir, remove_dir};

  const std::string bin = SelfDir();
  std::string checkpoint = absl::GetFlag(FLAGS_checkpoint);
  if (checkpoint.empty()) {
    checkpoint = dir + "/demo.safetensors";
    const int layers = absl::GetFlag(FLAGS_demo_layers);
    MOE_LOG(INFO) << "no --checkpoint: writing the demo model (" << layers
                  << " layer(s) of dim 512, 16 experts, hidden_mult 4, seed "
                  << absl::GetFlag(FLAGS_seed) << ") to " << checkpoint;
    std::vector<std::string> argv = {
        bin + "/moe-run", "demo-checkpoint", "--output=" + checkpoint,
        absl::StrCat("--layers=", layers),
        absl::StrCat("--seed=", absl::GetFlag(FLAGS_seed))};
    MOE_ASSIGN_OR_RETURN(pid_t pid, Spawn(argv, /*blas_threads=*/1));
    int status = 0;
    ::waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      return absl::InternalError(
          absl::StrCat("moe-run demo-checkpoint ", DescribeExit(status)));
    }
  }
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<common::Checkpoint> ckpt,
                       common::Checkpoint::Open(checkpoint));
  const common::ModelSpec spec = ckpt->spec();
  ckpt.reset();
  int64_t experts = 0;
  for (const common::LayerSpec& l : spec.layers) {
    experts += l.config.total_experts();
  }
  std::vector<Child> children;
  const int64_t max_tokens = absl::GetFlag(FLAGS_max_tokens_per_request);
  const std::string reflection =
      absl::StrCat("--reflection=", absl::GetFlag(FLAGS_reflection));
  for (int i = 0; i < n; ++i) {
    absl::StatusOr<server::ExpertSelection> shard =
        server::ShardSelection(i, n, spec);
    if (!shard.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--workers=", n, ": ", shard.status().message()));
    }
    Child c;
    c.name = absl::StrCat("worker ", i, " (experts ",
                          server::DescribeSelection(*shard, spec), ")");
    c.port_file = absl::StrCat(dir, "/worker-", i, ".port");
    c.metrics_port_file = absl::StrCat(dir, "/worker-", i, ".metrics.port");
    std::filesystem::remove(c.port_file);
    std::filesystem::remove(c.metrics_port_file);
    MOE_ASSIGN_OR_RETURN(
        c.pid,
        Spawn(
            {bin + "/moe-expert", "--checkpoint=" + checkpoint,
             absl::StrCat("--shard=", i), absl::StrCat("--num_shards=", n),
             "--host=" + host, "--port=0", "--port_file=" + c.port_file,
             "--metrics_port=0", "--metrics_port_file=" + c.metrics_port_file},
            BlasThreadsPerChild(n)));
    children.push_back(c);
  }
  const absl::Time deadline =
      absl::Now() + absl::Seconds(absl::GetFlag(FLAGS_start_timeout_seconds));
  absl::Status status;
  for (Child& c : children) {
    status = WaitReady(c, children, deadline, host);
    if (!status.ok()) break;
  }
  if (status.ok()) {
    std::vector<std::string> addresses;
    for (const Child& c : children) {
      addresses.push_back(absl::StrCat(host, ":", c.port));
    }
    Child router;
    router.name = "router";
    router.port_file = dir + "/router.port";
    router.metrics_port_file = dir + "/router.metrics.port";
    std::filesystem::remove(router.port_file);
    std::filesystem::remove(router.metrics_port_file);
    MOE_ASSIGN_OR_RETURN(
        router.pid,
        Spawn(
            {bin + "/moe-router", "--checkpoint=" + checkpoint,
             "--workers=" + absl::StrJoin(addresses, ","), "--host=" + host,
             absl::StrCat("--port=", absl::GetFlag(FLAGS_port)),
             "--port_file=" + router.port_file, "--metrics_port=0",
             "--metrics_port_file=" + router.metrics_port_file,
             "--on_expert_failure=" + absl::GetFlag(FLAGS_on_expert_failure),
             "--wire_dtype=" + absl::GetFlag(FLAGS_wire_dtype),
             absl::StrCat("--batch_window_us=",
                          absl::GetFlag(FLAGS_batch_window_us)),
             absl::StrCat("--max_tokens_per_request=", max_tokens), reflection},
            /*blas_threads=*/1));
    children.push_back(router);
    status = WaitReady(children.back(), children, deadline, host);
  }
  if (!status.ok()) {
    StopAll(children);
    return status;
  }
  const std::string address = absl::StrCat(host, ":", children.back().port);
  std::string endpoints;
  for (size_t i = 0; i < children.size(); ++i) {
    const Child& c = children[i];
    const std::string name =
        c.name == "router" ? "router" : absl::StrCat("worker", i);
    std::ifstream in(c.metrics_port_file);
    std::string metrics_port;
    in >> metrics_port;
    absl::StrAppend(&endpoints, name, " ", host, ":", c.port, "\n", name,
                    "_metrics ", host, ":", metrics_port, "\n");
  }
  if (!absl::GetFlag(FLAGS_endpoints_file).empty()) {
    const std::string tmp = absl::GetFlag(FLAGS_endpoints_file) + ".tmp";
    std::ofstream(tmp) << endpoints;
    std::filesystem::rename(tmp, absl::GetFlag(FLAGS_endpoints_file));
  }
  if (!absl::GetFlag(FLAGS_port_file).empty()) {
    MOE_RETURN_IF_ERROR(server::WritePortFile(absl::GetFlag(FLAGS_port_file),
                                              children.back().port));
  }
  MOE_LOG(INFO) << "ready: router on " << address << " with " << n
                << " workers (" << spec.layers.size() << " layer(s), "
                << experts << " experts); Ctrl-C stops all\n"
                << endpoints;
  std::printf("%s\n", address.c_str());
  std::fflush(stdout);

  for (;;) {
    if (ShutdownRequested(absl::Milliseconds(200))) {
      MOE_LOG(INFO) << "stopping the router and " << n << " workers";
      StopAll(children);
      return absl::OkStatus();
    }
    if (std::string dead = ReapDeadChild(children); !dead.empty()) {
      MOE_LOG(ERROR) << dead << "; stopping the others";
      StopAll(children);
      return absl::UnavailableError(dead);
    }
  }
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  moe::server::BlockShutdownSignals();
  moe::cli::ParseCommandLine(
      argc, argv, "moe-up",
      "starts a router and N expert workers on one host and stops them all "
      "on Ctrl-C.\n\n  moe-up [--checkpoint=F] [--workers=2] [--port=50051]");
  return moe::cli::ExitCode(moe::Run());
}
