// moe-up: the embedded default. Starts one moe-router and N moe-expert
// workers on one host from one checkpoint (or a generated demo model of 4
// layers, written by moe-run), every worker hosting its share of every
// layer, waits until all are healthy, prints the router's address, and
// stops them all on Ctrl-C or SIGTERM. If a child dies, it stops the others
// and exits non-zero, saying which (server/local_deployment.h).
//
//   moe-up [--checkpoint=F] [--workers=2] [--port=50051]
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/expert_set.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "proto/tls.h"
#include "server/local_deployment.h"
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
ABSL_FLAG(std::string, otlp_traces_endpoint, "",
          "Passed to moe-router and the workers: their spans go to this "
          "OpenTelemetry collector (e.g. http://127.0.0.1:4318/v1/traces "
          "over OTLP/HTTP, http://127.0.0.1:4317 over OTLP/gRPC).");
ABSL_FLAG(std::string, otlp_traces_protocol, "",
          "Passed to moe-router and the workers when given: http/json, "
          "http/protobuf or grpc.");
ABSL_FLAG(std::string, otlp_traces_compression, "",
          "Passed to moe-router and the workers when given: gzip or none.");
ABSL_FLAG(std::optional<double>, trace_sample_ratio, std::nullopt,
          "Passed to moe-router when given.");
ABSL_FLAG(std::string, wire_dtype, "float32", "Passed to moe-router.");
ABSL_FLAG(std::string, compute_dtype, "float32",
          "Passed to the workers: float32 (exact) or bfloat16 (faster, "
          "relative RMS error about 4e-3; docs/numerics.md).");
ABSL_FLAG(int, batch_window_us, 20000,
          "Passed to moe-router: dynamic batching window (0: off).");
ABSL_FLAG(int, http_port, -1,
          "Passed to moe-router: the Open Inference Protocol's REST form on "
          "this port (0: a free one, written as \"router_http HOST:PORT\" to "
          "--endpoints_file; -1: off).");
ABSL_FLAG(int64_t, inline_max_tokens, 0,
          "Passed to moe-router (experimental): forwards up to this many "
          "tokens run on the gRPC thread that received them while the router "
          "is idle (0, the default: never).");
ABSL_FLAG(bool, join_open_batches, true, "Passed to moe-router.");
ABSL_FLAG(int64_t, worker_inline_max_request_kib, -1,
          "Passed to the workers as --inline_max_request_kib when >= 0: "
          "calls up to this many KiB run on the gRPC thread that received "
          "them while the worker is idle (0: never; -1, the default: the "
          "workers' own default, 64).");
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
ABSL_FLAG(bool, balance, false,
          "Run moe-balancer beside them (docs/placement.md): hot experts get "
          "copies on other workers, and a worker that dies is not restarted "
          "nor a reason to stop: its experts are placed on the others.");
ABSL_FLAG(std::string, balance_flags,
          "--interval=1s,--rebalance_every=5s,--load_half_life=5s,"
          "--settle=2500ms,--dead_after=3s",
          "With --balance: moe-balancer's flags, comma-separated (these "
          "defaults act within about 20 s of a sustained skew; the "
          "balancer's own defaults are slower).");
ABSL_FLAG(std::string, work_dir, "",
          "Where port files and the demo model go (default: a temporary "
          "directory, removed on exit).");

namespace moe {
namespace {

// moe-up's own TLS toward the children: their CA, and its certificate when
// they require one.
absl::StatusOr<server::HealthProbe> ProbeFromFlags() {
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
  server::HealthProbe probe;
  MOE_ASSIGN_OR_RETURN(probe.credentials, proto::MakeChannelCredentials(tls));
  return probe;
}

// The flags of moe-up, as what each child gets.
absl::StatusOr<server::LocalDeploymentOptions> OptionsFromFlags() {
  server::LocalDeploymentOptions o;
  o.bin_dir =
      std::filesystem::read_symlink("/proc/self/exe").parent_path().string();
  o.work_dir = absl::GetFlag(FLAGS_work_dir);
  o.checkpoint = absl::GetFlag(FLAGS_checkpoint);
  o.demo_layers = absl::GetFlag(FLAGS_demo_layers);
  o.seed = absl::GetFlag(FLAGS_seed);
  o.workers = absl::GetFlag(FLAGS_workers);
  o.host = absl::GetFlag(FLAGS_host);
  o.router_port = absl::GetFlag(FLAGS_port);
  o.start_timeout = absl::Seconds(absl::GetFlag(FLAGS_start_timeout_seconds));
  o.max_tokens_per_request = absl::GetFlag(FLAGS_max_tokens_per_request);
  o.router_http_port = absl::GetFlag(FLAGS_http_port);
  MOE_ASSIGN_OR_RETURN(o.probe, ProbeFromFlags());
  o.balance = absl::GetFlag(FLAGS_balance);
  for (absl::string_view flag : absl::StrSplit(
           absl::GetFlag(FLAGS_balance_flags), ',', absl::SkipEmpty())) {
    o.balancer_flags.emplace_back(flag);
  }
  o.common_flags = {
      absl::StrCat("--reflection=", absl::GetFlag(FLAGS_reflection)),
      absl::StrCat("--warmup=", absl::GetFlag(FLAGS_warmup)),
      "--otlp_traces_endpoint=" + absl::GetFlag(FLAGS_otlp_traces_endpoint)};
  if (const std::string p = absl::GetFlag(FLAGS_otlp_traces_protocol);
      !p.empty()) {
    o.common_flags.push_back("--otlp_traces_protocol=" + p);
  }
  if (const std::string c = absl::GetFlag(FLAGS_otlp_traces_compression);
      !c.empty()) {
    o.common_flags.push_back("--otlp_traces_compression=" + c);
  }
  o.worker_flags = {"--compute_dtype=" + absl::GetFlag(FLAGS_compute_dtype)};
  if (absl::GetFlag(FLAGS_worker_inline_max_request_kib) >= 0) {
    o.worker_flags.push_back(
        absl::StrCat("--inline_max_request_kib=",
                     absl::GetFlag(FLAGS_worker_inline_max_request_kib)));
  }
  o.router_flags = {
      "--on_expert_failure=" + absl::GetFlag(FLAGS_on_expert_failure),
      "--wire_dtype=" + absl::GetFlag(FLAGS_wire_dtype),
      absl::StrCat("--batch_window_us=", absl::GetFlag(FLAGS_batch_window_us)),
      absl::StrCat("--inline_max_tokens=",
                   absl::GetFlag(FLAGS_inline_max_tokens)),
      absl::StrCat("--join_open_batches=",
                   absl::GetFlag(FLAGS_join_open_batches))};
  if (const std::optional<double> ratio =
          absl::GetFlag(FLAGS_trace_sample_ratio)) {
    o.router_flags.push_back(absl::StrCat("--trace_sample_ratio=", *ratio));
  }
  const std::string cert = absl::GetFlag(FLAGS_tls_cert_file);
  const std::string key = absl::GetFlag(FLAGS_tls_key_file);
  const std::string client_ca = absl::GetFlag(FLAGS_tls_client_ca_file);
  for (auto* flags : {&o.worker_flags, &o.router_flags}) {
    if (cert.empty()) break;
    flags->push_back("--tls_cert_file=" + cert);
    flags->push_back("--tls_key_file=" + key);
    if (!client_ca.empty())
      flags->push_back("--tls_client_ca_file=" + client_ca);
  }
  if (!absl::GetFlag(FLAGS_tls_ca_file).empty()) {
    o.router_flags.push_back("--worker_tls_ca_file=" +
                             absl::GetFlag(FLAGS_tls_ca_file));
  }
  if (!client_ca.empty()) {  // the router shows the workers its certificate
    o.router_flags.push_back("--worker_tls_cert_file=" + cert);
    o.router_flags.push_back("--worker_tls_key_file=" + key);
  }
  if (!absl::GetFlag(FLAGS_auth_tokens_file).empty()) {
    o.router_flags.push_back("--auth_tokens_file=" +
                             absl::GetFlag(FLAGS_auth_tokens_file));
  }
  // The balancer reaches the workers as the router does.
  for (const std::string& flag : o.router_flags) {
    if (absl::StartsWith(flag, "--worker_tls_")) {
      o.balancer_flags.push_back(flag);
    }
  }
  return o;
}

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

absl::Status Run() {
  MOE_ASSIGN_OR_RETURN(server::LocalDeploymentOptions options,
                       OptionsFromFlags());
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<server::LocalDeployment> deployment,
                       server::LocalDeployment::Start(std::move(options)));
  const std::string endpoints = deployment->Endpoints();
  if (!absl::GetFlag(FLAGS_endpoints_file).empty()) {
    MOE_RETURN_IF_ERROR(
        WriteFileAtomically(absl::GetFlag(FLAGS_endpoints_file), endpoints));
  }
  if (!absl::GetFlag(FLAGS_port_file).empty()) {
    MOE_RETURN_IF_ERROR(server::WritePortFile(absl::GetFlag(FLAGS_port_file),
                                              deployment->router_port()));
  }
  const common::ModelSpec& spec = deployment->spec();
  MOE_LOG(INFO) << "ready: router on " << deployment->router_address()
                << " with " << absl::GetFlag(FLAGS_workers) << " workers ("
                << spec.layers.size() << " layer(s), "
                << common::ExpertSet::All(spec).size()
                << " experts); Ctrl-C stops all\n"
                << endpoints;
  std::printf("%s\n", deployment->router_address().c_str());
  std::fflush(stdout);
  return deployment->Supervise();
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  return moe::server::ServerMain(
      argc, argv, "moe-up",
      "starts a router and N expert workers on one host and stops them all "
      "on Ctrl-C.\n\n  moe-up [--checkpoint=F] [--workers=2] [--port=50051]",
      [] { return moe::Run(); });
}
