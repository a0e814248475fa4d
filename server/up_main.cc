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
#include "proto/tls.h"
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
ABSL_FLAG(bool, warmup, true,
          "Passed to the router and the workers: a warm-up before each "
          "reports SERVING.");
ABSL_FLAG(int, workers, 2, "Number of expert workers.");
ABSL_FLAG(std::string, host, "127.0.0.1", "Address everything listens on.");
ABSL_FLAG(int, port, 50051, "Router port; 0 picks a free one.");
ABSL_FLAG(std::string, port_file, "", "Write the router port here when ready.");
ABSL_FLAG(std::string, on_expert_failure, "drop", "Passed to moe-router.");
ABSL_FLAG(std::string, wire_dtype, "float32", "Passed to moe-router.");
ABSL_FLAG(std::string, compute_dtype, "float32",
          "Passed to the workers: float32 (exact) or bfloat16 (faster, "
          "relative RMS error about 4e-3; docs/numerics.md).");
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
ABSL_FLAG(std::string, tls_cert_file, "",
          "Serve TLS on every hop with this certificate (it must name the "
          "--host; with --tls_client_ca_file it is also the router's client "
          "certificate toward the workers, so give it both serverAuth and "
          "clientAuth); needs --tls_key_file and --tls_ca_file.");
ABSL_FLAG(std::string, tls_key_file, "", "Private key of --tls_cert_file.");
ABSL_FLAG(std::string, tls_ca_file, "",
          "CA that signed --tls_cert_file: the router checks the workers "
          "with it, moe-up checks everyone's health with it.");
ABSL_FLAG(std::string, tls_client_ca_file, "",
          "Require client certificates of this CA on the router and the "
          "workers (mutual TLS).");
ABSL_FLAG(std::string, auth_tokens_file, "",
          "Passed to moe-router: bearer tokens Forward requires.");
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

// How moe-up itself reaches the children (for their health).
client::ClientOptions probe_options;

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
    auto health =
        client::CheckHealth(absl::StrCat(host, ":", c.port),
                            absl::Milliseconds(500), "", probe_options);
    if (health.ok() &&
        *health == grpc::health::v1::HealthCheckResponse::SERVING) {
      return absl::OkStatus();
    }
  }
}

// The work directory: --work_dir, or a temporary one removed on exit.
class WorkDir {
 public:
  static absl::StatusOr<WorkDir> Create() {
    WorkDir d;
    d.path_ = absl::GetFlag(FLAGS_work_dir);
    if (d.path_.empty()) {
      std::string tmpl =
          (std::filesystem::temp_directory_path() / "moe-up-XXXXXX").string();
      if (::mkdtemp(tmpl.data()) == nullptr) {
        return absl::InternalError("cannot create a temporary directory");
      }
      d.path_ = tmpl;
      d.remove_ = true;
    }
    std::filesystem::create_directories(d.path_);
    return d;
  }
  WorkDir(WorkDir&& o) noexcept
      : path_(std::move(o.path_)), remove_(o.remove_) {
    o.remove_ = false;
  }
  ~WorkDir() {
    if (remove_) std::filesystem::remove_all(path_);
  }
  const std::string& path() const { return path_; }

 private:
  WorkDir() = default;
  std::string path_;
  bool remove_ = false;
};

// --checkpoint, or the demo model written into `dir` by moe-run.
absl::StatusOr<std::string> CheckpointToServe(const std::string& bin,
                                              const std::string& dir) {
  std::string checkpoint = absl::GetFlag(FLAGS_checkpoint);
  if (!checkpoint.empty()) return checkpoint;
  checkpoint = dir + "/demo.safetensors";
  const int layers = absl::GetFlag(FLAGS_demo_layers);
  MOE_LOG(INFO) << "no --checkpoint: writing the demo model (" << layers
                << " layer(s) of dim 512, 16 experts, hidden_mult 4, seed "
                << absl::GetFlag(FLAGS_seed) << ") to " << checkpoint;
  MOE_ASSIGN_OR_RETURN(
      pid_t pid,
      Spawn({bin + "/moe-run", "demo-checkpoint", "--output=" + checkpoint,
             absl::StrCat("--layers=", layers),
             absl::StrCat("--seed=", absl::GetFlag(FLAGS_seed))},
            /*blas_threads=*/1));
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(
        absl::StrCat("moe-run demo-checkpoint ", DescribeExit(status)));
  }
  return checkpoint;
}

// The children of one deployment, started in order and stopped together.
class Fleet {
 public:
  Fleet(std::string bin, std::string dir, std::string checkpoint)
      : bin_(std::move(bin)),
        dir_(std::move(dir)),
        checkpoint_(std::move(checkpoint)),
        host_(absl::GetFlag(FLAGS_host)),
        deadline_(absl::Now() +
                  absl::Seconds(absl::GetFlag(FLAGS_start_timeout_seconds))) {}
  ~Fleet() { StopAll(children_); }

  // Starts the workers, each with its share of every layer, then waits for
  // them all.
  absl::Status StartWorkers(int n, const common::ModelSpec& spec) {
    const int64_t max_rows = 2 * absl::GetFlag(FLAGS_max_tokens_per_request);
    for (int i = 0; i < n; ++i) {
      absl::StatusOr<server::ExpertSelection> shard =
          server::ShardSelection(i, n, spec);
      if (!shard.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("--workers=", n, ": ", shard.status().message()));
      }
      Child& c = Add(absl::StrCat("worker ", i, " (experts ",
                                  server::DescribeSelection(*shard, spec), ")"),
                     absl::StrCat("worker-", i));
      std::vector<std::string> argv = {
          bin_ + "/moe-expert", "--checkpoint=" + checkpoint_,
          absl::StrCat("--shard=", i), absl::StrCat("--num_shards=", n),
          absl::StrCat("--max_tokens_per_call=", max_rows),
          "--compute_dtype=" + absl::GetFlag(FLAGS_compute_dtype),
          // bfloat16 GEMMs run on LibTorch's threads, sized as OpenBLAS's.
          absl::StrCat("--compute_threads_bf16=", BlasThreadsPerChild(n)),
          "--port=0"};
      AddServerTls(argv);
      MOE_ASSIGN_OR_RETURN(
          c.pid, Spawn(Common(c, std::move(argv)), BlasThreadsPerChild(n)));
    }
    for (Child& c : children_) MOE_RETURN_IF_ERROR(WaitReady(c));
    return absl::OkStatus();
  }

  // Starts the router on the workers and waits until it is SERVING.
  absl::Status StartRouter() {
    std::vector<std::string> workers;
    for (const Child& c : children_) {
      workers.push_back(absl::StrCat(host_, ":", c.port));
    }
    Child& router = Add("router", "router");
    std::vector<std::string> argv = {
        bin_ + "/moe-router",
        "--checkpoint=" + checkpoint_,
        "--workers=" + absl::StrJoin(workers, ","),
        absl::StrCat("--port=", absl::GetFlag(FLAGS_port)),
        "--on_expert_failure=" + absl::GetFlag(FLAGS_on_expert_failure),
        "--wire_dtype=" + absl::GetFlag(FLAGS_wire_dtype),
        absl::StrCat("--batch_window_us=",
                     absl::GetFlag(FLAGS_batch_window_us)),
        absl::StrCat("--max_tokens_per_request=",
                     absl::GetFlag(FLAGS_max_tokens_per_request))};
    AddServerTls(argv);
    if (!absl::GetFlag(FLAGS_tls_ca_file).empty()) {
      argv.push_back("--worker_tls_ca_file=" +
                     absl::GetFlag(FLAGS_tls_ca_file));
    }
    if (!absl::GetFlag(FLAGS_tls_client_ca_file).empty()) {
      argv.push_back("--worker_tls_cert_file=" +
                     absl::GetFlag(FLAGS_tls_cert_file));
      argv.push_back("--worker_tls_key_file=" +
                     absl::GetFlag(FLAGS_tls_key_file));
    }
    if (!absl::GetFlag(FLAGS_auth_tokens_file).empty()) {
      argv.push_back("--auth_tokens_file=" +
                     absl::GetFlag(FLAGS_auth_tokens_file));
    }
    MOE_ASSIGN_OR_RETURN(router.pid, Spawn(Common(router, std::move(argv)),
                                           /*blas_threads=*/1));
    return WaitReady(router);
  }

  std::string router_address() const {
    return absl::StrCat(host_, ":", children_.back().port);
  }
  int router_port() const { return children_.back().port; }

  // "router HOST:PORT", "router_metrics HOST:PORT", "worker<i> ...", ...
  std::string Endpoints() const {
    std::string endpoints;
    for (size_t i = 0; i < children_.size(); ++i) {
      const Child& c = children_[i];
      const std::string name =
          c.name == "router" ? "router" : absl::StrCat("worker", i);
      std::ifstream in(c.metrics_port_file);
      std::string metrics_port;
      in >> metrics_port;
      absl::StrAppend(&endpoints, name, " ", host_, ":", c.port, "\n", name,
                      "_metrics ", host_, ":", metrics_port, "\n");
    }
    return endpoints;
  }

  // Serves until SIGTERM/SIGINT (OK) or until a child dies (UNAVAILABLE).
  absl::Status Supervise() {
    for (;;) {
      if (ShutdownRequested(absl::Milliseconds(200))) {
        MOE_LOG(INFO) << "stopping the router and " << children_.size() - 1
                      << " workers";
        StopAll(children_);
        return absl::OkStatus();
      }
      if (std::string dead = ReapDeadChild(children_); !dead.empty()) {
        MOE_LOG(ERROR) << dead << "; stopping the others";
        StopAll(children_);
        return absl::UnavailableError(dead);
      }
    }
  }

 private:
  Child& Add(std::string name, const std::string& file) {
    Child c;
    c.name = std::move(name);
    c.port_file = absl::StrCat(dir_, "/", file, ".port");
    c.metrics_port_file = absl::StrCat(dir_, "/", file, ".metrics.port");
    std::filesystem::remove(c.port_file);
    std::filesystem::remove(c.metrics_port_file);
    children_.push_back(std::move(c));
    return children_.back();
  }

  // The flags every child gets: where it listens and reports its ports.
  std::vector<std::string> Common(const Child& c,
                                  std::vector<std::string> argv) const {
    for (std::string flag :
         {"--host=" + host_, "--port_file=" + c.port_file,
          std::string("--metrics_port=0"),
          "--metrics_port_file=" + c.metrics_port_file,
          absl::StrCat("--reflection=", absl::GetFlag(FLAGS_reflection)),
          absl::StrCat("--warmup=", absl::GetFlag(FLAGS_warmup))}) {
      argv.push_back(std::move(flag));
    }
    return argv;
  }

  // The server side of TLS, the same for the router and the workers.
  static void AddServerTls(std::vector<std::string>& argv) {
    if (absl::GetFlag(FLAGS_tls_cert_file).empty()) return;
    argv.push_back("--tls_cert_file=" + absl::GetFlag(FLAGS_tls_cert_file));
    argv.push_back("--tls_key_file=" + absl::GetFlag(FLAGS_tls_key_file));
    if (!absl::GetFlag(FLAGS_tls_client_ca_file).empty()) {
      argv.push_back("--tls_client_ca_file=" +
                     absl::GetFlag(FLAGS_tls_client_ca_file));
    }
  }

  absl::Status WaitReady(Child& c) {
    return ::moe::WaitReady(c, children_, deadline_, host_);
  }

  const std::string bin_, dir_, checkpoint_, host_;
  const absl::Time deadline_;
  std::vector<Child> children_;
};

absl::Status WriteFileAtomically(const std::string& path,
                                 const std::string& text) {
  const std::string tmp = path + ".tmp";
  std::ofstream(tmp) << text;
  std::error_code error;
  std::filesystem::rename(tmp, path, error);
  if (error) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot write ", path, ": ", error.message()));
  }
  return absl::OkStatus();
}

// moe-up's own TLS toward the children: their CA, and its certificate when
// they require one.
absl::Status ProbeOptionsFromFlags() {
  proto::TlsFiles tls;
  tls.ca_file = absl::GetFlag(FLAGS_tls_ca_file);
  if (!absl::GetFlag(FLAGS_tls_cert_file).empty() && tls.ca_file.empty()) {
    return absl::InvalidArgumentError(
        "--tls_cert_file needs --tls_ca_file (the CA that signed it)");
  }
  if (!absl::GetFlag(FLAGS_tls_client_ca_file).empty()) {
    tls.cert_file = absl::GetFlag(FLAGS_tls_cert_file);
    tls.key_file = absl::GetFlag(FLAGS_tls_key_file);
  }
  tls.flag_prefix = "--tls";
  MOE_ASSIGN_OR_RETURN(probe_options.credentials,
                       proto::MakeChannelCredentials(tls));
  return absl::OkStatus();
}

absl::Status Run() {
  const int n = absl::GetFlag(FLAGS_workers);
  MOE_RETURN_IF_ERROR(ProbeOptionsFromFlags());
  MOE_ASSIGN_OR_RETURN(WorkDir dir, WorkDir::Create());
  const std::string bin = SelfDir();
  MOE_ASSIGN_OR_RETURN(std::string checkpoint,
                       CheckpointToServe(bin, dir.path()));
  common::ModelSpec spec;
  {
    MOE_ASSIGN_OR_RETURN(std::unique_ptr<common::Checkpoint> ckpt,
                         common::Checkpoint::Open(checkpoint));
    spec = ckpt->spec();
  }
  int64_t experts = 0;
  for (const common::LayerSpec& l : spec.layers) {
    experts += l.config.total_experts();
  }

  Fleet fleet(bin, dir.path(), checkpoint);
  MOE_RETURN_IF_ERROR(fleet.StartWorkers(n, spec));
  MOE_RETURN_IF_ERROR(fleet.StartRouter());
  const std::string endpoints = fleet.Endpoints();
  if (!absl::GetFlag(FLAGS_endpoints_file).empty()) {
    MOE_RETURN_IF_ERROR(
        WriteFileAtomically(absl::GetFlag(FLAGS_endpoints_file), endpoints));
  }
  if (!absl::GetFlag(FLAGS_port_file).empty()) {
    MOE_RETURN_IF_ERROR(server::WritePortFile(absl::GetFlag(FLAGS_port_file),
                                              fleet.router_port()));
  }
  MOE_LOG(INFO) << "ready: router on " << fleet.router_address() << " with "
                << n << " workers (" << spec.layers.size() << " layer(s), "
                << experts << " experts); Ctrl-C stops all\n"
                << endpoints;
  std::printf("%s\n", fleet.router_address().c_str());
  std::fflush(stdout);
  return fleet.Supervise();
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
