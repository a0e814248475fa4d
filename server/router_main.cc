// moe-router: the client-facing gRPC server. Loads the gate (and the norms
// and feed-forwards of a block) from a checkpoint, learns which worker hosts
// which expert, routes, fans out, combines.
//
//   moe-router --checkpoint=model.safetensors
//       --workers=10.0.0.2:50052,10.0.0.3:50052 --port=50051
//
// Health turns SERVING once every expert has a healthy worker.
#include <signal.h>

#include <cstdlib>
#include <fstream>
#include <limits>
#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/checkpoint.h"
#include "common/flags_util.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "router/engine/moe_engine.h"
#include "router/service/router_service.h"
#include "router/service/worker_pool.h"
#include "server/metrics_http.h"
#include "server/rpc_metrics.h"
#include "server/server_runner.h"

ABSL_FLAG(std::string, checkpoint, "", "Checkpoint (safetensors) to serve.");
ABSL_FLAG(std::string, workers, "",
          "Expert workers, HOST:PORT,HOST:PORT,... (or use --workers_file).");
ABSL_FLAG(std::string, workers_file, "",
          "File with one worker HOST:PORT per line.");
ABSL_FLAG(std::string, worker_template, "",
          "Workers by stable name, e.g. moe-expert-{i}.moe-expert:50052 "
          "(a StatefulSet's pods), with --num_workers. Names are resolved and "
          "re-resolved by gRPC; workers may start after the router.");
ABSL_FLAG(int, num_workers, 0, "Number of workers of --worker_template.");
ABSL_FLAG(std::string, host, "0.0.0.0", "Address to listen on.");
ABSL_FLAG(int, port, 50051, "Port to listen on; 0 picks a free one.");
ABSL_FLAG(std::string, port_file, "",
          "Write the port here once listening (useful with --port=0).");
ABSL_FLAG(std::string, on_expert_failure, "drop",
          "When an expert's workers fail: drop (its assignments are dropped "
          "and the response is marked degraded) or fail (UNAVAILABLE).");
ABSL_FLAG(int64_t, max_tokens_per_request, 65536,
          "Largest batch x tokens of one request (RESOURCE_EXHAUSTED above).");
ABSL_FLAG(int, worker_timeout_ms, 30000,
          "Deadline of one worker call when the client sets none shorter.");
ABSL_FLAG(std::string, wire_dtype, "float32",
          "Token dtype on the router-to-worker hop: float32, bfloat16, "
          "float16.");
ABSL_FLAG(int, threads, 8,
          "Forwards in progress at once (each waits for its workers on a "
          "thread; the router's own work is a small share).");
ABSL_FLAG(int, batch_window_us, 20000,
          "Dynamic batching: concurrent forwards share one RunExperts call "
          "per worker (each forward is still routed on its own, capacity per "
          "request). A worker's batch is sent as soon as the worker has no "
          "call of ours in flight and no other forward is still gating, else "
          "after at most this many microseconds. A lone request never waits. "
          "0 turns batching off.");
ABSL_FLAG(int64_t, batch_max_tokens, 16384,
          "Token rows above which a worker batch takes no more forwards.");
ABSL_FLAG(int, max_queued, 64,
          "Requests that may wait; more are refused with RESOURCE_EXHAUSTED.");
ABSL_FLAG(int, probe_interval_ms, 1000, "Worker health probe interval.");
ABSL_FLAG(double, start_timeout_seconds, 0,
          "Give up when experts stay without a worker this long at start "
          "(0: wait forever).");
ABSL_FLAG(double, grace_seconds, 10, "Time in-flight calls get on shutdown.");
ABSL_FLAG(int, metrics_port, 9464,
          "Port of the Prometheus /metrics endpoint; 0 picks a free one, -1 "
          "disables it.");
ABSL_FLAG(std::string, metrics_port_file, "",
          "Write the metrics port here once listening.");
ABSL_FLAG(double, balance_window_seconds, 60,
          "Window of moe_router_load_balancedness.");

namespace moe {
namespace {

absl::StatusOr<std::vector<std::string>> WorkerAddresses() {
  std::vector<std::string> out =
      common::SplitList(absl::GetFlag(FLAGS_workers));
  const std::string file = absl::GetFlag(FLAGS_workers_file);
  if (!file.empty()) {
    std::ifstream in(file);
    if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", file));
    std::string line;
    while (std::getline(in, line)) {
      for (std::string& a : common::SplitList(line)) {
        if (a[0] != '#') out.push_back(a);
      }
    }
  }
  const std::string pattern = absl::GetFlag(FLAGS_worker_template);
  if (!pattern.empty()) {
    absl::StatusOr<std::vector<std::string>> expanded =
        common::ExpandTemplate(pattern, absl::GetFlag(FLAGS_num_workers));
    if (!expanded.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--worker_template/--num_workers: ", expanded.status().message()));
    }
    out.insert(out.end(), expanded->begin(), expanded->end());
  }
  if (out.empty()) {
    return absl::InvalidArgumentError(
        "no workers: give --workers=HOST:PORT,..., --workers_file or "
        "--worker_template with --num_workers");
  }
  return out;
}

absl::StatusOr<moe::v1::DType> WireDType(const std::string& name) {
  if (name == "float32") return moe::v1::FLOAT32;
  if (name == "bfloat16") return moe::v1::BFLOAT16;
  if (name == "float16") return moe::v1::FLOAT16;
  return absl::InvalidArgumentError(
      "--wire_dtype must be float32, bfloat16 or float16");
}

// Waits until every expert has a healthy worker; false on SIGTERM/SIGINT.
absl::StatusOr<bool> WaitForCoverage(const router::WorkerPool& pool) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  const double limit = absl::GetFlag(FLAGS_start_timeout_seconds);
  const absl::Time start = absl::Now();
  absl::Time last_log = start;
  for (;;) {
    std::vector<int64_t> missing = pool.UncoveredExperts();
    if (missing.empty()) return true;
    if (limit > 0 && absl::Now() - start > absl::Seconds(limit)) {
      return absl::UnavailableError(absl::StrCat("experts [",
                                                 absl::StrJoin(missing, ","),
                                                 "] have no healthy worker "
                                                 "after ",
                                                 limit, " s"));
    }
    if (absl::Now() - last_log > absl::Seconds(5)) {
      MOE_LOG(INFO) << "waiting for workers: experts ["
                    << absl::StrJoin(missing, ",") << "] have none yet";
      last_log = absl::Now();
    }
    timespec ts{0, 50 * 1000 * 1000};
    if (sigtimedwait(&set, nullptr, &ts) > 0) return false;
  }
}

absl::Status Run() {
  const std::string path = absl::GetFlag(FLAGS_checkpoint);
  if (path.empty())
    return absl::InvalidArgumentError("--checkpoint is required");
  MOE_ASSIGN_OR_RETURN(std::vector<std::string> addresses, WorkerAddresses());
  router::RouterServiceOptions options;
  MOE_ASSIGN_OR_RETURN(
      options.on_failure,
      router::ParseFailurePolicy(absl::GetFlag(FLAGS_on_expert_failure)));
  MOE_ASSIGN_OR_RETURN(options.wire_dtype,
                       WireDType(absl::GetFlag(FLAGS_wire_dtype)));
  options.max_tokens_per_request = absl::GetFlag(FLAGS_max_tokens_per_request);
  if (options.max_tokens_per_request < 1) {
    return absl::InvalidArgumentError("--max_tokens_per_request must be >= 1");
  }
  options.worker_timeout =
      absl::Milliseconds(absl::GetFlag(FLAGS_worker_timeout_ms));
  options.threads = absl::GetFlag(FLAGS_threads);
  options.max_queued = static_cast<size_t>(absl::GetFlag(FLAGS_max_queued));
  if (options.threads < 1) {
    return absl::InvalidArgumentError("--threads must be >= 1");
  }
  const int window_us = absl::GetFlag(FLAGS_batch_window_us);
  if (window_us < 0 || window_us > 1000000) {
    return absl::InvalidArgumentError(
        "--batch_window_us must be in [0, 1000000]");
  }
  options.batch_window = absl::Microseconds(window_us);
  options.batch_max_rows = absl::GetFlag(FLAGS_batch_max_tokens);
  if (options.batch_max_rows < 1) {
    return absl::InvalidArgumentError("--batch_max_tokens must be >= 1");
  }

  common::LoadOptions load;
  load.experts = std::vector<int64_t>{};
  MOE_ASSIGN_OR_RETURN(common::Checkpoint ckpt,
                       common::LoadCheckpoint(path, load));
  const common::ModelConfig config = ckpt.config;
  MOE_ASSIGN_OR_RETURN(auto engine,
                       router::MoeEngine::Create(config, std::move(ckpt.router),
                                                 /*backend=*/nullptr));
  router::WorkerPoolOptions pool_options;
  pool_options.probe_interval =
      absl::Milliseconds(absl::GetFlag(FLAGS_probe_interval_ms));
  // A worker call carries one forward's rows (up to two per token) or a
  // batch of up to --batch_max_tokens rows.
  const int64_t max_rows = std::max<int64_t>(options.max_tokens_per_request * 2,
                                             options.batch_max_rows);
  const int64_t max_bytes = std::min<int64_t>(
      max_rows * config.dim * 4 + (1 << 20), std::numeric_limits<int>::max());
  pool_options.max_message_bytes = static_cast<int>(max_bytes);
  router::WorkerPool pool(addresses, config, pool_options);
  auto registry = std::make_shared<prometheus::Registry>();
  server::AddBuildInfo(*registry, "cpu");
  server::RpcMetrics rpc_metrics(*registry);
  router::RouterMetrics metrics(
      *registry, config, addresses,
      absl::Seconds(absl::GetFlag(FLAGS_balance_window_seconds)));
  pool.SetStateObserver(
      [&metrics](int worker, bool up) { metrics.SetWorkerUp(worker, up); });
  router::RouterService service(engine.get(), &pool, options, &metrics,
                                &rpc_metrics);
  MOE_ASSIGN_OR_RETURN(
      std::unique_ptr<server::MetricsHttpServer> metrics_http,
      server::StartMetricsEndpoint(
          absl::GetFlag(FLAGS_host), absl::GetFlag(FLAGS_metrics_port),
          absl::GetFlag(FLAGS_metrics_port_file), registry));
  if (metrics_http) service.set_metrics_port(metrics_http->port());

  server::ServerOptions server_options;
  server_options.host = absl::GetFlag(FLAGS_host);
  server_options.port = absl::GetFlag(FLAGS_port);
  server_options.port_file = absl::GetFlag(FLAGS_port_file);
  server_options.grace = absl::Seconds(absl::GetFlag(FLAGS_grace_seconds));
  server_options.max_receive_bytes = static_cast<int>(std::min<int64_t>(
      service.MaxRequestBytes(), std::numeric_limits<int>::max()));
  server_options.max_send_bytes = static_cast<int>(max_bytes);
  MOE_ASSIGN_OR_RETURN(auto runner,
                       server::ServerRunner::Start(server_options, {&service}));
  MOE_LOG(INFO) << "listening on " << runner->address()
                << " (NOT_SERVING until every expert has a worker)";
  pool.Start();
  MOE_ASSIGN_OR_RETURN(bool covered, WaitForCoverage(pool));
  if (!covered) {
    MOE_LOG(INFO) << "shutdown requested while waiting for workers";
    runner->Shutdown();
    return absl::OkStatus();
  }
  runner->SetServing(true);
  MOE_LOG(INFO) << "serving on " << runner->address() << ": "
                << common::ModelKindName(config.kind) << " dim " << config.dim
                << ", " << config.total_experts() << " experts on "
                << addresses.size() << " workers ["
                << absl::StrJoin(addresses, ",") << "], on_expert_failure="
                << absl::GetFlag(FLAGS_on_expert_failure) << ", wire "
                << absl::GetFlag(FLAGS_wire_dtype) << ", "
                << (window_us > 0
                        ? absl::StrCat("batch window ", window_us, " us")
                        : std::string("no batching"))
                << ", " << options.threads << " forward threads"
                << (metrics_http ? absl::StrCat(", /metrics on port ",
                                                metrics_http->port())
                                 : "");
  runner->WaitForShutdownSignal();
  // gRPC may return from Shutdown with handlers still running on our queue;
  // they finish their calls while the server object still exists.
  service.Drain();
  return absl::OkStatus();
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  moe::server::BlockShutdownSignals();
  moe::common::ParseCommandLine(
      argc, argv, "moe-router",
      "serves an ST-MoE layer over gRPC (moe.v1.Router), with the experts on "
      "moe-expert workers.\n\n  moe-router --checkpoint=F "
      "--workers=HOST:PORT,... --port=50051");
  return moe::common::ExitCode(moe::Run());
}
