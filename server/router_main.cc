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
#include <algorithm>
#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "common/checkpoint.h"
#include "common/logging.h"
#include "common/resolve.h"
#include "common/status_macros.h"
#include "proto/expert_wire.h"
#include "proto/tls.h"
#include "router/engine/model_engine.h"
#include "router/remote/worker_discovery.h"
#include "router/service/inference_service.h"
#include "router/service/prometheus_router_metrics.h"
#include "router/service/router_service.h"
#include "router/service/token_gate.h"
#include "server/main_helpers.h"
#include "server/router_flags.h"
#include "server/rpc_metrics.h"
#include "server/server_runner.h"
#include "server/serving_flags.h"
#include "server/worker_flags.h"

ABSL_FLAG(std::string, checkpoint, "", "Checkpoint (safetensors) to serve.");
ABSL_FLAG(int, port, 50051, "Port to listen on; 0 picks a free one.");
ABSL_FLAG(int64_t, max_tokens_per_request, 65536,
          "Largest batch x tokens of one request (RESOURCE_EXHAUSTED above); "
          "the message size limits follow from it.");
ABSL_FLAG(int, probe_interval_ms, 1000, "Worker health probe interval.");
ABSL_FLAG(int, max_workers, 256,
          "With --workers_dns: the most workers the router keeps track of, "
          "counting those that left.");
ABSL_FLAG(absl::Duration, worker_gone_after, absl::Seconds(30),
          "With --workers_dns: a worker whose address left the name is out "
          "of use after this long (its experts should have moved by then).");
ABSL_FLAG(double, start_timeout_seconds, 0,
          "Give up when experts stay without a worker this long at start "
          "(0: wait forever).");
ABSL_FLAG(int, metrics_port, 9464,
          "Port of the Prometheus /metrics endpoint; 0 picks a free one, -1 "
          "disables it.");
ABSL_FLAG(double, balance_window_seconds, 60,
          "Window of moe_router_load_balancedness.");
ABSL_FLAG(std::string, auth_tokens_file, "",
          "Require \"authorization: Bearer <token>\" on Forward and "
          "GetModelInfo, with the tokens of this file (one per line, re-read "
          "when it changes). Health stays open.");

namespace moe {
namespace {

// How the router reaches a worker: TLS when --worker_tls_* say so. A worker
// call carries one forward's rows (up to two per token) or a batch of up to
// --batch_max_tokens rows.
absl::StatusOr<router::GrpcTransportOptions> TransportOptions(int64_t max_rows,
                                                              int64_t dim) {
  proto::TlsFiles tls = server::WorkerTlsFilesFromFlags();
  tls.refresh_seconds = server::TlsRefreshSecondsFromFlags();
  router::GrpcTransportOptions transport;
  MOE_ASSIGN_OR_RETURN(transport.credentials,
                       proto::MakeChannelCredentials(tls));
  transport.tls_server_name = server::WorkerTlsServerNameFromFlags();
  transport.max_message_bytes = proto::MaxExpertMessageBytes(max_rows, dim);
  return transport;
}

absl::Status Run() {
  const std::string path = absl::GetFlag(FLAGS_checkpoint);
  if (path.empty()) {
    return absl::InvalidArgumentError("--checkpoint is required");
  }
  MOE_ASSIGN_OR_RETURN(std::vector<std::string> addresses,
                       server::WorkerAddressesFromFlags());
  MOE_ASSIGN_OR_RETURN(router::RouterServiceOptions options,
                       server::ServiceOptionsFromFlags());
  MOE_RETURN_IF_ERROR(options.Validate());
  std::unique_ptr<common::TokenSet> tokens;
  if (const std::string file = absl::GetFlag(FLAGS_auth_tokens_file);
      !file.empty()) {
    MOE_ASSIGN_OR_RETURN(tokens, common::TokenSet::FromFile(file));
  }
  options.tokens = tokens.get();
  // The metrics outlive the tracing (it counts its spans there) and the
  // pool (its probing thread reports worker states to them until the
  // pool's destructor joins it).
  auto registry = std::make_shared<prometheus::Registry>();
  // Before the service: it ends its spans until it is gone.
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<server::Tracing> tracing,
                       server::TracingFromFlags("moe-router", registry.get()));
  if (tracing) options.tracer = tracing->tracer.get();
  router::ForwardLimits limits;
  limits.max_tokens_per_request = absl::GetFlag(FLAGS_max_tokens_per_request);
  if (limits.max_tokens_per_request < 1) {
    return absl::InvalidArgumentError("--max_tokens_per_request must be >= 1");
  }
  server::ServerOptions server_options;
  MOE_RETURN_IF_ERROR(server::ServerOptionsFromFlags(
      absl::GetFlag(FLAGS_port),
      {"moe.v1.Router", "inference.GRPCInferenceService"}, &server_options));
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<router::ModelEngine> model,
                       router::ModelEngine::Load(path));
  const common::ModelSpec& spec = model->spec();
  if (server::WarmupFromFlags()) {
    MOE_RETURN_IF_ERROR(model->WarmUp(limits.max_tokens_per_request));
  }
  router::ForwardRunner runner(model.get(), limits);
  MOE_ASSIGN_OR_RETURN(
      const router::GrpcTransportOptions transport,
      TransportOptions(std::max<int64_t>(limits.max_tokens_per_request * 2,
                                         options.batch_max_rows),
                       spec.dim));
  server::AddBuildInfo(*registry, "cpu");
  server::RpcMetrics rpc_metrics(*registry);
  router::PrometheusRouterMetrics metrics(
      *registry, spec, addresses,
      absl::Seconds(absl::GetFlag(FLAGS_balance_window_seconds)));
  router::WorkerPoolOptions pool_options;
  pool_options.probe_interval =
      absl::Milliseconds(absl::GetFlag(FLAGS_probe_interval_ms));
  const std::string dns = server::WorkerDnsFromFlags();
  if (!dns.empty()) pool_options.max_workers = absl::GetFlag(FLAGS_max_workers);
  router::WorkerPool pool(
      router::MakeGrpcWorkerTransports(addresses, transport), spec,
      model->fingerprint(), pool_options);
  pool.SetStateObserver([&metrics](int worker, router::WorkerState state) {
    metrics.SetWorkerState(worker, state);
  });
  MOE_ASSIGN_OR_RETURN(
      std::unique_ptr<router::RouterService> service,
      router::RouterService::Create(&runner, &pool, options, &metrics));
  MOE_ASSIGN_OR_RETURN(
      std::unique_ptr<server::MetricsHttpServer> metrics_http,
      server::StartMetricsFromFlags(
          server_options.host, absl::GetFlag(FLAGS_metrics_port), registry));
  if (metrics_http) service->set_metrics_port(metrics_http->port());
  server_options.rpc_metrics = &rpc_metrics;
  server_options.max_receive_bytes = runner.MaxRequestBytes();
  server_options.max_send_bytes = runner.MaxRequestBytes() * 2;
  // Over TLS, callers without a token are refused at their headers, before
  // gRPC reads their messages (router/service/token_gate.h).
  if (tokens != nullptr && server_options.credentials != nullptr) {
    server_options.credentials->SetAuthMetadataProcessor(
        std::make_shared<router::TokenGate>(service.get()));
  } else if (tokens != nullptr) {
    MOE_LOG(WARNING)
        << "tokens over plaintext: they can be read on the wire, and a call "
           "without one is refused only after its whole message was "
           "received; give --tls_cert_file and --tls_key_file";
  }
  // The Open Inference Protocol beside moe.v1.Router, on the same port.
  router::InferenceService inference(service.get());
  server_options.on_shutdown = [&inference] { inference.EndStreams(); };
  MOE_ASSIGN_OR_RETURN(
      auto server,
      server::ServerRunner::Start(server_options, {service.get(), &inference}));
  MOE_LOG(INFO) << "listening on " << server->address()
                << " (NOT_SERVING until every expert has a worker)";
  // JSON spends up to about 16 bytes on each float the wire sends in 4.
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<router::InferenceHttpServer> http,
                       server::StartRestFromFlags(
                           server_options, service.get(),
                           runner.MaxRequestBytes() * 5 + (1 << 20), &metrics));
  pool.Start();
  // Workers behind one name: re-resolved, joining and leaving.
  std::unique_ptr<router::WorkerDiscovery> discovery;
  if (!dns.empty()) {
    router::WorkerDiscoveryOptions d;
    d.refresh = server::DnsRefreshFromFlags();
    d.gone_after = absl::GetFlag(FLAGS_worker_gone_after);
    d.resolve = [dns] { return common::ResolveAll(dns); };
    d.make_transport = [transport](const std::string& address) {
      return router::MakeGrpcWorkerTransport(address, transport);
    };
    d.added = [&metrics](int worker, const std::string& address) {
      metrics.AddWorker(worker, address);
    };
    discovery = std::make_unique<router::WorkerDiscovery>(&pool, std::move(d));
    discovery->Start();
    MOE_LOG(INFO) << "workers: every address of " << dns
                  << ", re-resolved every "
                  << absl::FormatDuration(server::DnsRefreshFromFlags());
  }
  const absl::Status ready = service->AwaitReady(
      absl::Seconds(absl::GetFlag(FLAGS_start_timeout_seconds)),
      [] { return server::ShutdownRequested(absl::Milliseconds(50)); });
  if (ready.ok()) {
    server->SetServing(true);
    MOE_LOG(INFO) << "serving on " << server->address() << ": "
                  << service->Describe();
    server->WaitForShutdownSignal();
  } else {
    MOE_LOG(INFO) << ready.message();
    server->Shutdown();
  }
  // gRPC may return from Shutdown with handlers still running on our queue;
  // they finish their calls while the server object still exists.
  http.reset();  // its requests in progress finish first
  service->Drain();
  return absl::IsCancelled(ready) ? absl::OkStatus() : ready;
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  return moe::server::ServerMain(
      argc, argv, "moe-router",
      "serves every MoE layer of a model over gRPC (moe.v1.Router), with the "
      "experts on moe-expert workers.\n\n  moe-router --checkpoint=F "
      "--workers=HOST:PORT,... --port=50051",
      [] { return moe::Run(); });
}
