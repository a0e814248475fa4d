#include "server/worker.h"

#include <unistd.h>

#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/cli/command_line.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "experts/service/expert_service.h"
#include "experts/warm_up.h"
#include "proto/expert_wire.h"
#include "server/main_helpers.h"
#include "server/rpc_metrics.h"
#include "server/serving_flags.h"

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
ABSL_FLAG(int, port, 50052, "Port to listen on; 0 picks a free one.");
ABSL_FLAG(std::string, device, "auto",
          "Where the experts run: auto (cuda:0 when this binary has the CUDA "
          "backend and a device is visible; else moe-expert's LibTorch CPU "
          "experts, or moe-expert-gpu's reference experts, with a warning), "
          "cpu (moe-expert), host (moe-expert-gpu: the plain C++ reference "
          "experts, exact and slow), cuda or cuda:N. cuda without the "
          "backend or without a visible device is an error.");
ABSL_FLAG(int, gpu_streams, 2,
          "With a CUDA device: calls run at once, each on a CUDA stream with "
          "its own workspace for --max_tokens_per_call rows.");
ABSL_FLAG(int, compute_threads, 1,
          "Threads running expert calls (each GEMM is already parallel).");
ABSL_FLAG(int64_t, max_tokens_per_call, 131072,
          "Largest token rows of one call; the message size limit follows "
          "from it (moe-up passes 2 x the router's max_tokens_per_request).");
ABSL_FLAG(int, metrics_port, 9465,
          "Port of the Prometheus /metrics endpoint; 0 picks a free one, -1 "
          "disables it.");

namespace moe::server {

namespace {

// --experts, or --shard with --num_shards.
absl::StatusOr<common::ExpertSet> Selection(const common::ModelSpec& spec) {
  const std::string shard = absl::GetFlag(FLAGS_shard);
  const std::string experts = absl::GetFlag(FLAGS_experts);
  if (shard.empty()) {
    return ForFlag("--experts", common::ExpertSet::Parse(experts, spec));
  }
  if (experts != "all" && !experts.empty()) {
    return absl::InvalidArgumentError("give --experts or --shard, not both");
  }
  int64_t index = -1;
  if (shard == "auto") {
    char name[256] = {0};
    ::gethostname(name, sizeof(name) - 1);
    MOE_ASSIGN_OR_RETURN(index,
                         ForFlag("--shard=auto", OrdinalFromHostname(name)));
  } else if (!absl::SimpleAtoi(shard, &index)) {
    return absl::InvalidArgumentError("--shard must be an index or \"auto\"");
  }
  return ForFlag(
      "--shard/--num_shards",
      common::ExpertSet::Shard(index, absl::GetFlag(FLAGS_num_shards), spec));
}

absl::StatusOr<std::unique_ptr<experts::ExpertShard>> LoadShard(
    const common::Checkpoint& ckpt, const common::ExpertSet& selection,
    const ShardFactory& make_shard) {
  if (selection.empty()) {
    return absl::InvalidArgumentError(
        "this worker would host no expert (--experts / --shard select none)");
  }
  ShardRequest request;
  request.device_flag = absl::GetFlag(FLAGS_device);
  MOE_ASSIGN_OR_RETURN(request.device, ParseDevice(request.device_flag));
  request.max_rows = absl::GetFlag(FLAGS_max_tokens_per_call);
  request.gpu_streams = absl::GetFlag(FLAGS_gpu_streams);
  if (request.gpu_streams < 1) {
    return absl::InvalidArgumentError("--gpu_streams must be >= 1");
  }
  return make_shard(ckpt, selection, request);
}

absl::Status WarmUp(const experts::ExpertShard& shard, int64_t max_rows) {
  if (!WarmupFromFlags()) return absl::OkStatus();
  MOE_ASSIGN_OR_RETURN(experts::WarmUpReport warm,
                       experts::WarmUpShard(shard, max_rows));
  MOE_LOG(INFO) << "warm-up: " << warm.calls << " calls, " << warm.rows
                << " rows, in "
                << absl::FormatDuration(
                       absl::Trunc(warm.elapsed, absl::Milliseconds(1)));
  return absl::OkStatus();
}

absl::Status Run(const ShardFactory& make_shard) {
  const std::string path = absl::GetFlag(FLAGS_checkpoint);
  if (path.empty()) {
    return absl::InvalidArgumentError("--checkpoint is required");
  }
  experts::ExpertServiceOptions options;
  options.compute_threads = absl::GetFlag(FLAGS_compute_threads);
  options.max_queued = MaxQueuedFromFlags();
  options.max_tokens_per_call = absl::GetFlag(FLAGS_max_tokens_per_call);
  MOE_RETURN_IF_ERROR(options.Validate());
  // Certificates are checked before the (slow) weights are loaded.
  ServerOptions server_options;
  MOE_RETURN_IF_ERROR(ServerOptionsFromFlags(
      absl::GetFlag(FLAGS_port), {"moe.v1.ExpertWorker"}, &server_options));
  const absl::Time start = absl::Now();
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<common::Checkpoint> ckpt,
                       common::Checkpoint::Open(path));
  const common::ModelSpec& spec = ckpt->spec();
  MOE_ASSIGN_OR_RETURN(common::ExpertSet selection, Selection(spec));
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<experts::ExpertShard> shard,
                       LoadShard(*ckpt, selection, make_shard));
  MOE_RETURN_IF_ERROR(WarmUp(*shard, options.max_tokens_per_call));
  auto registry = std::make_shared<prometheus::Registry>();
  AddBuildInfo(*registry, shard->device().ToString());
  RpcMetrics rpc_metrics(*registry);
  experts::ExpertMetrics metrics(*registry, spec, shard->experts());
  metrics.SetDeviceMemory(shard->device_memory_bytes());
  MOE_ASSIGN_OR_RETURN(
      std::unique_ptr<experts::ExpertService> service,
      experts::ExpertService::Create(shard.get(), {spec, ckpt->fingerprint()},
                                     options, &metrics));
  MOE_ASSIGN_OR_RETURN(
      std::unique_ptr<MetricsHttpServer> metrics_http,
      StartMetricsFromFlags(server_options.host,
                            absl::GetFlag(FLAGS_metrics_port), registry));
  server_options.rpc_metrics = &rpc_metrics;
  // One call carries at most max_tokens_per_call rows of float32.
  server_options.max_receive_bytes = server_options.max_send_bytes =
      proto::MaxExpertMessageBytes(options.max_tokens_per_call, spec.dim);
  MOE_ASSIGN_OR_RETURN(auto runner,
                       ServerRunner::Start(server_options, {service.get()}));
  runner->SetServing(true);
  metrics.SetReady(true);
  MOE_LOG(INFO) << "serving on " << runner->address() << ": model \""
                << spec.name << "\" " << ckpt->fingerprint() << ", "
                << spec.layers.size() << " layer(s), dim " << spec.dim
                << ", experts " << selection.Describe(spec) << " on "
                << shard->device().ToString() << " ("
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
  service->Drain();
  metrics.SetReady(false);
  return absl::OkStatus();
}

}  // namespace

int RunWorker(int argc, char** argv, const char* program, const char* usage,
              const ShardFactory& make_shard) {
  BlockShutdownSignals();
  cli::ParseCommandLine(argc, argv, program, usage);
  return cli::ExitCode(Run(make_shard));
}

}  // namespace moe::server
