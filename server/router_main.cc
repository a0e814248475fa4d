// moe-router: the client-facing gRPC server. Loads the gates (and the norms
// and feed-forwards of block layers) of every layer of a checkpoint, learns
// which worker hosts which expert, routes, fans out, combines.
//
//   moe-router --checkpoint=model.safetensors
//       --workers=10.0.0.2:50052,10.0.0.3:50052 --port=50051
//
// Health turns SERVING once every expert of every layer has a healthy
// worker; until then Forward answers UNAVAILABLE naming the experts without
// one.
#include <signal.h>

#include <algorithm>
#include <fstream>
#include <limits>
#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/cli/command_line.h"
#include "common/checkpoint.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "proto/expert_wire.h"
#include "proto/tls.h"
#include "router/engine/model_engine.h"
#include "router/service/forward_runner.h"
#include "router/service/router_metrics.h"
#include "router/service/router_service.h"
#include "router/service/worker_pool.h"
#include "server/main_helpers.h"
#include "server/metrics_http.h"
#include "server/rpc_metrics.h"
#include "server/security_flags.h"
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
          "and the response is marked degraded) or fail (UNAVAILABLE). A "
          "request may choose its own.");
ABSL_FLAG(int64_t, max_tokens_per_request, 65536,
          "Largest batch x tokens of one request (RESOURCE_EXHAUSTED above); "
          "the message size limits follow from it.");
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
ABSL_FLAG(int64_t, max_queued_tokens, 262144,
          "Tokens that may wait for a forward thread; a request that would "
          "pass this is refused at once (RESOURCE_EXHAUSTED).");
ABSL_FLAG(int, max_queue_ms, 2000,
          "Longest expected (and actual) queue time of a request; longer is "
          "refused with RESOURCE_EXHAUSTED. A request whose deadline the "
          "queue and its own work would miss is refused at once too.");
ABSL_FLAG(bool, log_requests, false,
          "Log one line per request (layer, shape, code, duration; never "
          "tensors or tokens). Failed requests are always logged.");
ABSL_FLAG(int, probe_interval_ms, 1000, "Worker health probe interval.");
ABSL_FLAG(bool, warmup, true,
          "Before listening, run one forward of the first layer on "
          "synthetic tokens (up to 4096) whose experts compute nothing, so "
          "that the first real forward does not pay for growing the heap "
          "and starting LibTorch's kernels.");
ABSL_FLAG(double, start_timeout_seconds, 0,
          "Give up when experts stay without a worker this long at start "
          "(0: wait forever).");
ABSL_FLAG(double, grace_seconds, 10, "Time in-flight calls get on shutdown.");
ABSL_FLAG(double, drain_seconds, 0,
          "On SIGTERM, report NOT_SERVING but keep serving this long before "
          "taking no new calls (time for a load balancer to stop sending).");
ABSL_FLAG(bool, reflection, false, "Serve gRPC server reflection.");
ABSL_FLAG(int, metrics_port, 9464,
          "Port of the Prometheus /metrics endpoint; 0 picks a free one, -1 "
          "disables it.");
ABSL_FLAG(std::string, metrics_host, "",
          "Address /metrics listens on (default: --host).");
ABSL_FLAG(std::string, metrics_port_file, "",
          "Write the metrics port here once listening.");
ABSL_FLAG(double, balance_window_seconds, 60,
          "Window of moe_router_load_balancedness.");
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
ABSL_FLAG(std::string, auth_tokens_file, "",
          "Require \"authorization: Bearer <token>\" on Forward and "
          "GetModelInfo, with the tokens of this file (one per line, re-read "
          "when it changes). Health stays open.");

namespace moe {
namespace {

absl::StatusOr<std::vector<std::string>> WorkerAddresses() {
  std::vector<std::string> out =
      server::SplitList(absl::GetFlag(FLAGS_workers));
  const std::string file = absl::GetFlag(FLAGS_workers_file);
  if (!file.empty()) {
    std::ifstream in(file);
    if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", file));
    std::string line;
    while (std::getline(in, line)) {
      for (std::string& a : server::SplitList(line)) {
        if (a[0] != '#') out.push_back(a);
      }
    }
  }
  const std::string pattern = absl::GetFlag(FLAGS_worker_template);
  if (!pattern.empty()) {
    absl::StatusOr<std::vector<std::string>> expanded =
        server::ExpandTemplate(pattern, absl::GetFlag(FLAGS_num_workers));
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

absl::StatusOr<router::RouterServiceOptions> ServiceOptionsFromFlags() {
  router::RouterServiceOptions o;
  absl::StatusOr<router::ExpertFailurePolicy> policy =
      router::ParseExpertFailurePolicy(absl::GetFlag(FLAGS_on_expert_failure));
  if (!policy.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--on_expert_failure: ", policy.status().message()));
  }
  o.on_failure = *policy;
  absl::StatusOr<moe::v1::DType> wire =
      server::ParseWireDType(absl::GetFlag(FLAGS_wire_dtype));
  if (!wire.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--wire_dtype: ", wire.status().message()));
  }
  o.wire_dtype = *wire;
  o.worker_timeout = absl::Milliseconds(absl::GetFlag(FLAGS_worker_timeout_ms));
  o.threads = absl::GetFlag(FLAGS_threads);
  o.max_queued =
      static_cast<size_t>(std::max(0, absl::GetFlag(FLAGS_max_queued)));
  if (o.threads < 1)
    return absl::InvalidArgumentError("--threads must be >= 1");
  const int window_us = absl::GetFlag(FLAGS_batch_window_us);
  if (window_us < 0 || window_us > 60000000) {
    return absl::InvalidArgumentError(
        "--batch_window_us must be in [0, 60000000]");
  }
  o.batch_window = absl::Microseconds(window_us);
  o.max_queued_tokens = absl::GetFlag(FLAGS_max_queued_tokens);
  const int queue_ms = absl::GetFlag(FLAGS_max_queue_ms);
  if (o.max_queued_tokens < 1 || queue_ms < 1) {
    return absl::InvalidArgumentError(
        "--max_queued_tokens and --max_queue_ms must be >= 1");
  }
  o.max_queue_time = absl::Milliseconds(queue_ms);
  o.log_requests = absl::GetFlag(FLAGS_log_requests);
  o.batch_max_rows = absl::GetFlag(FLAGS_batch_max_tokens);
  if (o.batch_max_rows < 1) {
    return absl::InvalidArgumentError("--batch_max_tokens must be >= 1");
  }
  return o;
}

// Waits until every expert has a healthy worker; false on SIGTERM/SIGINT.
absl::StatusOr<bool> WaitUntilReady(const router::WorkerPool& pool) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  const double limit = absl::GetFlag(FLAGS_start_timeout_seconds);
  const absl::Time start = absl::Now();
  absl::Time last_log = start;
  for (;;) {
    if (pool.ready()) return true;
    if (limit > 0 && absl::Now() - start > absl::Seconds(limit)) {
      return absl::UnavailableError(absl::StrCat("no healthy worker after ",
                                                 limit, " s for ",
                                                 pool.DescribeUncovered()));
    }
    if (absl::Now() - last_log > absl::Seconds(5)) {
      MOE_LOG(INFO) << "waiting for workers: no worker yet for "
                    << pool.DescribeUncovered();
      last_log = absl::Now();
    }
    timespec ts{0, 50 * 1000 * 1000};
    if (sigtimedwait(&set, nullptr, &ts) > 0) return false;
  }
}

// One transport per worker address, TLS when --worker_tls_* say so.
absl::StatusOr<std::vector<std::unique_ptr<router::WorkerTransport>>>
WorkerTransports(const std::vector<std::string>& addresses, int64_t max_rows,
                 int64_t dim) {
  proto::TlsFiles tls;
  tls.ca_file = absl::GetFlag(FLAGS_worker_tls_ca_file);
  tls.cert_file = absl::GetFlag(FLAGS_worker_tls_cert_file);
  tls.key_file = absl::GetFlag(FLAGS_worker_tls_key_file);
  tls.refresh_seconds = server::TlsRefreshSecondsFromFlags();
  tls.flag_prefix = "--worker_tls";
  router::GrpcTransportOptions transport;
  MOE_ASSIGN_OR_RETURN(transport.credentials,
                       proto::MakeChannelCredentials(tls));
  transport.tls_server_name = absl::GetFlag(FLAGS_worker_tls_server_name);
  transport.max_message_bytes = proto::MaxExpertMessageBytes(max_rows, dim);
  if (transport.credentials == nullptr) {
    MOE_LOG(WARNING) << "talking to the workers in plaintext (no "
                        "--worker_tls_ca_file)";
  }
  std::vector<std::unique_ptr<router::WorkerTransport>> transports;
  for (const std::string& a : addresses) {
    transports.push_back(router::MakeGrpcWorkerTransport(a, transport));
  }
  return transports;
}

absl::StatusOr<std::unique_ptr<common::TokenSet>> TokensFromFlags() {
  const std::string file = absl::GetFlag(FLAGS_auth_tokens_file);
  if (file.empty()) {
    MOE_LOG(WARNING) << "no --auth_tokens_file: every caller that reaches "
                        "the router may call Forward";
    return nullptr;
  }
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<common::TokenSet> tokens,
                       common::TokenSet::FromFile(file));
  MOE_LOG(INFO) << "Forward and GetModelInfo require one of the "
                << tokens->size() << " token(s) of " << file;
  return tokens;
}

absl::Status FillServerOptions(const router::ForwardRunner& runner,
                               server::RpcMetrics* rpc_metrics,
                               server::ServerOptions* o) {
  MOE_RETURN_IF_ERROR(server::ApplySecurityFlags(o));
  o->host = absl::GetFlag(FLAGS_host);
  o->port = absl::GetFlag(FLAGS_port);
  o->port_file = absl::GetFlag(FLAGS_port_file);
  o->grace = absl::Seconds(absl::GetFlag(FLAGS_grace_seconds));
  o->drain = absl::Seconds(absl::GetFlag(FLAGS_drain_seconds));
  o->reflection = absl::GetFlag(FLAGS_reflection);
  o->health_services = {"moe.v1.Router"};
  o->rpc_metrics = rpc_metrics;
  o->max_receive_bytes = static_cast<int>(std::min<int64_t>(
      runner.MaxRequestBytes(), std::numeric_limits<int>::max()));
  o->max_send_bytes = static_cast<int>(std::min<int64_t>(
      runner.MaxRequestBytes() * 2, std::numeric_limits<int>::max()));
  return absl::OkStatus();
}

std::string Describe(const router::RouterServiceOptions& options) {
  return absl::StrCat(
      "on_expert_failure=", router::ExpertFailurePolicyName(options.on_failure),
      ", wire ", absl::GetFlag(FLAGS_wire_dtype), ", ",
      options.batch_window > absl::ZeroDuration()
          ? absl::StrCat("batch window ",
                         absl::FormatDuration(options.batch_window))
          : std::string("no batching"),
      ", ", options.threads, " forward threads",
      options.tokens != nullptr ? ", tokens required" : "");
}

absl::Status Run() {
  const std::string path = absl::GetFlag(FLAGS_checkpoint);
  if (path.empty()) {
    return absl::InvalidArgumentError("--checkpoint is required");
  }
  MOE_ASSIGN_OR_RETURN(std::vector<std::string> addresses, WorkerAddresses());
  MOE_ASSIGN_OR_RETURN(router::RouterServiceOptions options,
                       ServiceOptionsFromFlags());
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<common::TokenSet> tokens,
                       TokensFromFlags());
  options.tokens = tokens.get();
  router::ForwardLimits limits;
  limits.max_tokens_per_request = absl::GetFlag(FLAGS_max_tokens_per_request);
  if (limits.max_tokens_per_request < 1) {
    return absl::InvalidArgumentError("--max_tokens_per_request must be >= 1");
  }
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<common::Checkpoint> ckpt,
                       common::Checkpoint::Open(path));
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<router::ModelEngine> model,
                       router::ModelEngine::Load(*ckpt));
  ckpt.reset();
  const common::ModelSpec& spec = model->spec();
  if (absl::GetFlag(FLAGS_warmup)) {
    // The largest forward a client is likely to send, within the limit.
    const int64_t tokens =
        std::min<int64_t>(limits.max_tokens_per_request, 4096);
    MOE_ASSIGN_OR_RETURN(absl::Duration took, model->WarmUp(tokens));
    MOE_LOG(INFO) << "warm-up: one forward of " << tokens << " tokens in "
                  << absl::FormatDuration(
                         absl::Trunc(took, absl::Milliseconds(1)));
  }
  router::ForwardRunner runner(model.get(), limits);

  // A worker call carries one forward's rows (up to two per token) or a
  // batch of up to --batch_max_tokens rows.
  const int64_t max_rows = std::max<int64_t>(limits.max_tokens_per_request * 2,
                                             options.batch_max_rows);
  MOE_ASSIGN_OR_RETURN(auto transports,
                       WorkerTransports(addresses, max_rows, spec.dim));
  // The metrics outlive the pool: its probing thread reports worker states
  // to them until the pool's destructor joins it.
  auto registry = std::make_shared<prometheus::Registry>();
  server::AddBuildInfo(*registry, "cpu");
  server::RpcMetrics rpc_metrics(*registry);
  router::RouterMetrics metrics(
      *registry, spec, addresses,
      absl::Seconds(absl::GetFlag(FLAGS_balance_window_seconds)));
  router::WorkerPoolOptions pool_options;
  pool_options.probe_interval =
      absl::Milliseconds(absl::GetFlag(FLAGS_probe_interval_ms));
  router::WorkerPool pool(std::move(transports), spec, model->fingerprint(),
                          pool_options);
  pool.SetStateObserver([&metrics](int worker, router::WorkerState state) {
    metrics.SetWorkerState(worker, state);
  });
  server::ServerOptions server_options;
  MOE_RETURN_IF_ERROR(FillServerOptions(runner, &rpc_metrics, &server_options));
  router::RouterService service(&runner, &pool, options, &metrics);
  const std::string metrics_host = absl::GetFlag(FLAGS_metrics_host);
  MOE_ASSIGN_OR_RETURN(
      std::unique_ptr<server::MetricsHttpServer> metrics_http,
      server::StartMetricsEndpoint(
          metrics_host.empty() ? server_options.host : metrics_host,
          absl::GetFlag(FLAGS_metrics_port),
          absl::GetFlag(FLAGS_metrics_port_file), registry));
  if (metrics_http) service.set_metrics_port(metrics_http->port());
  MOE_ASSIGN_OR_RETURN(auto server,
                       server::ServerRunner::Start(server_options, {&service}));
  MOE_LOG(INFO) << "listening on " << server->address()
                << " (NOT_SERVING until every expert has a worker)";
  pool.Start();
  MOE_ASSIGN_OR_RETURN(bool ready, WaitUntilReady(pool));
  if (!ready) {
    MOE_LOG(INFO) << "shutdown requested while waiting for workers";
    server->Shutdown();
    service.Drain();
    return absl::OkStatus();
  }
  server->SetServing(true);
  MOE_LOG(INFO) << "serving on " << server->address() << ": model \""
                << spec.name << "\" " << model->fingerprint() << ", "
                << spec.layers.size() << " layer(s), dim " << spec.dim
                << ", on " << addresses.size() << " workers ["
                << absl::StrJoin(addresses, ",") << "], " << Describe(options)
                << (metrics_http ? absl::StrCat(", /metrics on port ",
                                                metrics_http->port())
                                 : "");
  server->WaitForShutdownSignal();
  // gRPC may return from Shutdown with handlers still running on our queue;
  // they finish their calls while the server object still exists.
  service.Drain();
  return absl::OkStatus();
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  moe::server::BlockShutdownSignals();
  moe::cli::ParseCommandLine(
      argc, argv, "moe-router",
      "serves every MoE layer of a model over gRPC (moe.v1.Router), with the "
      "experts on moe-expert workers.\n\n  moe-router --checkpoint=F "
      "--workers=HOST:PORT,... --port=50051");
  return moe::cli::ExitCode(moe::Run());
}
