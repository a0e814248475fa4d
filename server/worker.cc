#include "server/worker.h"

#include <signal.h>
#include <unistd.h>

#include <string>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "common/token_set.h"
#include "experts/service/expert_service.h"
#include "experts/service/placement.h"
#include "experts/warm_up.h"
#include "proto/expert_wire.h"
#include "server/main_helpers.h"
#include "server/rpc_metrics.h"
#include "server/server_runner.h"
#include "server/serving_flags.h"

ABSL_FLAG(std::string, checkpoint, "", "Checkpoint (safetensors) to serve.");
ABSL_FLAG(std::string, experts, "all",
          "Experts of this worker: all, ranges for every layer (0-3,8), "
          "LAYER:RANGES;LAYER:RANGES for named layers, or none (a worker "
          "that waits for the balancer to give it experts; needs "
          "--admin_token_file).");
ABSL_FLAG(std::string, admin_token_file, "",
          "Bearer tokens (one per line) of the placement writer "
          "(moe-balancer): with it, SetExperts may change the experts this "
          "worker hosts at run time; without it, they are fixed. Read again "
          "when the file changes.");
ABSL_FLAG(int64_t, expert_memory_mb, 0,
          "Most MiB of expert weights this worker may hold (reported to the "
          "balancer, which places within it; a SetExperts past it is "
          "refused whole). 0: no limit.");
ABSL_FLAG(absl::Duration, leave_timeout, absl::Seconds(20),
          "With --admin_token_file: on SIGTERM the worker reports that it is "
          "leaving and keeps serving until the balancer has moved its "
          "experts away (it then hosts none) or this long has passed, then "
          "drains as usual. 0: drain at once.");
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
ABSL_FLAG(int, gpu_small_rows, 8,
          "With a CUDA device: a call whose experts get at most this many "
          "token rows each (a decode step's) runs on moe-serve's small-rows "
          "kernels, which read each weight once for all of an expert's rows, "
          "instead of cuBLAS's GEMMs (docs/gpu.md). 0: always the GEMMs; at "
          "most 8.");
ABSL_FLAG(int, compute_threads, 1,
          "Threads running expert calls (each GEMM is already parallel).");
ABSL_FLAG(int64_t, inline_max_request_kib, 64,
          "A call of at most this many KiB (a decode step's: 1 x 32 tokens "
          "of dim 512 in float32 send each worker about 32 KiB) runs on the "
          "gRPC thread that received it when the compute threads are idle, "
          "one such call at a time: no hand-off to a compute thread and "
          "back. 0: every call is handed off.");
ABSL_FLAG(int64_t, max_tokens_per_call, 131072,
          "Largest token rows of one call; the message size limit follows "
          "from it (moe-up passes 2 x the router's max_tokens_per_request).");
ABSL_FLAG(bool, log_requests, false,
          "Log every RunExperts call: the router's address, the request IDs "
          "of the forwards it serves, its time and bytes. Failed calls are "
          "logged without it (at most 10 a second).");
ABSL_FLAG(int, metrics_port, 9465,
          "Port of the Prometheus /metrics endpoint; 0 picks a free one, -1 "
          "disables it.");

namespace moe::server {

namespace {

// --experts, or --shard with --num_shards.
absl::StatusOr<common::ExpertSet> Selection(const common::ModelSpec& spec) {
  const std::string shard = absl::GetFlag(FLAGS_shard);
  const std::string experts = absl::GetFlag(FLAGS_experts);
  if (shard.empty() && experts == "none") {
    if (absl::GetFlag(FLAGS_admin_token_file).empty()) {
      return absl::InvalidArgumentError(
          "--experts=none needs --admin_token_file: without it nothing could "
          "ever give this worker experts");
    }
    return common::ExpertSet(spec.layers.size());
  }
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

absl::StatusOr<ShardRequest> ShardRequestFromFlags() {
  ShardRequest request;
  request.device_flag = absl::GetFlag(FLAGS_device);
  MOE_ASSIGN_OR_RETURN(request.device, ParseDevice(request.device_flag));
  request.max_rows = absl::GetFlag(FLAGS_max_tokens_per_call);
  request.gpu_streams = absl::GetFlag(FLAGS_gpu_streams);
  if (request.gpu_streams < 1) {
    return absl::InvalidArgumentError("--gpu_streams must be >= 1");
  }
  request.gpu_small_rows = absl::GetFlag(FLAGS_gpu_small_rows);
  if (request.gpu_small_rows < 0 || request.gpu_small_rows > 8) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--gpu_small_rows must be in [0, 8], got ", request.gpu_small_rows));
  }
  return request;
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

// On SIGTERM, a worker whose experts can move reports that it is leaving
// and waits (up to --leave_timeout, or a second signal) until it hosts
// none: the balancer placed them elsewhere first, so no forward finds them
// missing. Then it drains.
void WaitToLeave(ServerRunner& runner, experts::ExpertService& service,
                 const experts::ExpertPlacement& placement) {
  const absl::Duration timeout = absl::GetFlag(FLAGS_leave_timeout);
  if (!placement.changeable() || timeout <= absl::ZeroDuration()) {
    runner.WaitForShutdownSignal();
    return;
  }
  while (!ShutdownRequested(absl::Hours(1))) {
  }
  service.SetLeaving();
  const absl::Time until = absl::Now() + timeout;
  MOE_LOG(INFO) << "received a stop signal: leaving (waiting up to "
                << absl::FormatDuration(timeout)
                << " for the balancer to move this worker's experts; a second "
                   "signal stops at once)";
  bool again = false;
  while (!placement.Current().shard->experts().empty() && absl::Now() < until) {
    if ((again = ShutdownRequested(absl::Milliseconds(100)))) break;
  }
  MOE_LOG(INFO) << (again ? "second signal"
                    : placement.Current().shard->experts().empty()
                        ? "every expert moved away"
                        : "--leave_timeout passed with experts still here")
                << ": stopping";
  runner.DrainAndShutdown(SIGTERM);
}

// `program` names the service in spans.
absl::Status Run(const ShardFactory& make_shard, const char* program) {
  const std::string path = absl::GetFlag(FLAGS_checkpoint);
  if (path.empty()) {
    return absl::InvalidArgumentError("--checkpoint is required");
  }
  experts::ExpertServiceOptions options;
  options.compute_threads = absl::GetFlag(FLAGS_compute_threads);
  options.max_queued = MaxQueuedFromFlags();
  options.max_tokens_per_call = absl::GetFlag(FLAGS_max_tokens_per_call);
  options.inline_max_request_bytes =
      absl::GetFlag(FLAGS_inline_max_request_kib) * 1024;
  options.log_requests = absl::GetFlag(FLAGS_log_requests);
  MOE_RETURN_IF_ERROR(options.Validate());
  // Before the tracing, which counts its spans there, and the service.
  auto registry = std::make_shared<prometheus::Registry>();
  // Before the service: it ends its spans until it is gone.
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<Tracing> tracing,
                       TracingFromFlags(program, registry.get()));
  if (tracing) options.tracer = tracing->tracer.get();
  // Certificates are checked before the (slow) weights are loaded.
  ServerOptions server_options;
  MOE_RETURN_IF_ERROR(ServerOptionsFromFlags(
      absl::GetFlag(FLAGS_port), {"moe.v1.ExpertWorker"}, &server_options));
  const absl::Time start = absl::Now();
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<common::Checkpoint> ckpt,
                       common::Checkpoint::Open(path));
  const common::ModelSpec& spec = ckpt->spec();
  MOE_ASSIGN_OR_RETURN(common::ExpertSet selection, Selection(spec));
  MOE_ASSIGN_OR_RETURN(const ShardRequest request, ShardRequestFromFlags());
  std::unique_ptr<common::TokenSet> admin_tokens;
  if (const std::string file = absl::GetFlag(FLAGS_admin_token_file);
      !file.empty()) {
    MOE_ASSIGN_OR_RETURN(admin_tokens, common::TokenSet::FromFile(file));
    options.admin_tokens = admin_tokens.get();
  }
  const int64_t max_rows = options.max_tokens_per_call;
  // What SetExperts loads: a new part from the checkpoint opened here,
  // warmed up like the experts started with.
  experts::ExpertLoader loader;
  if (admin_tokens != nullptr) {
    loader = [&ckpt, make_shard, request,
              max_rows](const common::ExpertSet& experts)
        -> absl::StatusOr<std::unique_ptr<experts::ExpertShard>> {
      MOE_ASSIGN_OR_RETURN(std::unique_ptr<experts::ExpertShard> part,
                           make_shard(*ckpt, experts, request));
      MOE_RETURN_IF_ERROR(WarmUp(*part, max_rows));
      return part;
    };
  }
  if (selection.empty() && admin_tokens == nullptr) {
    return absl::InvalidArgumentError(
        "this worker would host no expert (--experts / --shard select none)");
  }
  std::unique_ptr<experts::ExpertShard> initial;
  if (!selection.empty()) {
    MOE_ASSIGN_OR_RETURN(initial, make_shard(*ckpt, selection, request));
    MOE_RETURN_IF_ERROR(WarmUp(*initial, max_rows));
  }
  MOE_ASSIGN_OR_RETURN(
      std::unique_ptr<experts::ExpertPlacement> placement,
      ForFlag("--expert_memory_mb",
              experts::ExpertPlacement::Create(
                  spec, std::move(initial), std::move(loader),
                  absl::GetFlag(FLAGS_expert_memory_mb) << 20)));
  const experts::ExpertShard& shard = *placement->Current().shard;
  AddBuildInfo(*registry, shard.device().ToString());
  RpcMetrics rpc_metrics(*registry);
  experts::ExpertMetrics metrics(*registry, spec, shard.experts());
  metrics.SetDeviceMemory(shard.device_memory_bytes());
  metrics.SetPlacement(0, shard.weight_bytes());
  MOE_ASSIGN_OR_RETURN(
      std::unique_ptr<experts::ExpertService> service,
      experts::ExpertService::Create(
          placement.get(), {spec, ckpt->fingerprint()}, options, &metrics));
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
                << shard.device().ToString() << " ("
                << shard.weight_bytes() / (1 << 20) << " MiB of weights, "
                << "ready in "
                << absl::FormatDuration(
                       absl::Trunc(absl::Now() - start, absl::Milliseconds(1)))
                << ")"
                << (metrics_http ? absl::StrCat(", /metrics on port ",
                                                metrics_http->port())
                                 : "")
                << (admin_tokens != nullptr
                        ? "; placement changes accepted (--admin_token_file)"
                        : "");
  WaitToLeave(*runner, *service, *placement);
  // gRPC may return from Shutdown with handlers still running on our queue;
  // they finish their calls while the server object still exists.
  service->Drain();
  metrics.SetReady(false);
  return absl::OkStatus();
}

}  // namespace

int RunWorker(int argc, char** argv, const char* program, const char* usage,
              const ShardFactory& make_shard) {
  return ServerMain(argc, argv, program, usage,
                    [&] { return Run(make_shard, program); });
}

}  // namespace moe::server
