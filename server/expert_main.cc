// moe-expert: a gRPC worker hosting a shard of the experts of a checkpoint.
//
//   moe-expert --checkpoint=model.safetensors --experts=0-7 --port=50052
//
// Health turns SERVING once the weights are loaded. SIGTERM/SIGINT drain
// in-flight calls and stop.
#include <ATen/Context.h>
#include <unistd.h>

#include <cstdlib>
#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/checkpoint.h"
#include "common/flags_util.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "experts/expert_shard.h"
#include "experts/service/expert_service.h"
#include "server/metrics_http.h"
#include "server/rpc_metrics.h"
#include "server/server_runner.h"

ABSL_FLAG(std::string, checkpoint, "", "Checkpoint (safetensors) to serve.");
ABSL_FLAG(std::string, experts, "",
          "Expert ids of this shard, e.g. 0-3,8 (default: all).");
ABSL_FLAG(std::string, shard, "",
          "Instead of --experts: this worker's shard index, or \"auto\" to "
          "take it from the hostname's ordinal (StatefulSet pod moe-expert-3 "
          "is shard 3); with --num_shards, shard i hosts the contiguous "
          "experts [E*i/n, E*(i+1)/n).");
ABSL_FLAG(int, num_shards, 0, "Number of shards for --shard.");
ABSL_FLAG(std::string, host, "0.0.0.0", "Address to listen on.");
ABSL_FLAG(int, port, 50052, "Port to listen on; 0 picks a free one.");
ABSL_FLAG(std::string, port_file, "",
          "Write the port here once listening (useful with --port=0).");
ABSL_FLAG(std::string, device, "auto",
          "auto (cuda when available), cpu or cuda.");
ABSL_FLAG(int, compute_threads, 1,
          "Threads running expert batches (each GEMM is already parallel).");
ABSL_FLAG(int, max_queued, 64,
          "Requests that may wait; more are refused with RESOURCE_EXHAUSTED.");
ABSL_FLAG(int, max_tokens, 1 << 20, "Largest token count of one call.");
ABSL_FLAG(double, grace_seconds, 10, "Time in-flight calls get on shutdown.");
ABSL_FLAG(int, metrics_port, 9465,
          "Port of the Prometheus /metrics endpoint; 0 picks a free one, -1 "
          "disables it.");
ABSL_FLAG(std::string, metrics_port_file, "",
          "Write the metrics port here once listening.");

namespace moe {
namespace {

absl::Status Run() {
  const std::string path = absl::GetFlag(FLAGS_checkpoint);
  if (path.empty())
    return absl::InvalidArgumentError("--checkpoint is required");
  MOE_ASSIGN_OR_RETURN(common::ModelConfig config,
                       common::ReadCheckpointConfig(path));
  common::LoadOptions load;
  load.router = false;
  const std::string shard_flag = absl::GetFlag(FLAGS_shard);
  if (!shard_flag.empty() && !absl::GetFlag(FLAGS_experts).empty()) {
    return absl::InvalidArgumentError("give --experts or --shard, not both");
  }
  if (!shard_flag.empty()) {
    int64_t index = -1;
    if (shard_flag == "auto") {
      char name[256] = {0};
      ::gethostname(name, sizeof(name) - 1);
      absl::StatusOr<int64_t> ordinal = common::OrdinalFromHostname(name);
      if (!ordinal.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("--shard=auto: ", ordinal.status().message()));
      }
      index = *ordinal;
    } else if (!absl::SimpleAtoi(shard_flag, &index)) {
      return absl::InvalidArgumentError("--shard must be an index or \"auto\"");
    }
    absl::StatusOr<std::vector<int64_t>> ids = common::ShardExperts(
        index, absl::GetFlag(FLAGS_num_shards), config.total_experts());
    if (!ids.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--shard/--num_shards: ", ids.status().message()));
    }
    load.experts = *ids;
  } else if (!absl::GetFlag(FLAGS_experts).empty()) {
    absl::StatusOr<std::vector<int64_t>> ids = common::ParseIdList(
        absl::GetFlag(FLAGS_experts), config.total_experts());
    if (!ids.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--experts: ", ids.status().message()));
    }
    load.experts = *ids;
  }
  const std::string device_flag = absl::GetFlag(FLAGS_device);
  c10::Device device(c10::kCPU);
  if (device_flag == "cuda" || (device_flag == "auto" && at::hasCUDA())) {
    if (!at::hasCUDA()) {
      return absl::FailedPreconditionError(
          "--device=cuda but this LibTorch has no CUDA device");
    }
    device = c10::Device(c10::kCUDA);
  } else if (device_flag != "cpu" && device_flag != "auto") {
    return absl::InvalidArgumentError("--device must be auto, cpu or cuda");
  }

  const absl::Time start = absl::Now();
  MOE_ASSIGN_OR_RETURN(common::Checkpoint ckpt,
                       common::LoadCheckpoint(path, load));
  MOE_ASSIGN_OR_RETURN(auto shard, experts::ExpertShard::Create(
                                       std::move(ckpt.experts), device));
  experts::ExpertServiceOptions options;
  options.compute_threads = absl::GetFlag(FLAGS_compute_threads);
  options.max_queued = static_cast<size_t>(absl::GetFlag(FLAGS_max_queued));
  options.max_tokens = absl::GetFlag(FLAGS_max_tokens);
  auto registry = std::make_shared<prometheus::Registry>();
  server::AddBuildInfo(*registry, device.str());
  server::RpcMetrics rpc_metrics(*registry);
  experts::ExpertMetrics metrics(*registry, shard->expert_ids());
  experts::ExpertService service(shard.get(), config, options, &metrics,
                                 &rpc_metrics);
  MOE_ASSIGN_OR_RETURN(
      std::unique_ptr<server::MetricsHttpServer> metrics_http,
      server::StartMetricsEndpoint(
          absl::GetFlag(FLAGS_host), absl::GetFlag(FLAGS_metrics_port),
          absl::GetFlag(FLAGS_metrics_port_file), registry));

  server::ServerOptions server_options;
  server_options.host = absl::GetFlag(FLAGS_host);
  server_options.port = absl::GetFlag(FLAGS_port);
  server_options.port_file = absl::GetFlag(FLAGS_port_file);
  server_options.grace = absl::Seconds(absl::GetFlag(FLAGS_grace_seconds));
  const int64_t max_bytes =
      std::min<int64_t>(options.max_tokens * config.dim * 4 + (1 << 20),
                        std::numeric_limits<int>::max());
  server_options.max_receive_bytes = static_cast<int>(max_bytes);
  server_options.max_send_bytes = static_cast<int>(max_bytes);
  MOE_ASSIGN_OR_RETURN(auto runner,
                       server::ServerRunner::Start(server_options, {&service}));
  runner->SetServing(true);
  metrics.SetReady(true);
  MOE_LOG(INFO) << "serving on " << runner->address() << ": "
                << common::ModelKindName(config.kind) << " dim " << config.dim
                << ", experts [" << absl::StrJoin(shard->expert_ids(), ",")
                << "] of " << config.total_experts() << " on " << device.str()
                << " (" << shard->weight_bytes() / (1 << 20)
                << " MiB of weights, "
                << "loaded in "
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
  moe::common::ParseCommandLine(
      argc, argv, "moe-expert",
      "serves a shard of the experts of a moe-serve checkpoint over gRPC "
      "(moe.v1.ExpertWorker).\n\n  moe-expert --checkpoint=F --experts=0-7 "
      "--port=50052");
  return moe::common::ExitCode(moe::Run());
}
