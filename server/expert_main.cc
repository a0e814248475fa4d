// moe-expert: a gRPC worker hosting a share of the experts of every layer
// of a checkpoint.
//
//   moe-expert --checkpoint=model.safetensors --experts=0-7 --port=50052
//
// Health (process and moe.v1.ExpertWorker) turns SERVING once the weights
// are loaded. SIGTERM/SIGINT drain in-flight calls and stop.
#include <unistd.h>

#include <algorithm>
#include <limits>
#include <map>
#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "client/cli/command_line.h"
#include "common/checkpoint.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "common/torch/checkpoint_weights.h"
#include "experts/cpu_expert_shard.h"
#include "experts/service/expert_service.h"
#include "experts/warm_up.h"
#include "proto/expert_wire.h"
#include "server/compute_flags.h"
#include "server/main_helpers.h"
#include "server/metrics_http.h"
#include "server/rpc_metrics.h"
#include "server/security_flags.h"
#include "server/server_runner.h"

ABSL_FLAG(std::string, checkpoint, "", "Checkpoint (safetensors) to serve.");
ABSL_FLAG(std::string, experts, "all",
          "Experts of this worker: all, ranges for every layer (0-3,8), or "
          "LAYER:RANGES;LAYER:RANGES for named layers.");
ABSL_FLAG(std::string, shard, "",
          "Instead of --experts: this worker's shard index, or \"auto\" to "
          "take it from the hostname's ordinal (StatefulSet pod moe-expert-3 "
          "is shard 3); with --num_shards, shard i hosts experts "
          "[E*i/n, E*(i+1)/n) of every layer.");
ABSL_FLAG(int, num_shards, 0, "Number of shards for --shard.");
ABSL_FLAG(std::string, host, "0.0.0.0", "Address to listen on.");
ABSL_FLAG(int, port, 50052, "Port to listen on; 0 picks a free one.");
ABSL_FLAG(std::string, port_file, "",
          "Write the port here once listening (useful with --port=0).");
ABSL_FLAG(std::string, device, "auto",
          "auto (cuda:0 when this binary has the CUDA backend and a device "
          "is visible, else cpu), cpu, cuda or cuda:N. cuda without the "
          "backend or without a visible device is an error.");
ABSL_FLAG(int, gpu_streams, 2,
          "With a CUDA device: calls run at once, each on a CUDA stream with "
          "its own workspace for --max_tokens_per_call rows.");
ABSL_FLAG(int, compute_threads, 1,
          "Threads running expert calls (each GEMM is already parallel).");
ABSL_FLAG(bool, warmup, true,
          "Before reporting SERVING, run the experts of the first hosted "
          "layer on synthetic rows (4, then up to 512 per expert), so that "
          "the first real calls do not pay for thread start-up and "
          "first-touch page faults.");
ABSL_FLAG(int, max_queued, 64,
          "Calls that may wait; more are refused with RESOURCE_EXHAUSTED.");
ABSL_FLAG(int64_t, max_tokens_per_call, 131072,
          "Largest token rows of one call; the message size limit follows "
          "from it (moe-up passes 2 x the router's max_tokens_per_request).");
ABSL_FLAG(double, grace_seconds, 10, "Time in-flight calls get on shutdown.");
ABSL_FLAG(double, drain_seconds, 0,
          "On SIGTERM, report NOT_SERVING but keep serving this long before "
          "taking no new calls (time for a load balancer to stop sending).");
ABSL_FLAG(bool, reflection, false, "Serve gRPC server reflection.");
ABSL_FLAG(int, metrics_port, 9465,
          "Port of the Prometheus /metrics endpoint; 0 picks a free one, -1 "
          "disables it.");
ABSL_FLAG(std::string, metrics_host, "",
          "Address /metrics listens on (default: --host).");
ABSL_FLAG(std::string, metrics_port_file, "",
          "Write the metrics port here once listening.");

namespace moe {
namespace {

absl::StatusOr<server::ExpertSelection> Selection(
    const common::ModelSpec& spec) {
  const std::string shard = absl::GetFlag(FLAGS_shard);
  const std::string experts = absl::GetFlag(FLAGS_experts);
  if (shard.empty()) {
    absl::StatusOr<server::ExpertSelection> s =
        server::ParseExpertSelection(experts, spec);
    if (!s.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--experts: ", s.status().message()));
    }
    return s;
  }
  if (experts != "all" && !experts.empty()) {
    return absl::InvalidArgumentError("give --experts or --shard, not both");
  }
  int64_t index = -1;
  if (shard == "auto") {
    char name[256] = {0};
    ::gethostname(name, sizeof(name) - 1);
    absl::StatusOr<int64_t> ordinal = server::OrdinalFromHostname(name);
    if (!ordinal.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--shard=auto: ", ordinal.status().message()));
    }
    index = *ordinal;
  } else if (!absl::SimpleAtoi(shard, &index)) {
    return absl::InvalidArgumentError("--shard must be an index or \"auto\"");
  }
  absl::StatusOr<server::ExpertSelection> s =
      server::ShardSelection(index, absl::GetFlag(FLAGS_num_shards), spec);
  if (!s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--shard/--num_shards: ", s.status().message()));
  }
  return s;
}

absl::StatusOr<std::unique_ptr<experts::ExpertShard>> LoadShard(
    const common::Checkpoint& ckpt, const server::ExpertSelection& selection) {
  std::map<common::ExpertKey, common::ExpertWeights> weights;
  for (size_t l = 0; l < selection.size(); ++l) {
    for (int64_t e : selection[l]) {
      const common::ExpertKey key{static_cast<int32_t>(l), e};
      MOE_ASSIGN_OR_RETURN(weights[key], common::LoadExpertWeights(ckpt, key));
    }
  }
  if (weights.empty()) {
    return absl::InvalidArgumentError(
        "this worker would host no expert (--experts / --shard select none)");
  }
  if (absl::GetFlag(FLAGS_gpu_streams) < 1) {
    return absl::InvalidArgumentError("--gpu_streams must be >= 1");
  }
  return server::MakeExpertShard(absl::GetFlag(FLAGS_device),
                                 std::move(weights),
                                 absl::GetFlag(FLAGS_max_tokens_per_call),
                                 absl::GetFlag(FLAGS_gpu_streams));
}

absl::Status Run() {
  const std::string path = absl::GetFlag(FLAGS_checkpoint);
  if (path.empty()) {
    return absl::InvalidArgumentError("--checkpoint is required");
  }
  // Certificates are checked before the (slow) weights are loaded.
  server::ServerOptions server_options;
  MOE_RETURN_IF_ERROR(server::ApplySecurityFlags(&server_options));
  const absl::Time start = absl::Now();
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<common::Checkpoint> ckpt,
                       common::Checkpoint::Open(path));
  const common::ModelSpec& spec = ckpt->spec();
  MOE_ASSIGN_OR_RETURN(server::ExpertSelection selection, Selection(spec));
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<experts::ExpertShard> shard,
                       LoadShard(*ckpt, selection));
  experts::ExpertServiceOptions options;
  options.compute_threads = absl::GetFlag(FLAGS_compute_threads);
  options.max_queued = static_cast<size_t>(absl::GetFlag(FLAGS_max_queued));
  options.max_tokens_per_call = absl::GetFlag(FLAGS_max_tokens_per_call);
  if (options.max_tokens_per_call < 1 || options.compute_threads < 1) {
    return absl::InvalidArgumentError(
        "--max_tokens_per_call and --compute_threads must be >= 1");
  }
  if (absl::GetFlag(FLAGS_warmup)) {
    MOE_ASSIGN_OR_RETURN(
        experts::WarmUpReport warm,
        experts::WarmUpShard(*shard, options.max_tokens_per_call));
    MOE_LOG(INFO) << "warm-up: " << warm.calls << " calls, " << warm.rows
                  << " rows, in "
                  << absl::FormatDuration(
                         absl::Trunc(warm.elapsed, absl::Milliseconds(1)));
  }
  auto registry = std::make_shared<prometheus::Registry>();
  server::AddBuildInfo(*registry, shard->device());
  server::RpcMetrics rpc_metrics(*registry);
  experts::ExpertMetrics metrics(*registry, spec, shard->keys());
  metrics.SetDeviceMemory(shard->device_memory_bytes());
  experts::ExpertService service(shard.get(), {spec, ckpt->fingerprint()},
                                 options, &metrics);
  const std::string host = absl::GetFlag(FLAGS_host);
  const std::string metrics_host = absl::GetFlag(FLAGS_metrics_host);
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<server::MetricsHttpServer> metrics_http,
                       server::StartMetricsEndpoint(
                           metrics_host.empty() ? host : metrics_host,
                           absl::GetFlag(FLAGS_metrics_port),
                           absl::GetFlag(FLAGS_metrics_port_file), registry));

  server_options.host = host;
  server_options.port = absl::GetFlag(FLAGS_port);
  server_options.port_file = absl::GetFlag(FLAGS_port_file);
  server_options.grace = absl::Seconds(absl::GetFlag(FLAGS_grace_seconds));
  server_options.drain = absl::Seconds(absl::GetFlag(FLAGS_drain_seconds));
  server_options.reflection = absl::GetFlag(FLAGS_reflection);
  server_options.health_services = {"moe.v1.ExpertWorker"};
  server_options.rpc_metrics = &rpc_metrics;
  // One call carries at most max_tokens_per_call rows of float32.
  const int max_bytes =
      proto::MaxExpertMessageBytes(options.max_tokens_per_call, spec.dim);
  server_options.max_receive_bytes = max_bytes;
  server_options.max_send_bytes = max_bytes;
  MOE_ASSIGN_OR_RETURN(auto runner,
                       server::ServerRunner::Start(server_options, {&service}));
  runner->SetServing(true);
  metrics.SetReady(true);
  MOE_LOG(INFO) << "serving on " << runner->address() << ": model \""
                << spec.name << "\" " << ckpt->fingerprint() << ", "
                << spec.layers.size() << " layer(s), dim " << spec.dim
                << ", experts " << server::DescribeSelection(selection, spec)
                << " on " << shard->device() << " ("
                << shard->weight_bytes() / (1 << 20) << " MiB of weights, "
                << "ready in "
                << absl::FormatDuration(
                       absl::Trunc(absl::Now() - start, absl::Milliseconds(1)))
                << ")"
                << (metrics_http ? absl::StrCat(", /metrics on port ",
                                                metrics_http->port())
                                 : "");
  runner->WaitForShutdownSignal();
  // gRPC may return from Shutdown with handlers still running on our queue;
  // they finish their calls while the server object still exists.
  service.Drain();
  metrics.SetReady(false);
  return absl::OkStatus();
}

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  moe::server::BlockShutdownSignals();
  moe::cli::ParseCommandLine(
      argc, argv, "moe-expert",
      "serves a share of the experts of every layer of a moe-serve "
      "checkpoint over gRPC (moe.v1.ExpertWorker).\n\n  moe-expert "
      "--checkpoint=F --experts=0-7 --port=50052");
  return moe::cli::ExitCode(moe::Run());
}
