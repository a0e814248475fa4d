// moe-client: the command-line client.
//
//   moe-client forward --checkpoint=F.safetensors --input=X.safetensors
//       [--input_tensor=x] [--draws_tensor=NAME] [--mode=eval|train]
//       [--policy=random|all|none|threshold] [--threshold=T]
//       [--capacity_factor=CF] [--seed=S] [--trace] --output=OUT.safetensors
//     Runs the in-process engine on a checkpoint.
//   moe-client forward --target=HOST:PORT --input=X.safetensors ...
//     The same through a running moe-router (same files, same flags).
//   moe-client forward --checkpoint=F --random_input=4x1024 [--input_seed=S]
//     The same on a seeded random input (no --output needed).
//   moe-client bench --target=HOST:PORT [--shape=1x32] [--concurrency=1]
//       [--duration=10]                    closed-loop load, with progress
//   moe-client stats --target=HOST:PORT    live view of the router's metrics
//   moe-client info --target=HOST:PORT     the model and its workers
//   moe-client health --target=HOST:PORT   grpc.health.v1 status (exit 0 if
//                                          SERVING)
//   moe-client demo-checkpoint --output=F.safetensors [--seed=0] [--dim=512]
//       [--num_experts=16] [--hidden_mult=4] [--kind=moe]
//     Writes a seeded random model (the st-moe-pytorch README configuration
//     by default).
//
// Flag names accept dashes too (--input-tensor is --input_tensor).
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <httplib.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <iostream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/forward_io.h"
#include "client/metrics_text.h"
#include "client/router_client.h"
#include "common/checkpoint.h"
#include "common/demo_model.h"
#include "common/flags_util.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "common/torch_convert.h"
#include "experts/expert_shard.h"
#include "proto/tensor_codec.h"
#include "router/engine/moe_engine.h"
#include "router/service/forward_response.h"

ABSL_FLAG(std::string, checkpoint, "",
          "Checkpoint (safetensors with config_json) for the in-process "
          "engine.");
ABSL_FLAG(std::string, target, "",
          "A moe-router's HOST:PORT (instead of --checkpoint).");
ABSL_FLAG(double, timeout_seconds, 60, "Deadline of a remote call.");
ABSL_FLAG(std::string, input, "", "Safetensors file holding the input x.");
ABSL_FLAG(std::string, input_tensor, "x",
          "Name of the input tensor [B, n, d] (\"x\" falls back to "
          "\"input.x\").");
ABSL_FLAG(std::string, draws_tensor, "",
          "Name of a tensor of second-choice uniforms [B, n] or [2, B, n] "
          "(row 1 used) in --input, for exact replay of the random policy.");
ABSL_FLAG(std::string, random_input, "",
          "Instead of --input: a seeded standard-normal input of shape BxN "
          "(for example 4x1024).");
ABSL_FLAG(uint64_t, input_seed, 0, "Seed of --random_input.");
ABSL_FLAG(std::string, mode, "eval", "eval or train.");
ABSL_FLAG(std::string, policy, "random",
          "Second-expert policy: random (the reference; uses the "
          "checkpoint's threshold), all, none, threshold.");
ABSL_FLAG(std::string, threshold, "",
          "Override of the checkpoint's threshold for the mode.");
ABSL_FLAG(std::string, capacity_factor, "",
          "Override of the checkpoint's capacity factor for the mode.");
ABSL_FLAG(std::string, seed, "",
          "Seed of the random policy's draws (default: a fresh one per "
          "forward).");
ABSL_FLAG(bool, trace, false,
          "Also write the routing tensors (trace.*) to --output.");
ABSL_FLAG(std::string, output, "", "Output safetensors file.");
ABSL_FLAG(bool, summary, true, "Print a routing summary to stdout.");
ABSL_FLAG(int, concurrency, 1, "bench: requests in flight at once.");
ABSL_FLAG(double, duration, 10, "bench: seconds to run.");
ABSL_FLAG(std::string, shape, "1x32", "bench: input shape BxN.");
ABSL_FLAG(std::string, json_out, "",
          "bench: also write the results as JSON to this file.");
ABSL_FLAG(double, interval, 1, "stats: seconds between refreshes.");
ABSL_FLAG(int, iterations, 0,
          "stats: refreshes before exiting (0: until Ctrl-C).");
ABSL_FLAG(int, dim, 512, "demo-checkpoint: model dim.");
ABSL_FLAG(int, num_experts, 16, "demo-checkpoint: number of experts.");
ABSL_FLAG(int, num_experts_inner, 0,
          "demo-checkpoint: inner experts (makes a two-level MoE).");
ABSL_FLAG(double, hidden_mult, 4, "demo-checkpoint: expert hidden_mult.");
ABSL_FLAG(std::string, kind, "moe",
          "demo-checkpoint: moe, sparse_moe_block or hierarchical_moe.");

namespace moe::client {
namespace {

using common::ModelConfig;

absl::StatusOr<router::RoutingOptions> OptionsFromFlags() {
  router::RoutingOptions o;
  MOE_ASSIGN_OR_RETURN(o.mode, router::ParseMode(absl::GetFlag(FLAGS_mode)));
  MOE_ASSIGN_OR_RETURN(o.policy,
                       router::ParsePolicy(absl::GetFlag(FLAGS_policy)));
  const std::string threshold = absl::GetFlag(FLAGS_threshold);
  if (!threshold.empty()) {
    float v;
    if (!absl::SimpleAtof(threshold, &v)) {
      return absl::InvalidArgumentError("--threshold: not a number");
    }
    o.threshold = v;
  }
  const std::string cf = absl::GetFlag(FLAGS_capacity_factor);
  if (!cf.empty()) {
    double v;
    if (!absl::SimpleAtod(cf, &v)) {
      return absl::InvalidArgumentError("--capacity_factor: not a number");
    }
    o.capacity_factor = v;
  }
  const std::string seed = absl::GetFlag(FLAGS_seed);
  if (!seed.empty()) {
    uint64_t v;
    if (!absl::SimpleAtoi(seed, &v)) {
      return absl::InvalidArgumentError("--seed: not an unsigned integer");
    }
    o.seed = v;
  }
  return o;
}

absl::StatusOr<at::Tensor> InputFromFlags(int64_t dim,
                                          router::RoutingOptions* options) {
  const std::string input = absl::GetFlag(FLAGS_input);
  const std::string random_input = absl::GetFlag(FLAGS_random_input);
  if (input.empty() == random_input.empty()) {
    return absl::InvalidArgumentError(
        "give exactly one of --input and --random_input");
  }
  if (!random_input.empty()) {
    std::vector<std::string> parts = absl::StrSplit(random_input, 'x');
    int64_t b, n;
    if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &b) ||
        !absl::SimpleAtoi(parts[1], &n) || b < 1 || n < 1) {
      return absl::InvalidArgumentError(
          "--random_input: expected BxN, for example 4x1024");
    }
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(
        absl::GetFlag(FLAGS_input_seed));
    if (dim < 1) {
      return absl::InvalidArgumentError(
          "--random_input: the model dim is unknown");
    }
    return at::randn({b, n, dim}, gen);
  }
  MOE_ASSIGN_OR_RETURN(
      at::Tensor x, ReadInputTensor(input, absl::GetFlag(FLAGS_input_tensor)));
  const std::string draws = absl::GetFlag(FLAGS_draws_tensor);
  if (!draws.empty()) {
    MOE_ASSIGN_OR_RETURN(options->second_choice_uniforms,
                         ReadInputTensor(input, draws));
  }
  return x;
}

std::string Bar(int64_t value, int64_t max, int width) {
  const int n = max > 0 ? static_cast<int>((value * width + max / 2) / max) : 0;
  return std::string(n, '#') + std::string(width - n, ' ');
}

void PrintLevel(const char* name, const moe::v1::LevelStats& k) {
  std::printf(
      "  %s: capacity %lld per expert per group | kept %lld (first %lld, "
      "second %lld) | dropped first %lld, second %lld | second skipped by "
      "policy %lld | tokens that lost every choice %lld\n",
      name, static_cast<long long>(k.expert_capacity()),
      static_cast<long long>(k.kept_first() + k.kept_second()),
      static_cast<long long>(k.kept_first()),
      static_cast<long long>(k.kept_second()),
      static_cast<long long>(k.dropped_first()),
      static_cast<long long>(k.dropped_second()),
      static_cast<long long>(k.second_skipped()),
      static_cast<long long>(k.dropped_tokens()));
}

void PrintSummary(const std::string& where, const at::Tensor& x,
                  const router::RoutingOptions& o,
                  const moe::v1::ForwardResponse& r, double latency_ms,
                  const router::ForwardTimings* timings) {
  const moe::v1::RoutingStats& s = r.stats();
  std::printf("forward (%s): x %s, mode %s, policy %s\n", where.c_str(),
              common::ShapeToString(
                  std::vector<int64_t>(x.sizes().begin(), x.sizes().end()))
                  .c_str(),
              router::ModeName(o.mode), router::PolicyName(o.policy));
  std::printf("  tokens %lld\n", static_cast<long long>(s.routing().tokens()));
  PrintLevel(s.has_inner() ? "outer" : "routing", s.routing());
  if (s.has_inner()) PrintLevel("inner", s.inner());
  if (r.degraded()) {
    std::printf(
        "  DEGRADED: experts [%s] unavailable, %lld assignments "
        "dropped\n",
        absl::StrJoin(r.failed_experts(), ",").c_str(),
        static_cast<long long>(s.dropped_expert_unavailable()));
  }
  int64_t max_load = 0;
  for (int64_t k : s.kept_per_expert()) max_load = std::max(max_load, k);
  std::printf("  load per expert (kept assignments):\n");
  for (int e = 0; e < s.kept_per_expert_size(); ++e) {
    std::printf("    expert %3d |%s| %lld\n", e,
                Bar(s.kept_per_expert(e), max_load, 40).c_str(),
                static_cast<long long>(s.kept_per_expert(e)));
  }
  const moe::v1::Losses& l = r.losses();
  std::printf(
      "  losses: balance %.6g (weighted %.6g), router z %.6g (weighted "
      "%.6g), total aux %.6g\n",
      l.balance_loss(), l.weighted_balance_loss(), l.router_z_loss(),
      l.weighted_router_z_loss(), l.total_aux_loss());
  std::printf("  latency: %.3f ms", latency_ms);
  if (timings != nullptr) {
    const router::ForwardTimings& t = *timings;
    std::printf(
        " (pre %.3f, gate %.3f, plan+gather %.3f, experts %.3f, "
        "combine %.3f)",
        t.pre_us / 1e3, t.gate_us / 1e3, t.plan_us / 1e3, t.experts_us / 1e3,
        t.combine_us / 1e3);
  }
  std::printf("\n");
}

moe::v1::RoutingOptions ToProto(const router::RoutingOptions& o, bool trace) {
  moe::v1::RoutingOptions p;
  p.set_mode(o.mode == router::Mode::kTrain ? moe::v1::TRAIN : moe::v1::EVAL);
  switch (o.policy) {
    case router::SecondExpertPolicy::kRandom:
      p.set_policy(moe::v1::RANDOM);
      break;
    case router::SecondExpertPolicy::kAll:
      p.set_policy(moe::v1::ALL);
      break;
    case router::SecondExpertPolicy::kNone:
      p.set_policy(moe::v1::NONE);
      break;
    case router::SecondExpertPolicy::kThreshold:
      p.set_policy(moe::v1::THRESHOLD);
      break;
  }
  if (o.threshold) p.set_threshold(*o.threshold);
  if (o.capacity_factor) p.set_capacity_factor(*o.capacity_factor);
  if (o.seed) p.set_seed(*o.seed);
  p.set_return_trace(trace);
  return p;
}

// In-process: the engine's result in the router's response form.
absl::StatusOr<moe::v1::ForwardResponse> ForwardInProcess(
    const std::string& checkpoint, router::RoutingOptions& options,
    at::Tensor* x, router::ForwardTimings* timings) {
  MOE_ASSIGN_OR_RETURN(common::Checkpoint ckpt,
                       common::LoadCheckpoint(checkpoint));
  MOE_ASSIGN_OR_RETURN(*x, InputFromFlags(ckpt.config.dim, &options));
  MOE_ASSIGN_OR_RETURN(auto shard,
                       experts::ExpertShard::Create(std::move(ckpt.experts)));
  router::LocalExpertBackend backend(shard.get());
  MOE_ASSIGN_OR_RETURN(
      auto engine,
      router::MoeEngine::Create(ckpt.config, std::move(ckpt.router), &backend));
  MOE_ASSIGN_OR_RETURN(router::ForwardResult result,
                       engine->Forward(*x, options));
  *timings = result.timings;
  MOE_ASSIGN_OR_RETURN(moe::v1::DType dtype,
                       proto::WireDType(x->scalar_type()));
  moe::v1::ForwardResponse response;
  MOE_RETURN_IF_ERROR(router::FillForwardResponse(
      result, dtype, absl::GetFlag(FLAGS_trace), &response));
  return response;
}

absl::StatusOr<moe::v1::ForwardResponse> ForwardRemote(
    const std::string& target, router::RoutingOptions& options, at::Tensor* x) {
  client::ClientOptions client_options;
  client_options.timeout = absl::Seconds(absl::GetFlag(FLAGS_timeout_seconds));
  auto client = client::RouterClient::Create(target, client_options);
  int64_t dim = -1;
  if (!absl::GetFlag(FLAGS_random_input).empty()) {
    MOE_ASSIGN_OR_RETURN(moe::v1::ModelInfo info, client->GetModelInfo());
    dim = info.dim();
  }
  MOE_ASSIGN_OR_RETURN(*x, InputFromFlags(dim, &options));
  moe::v1::ForwardRequest request;
  MOE_ASSIGN_OR_RETURN(moe::v1::DType dtype,
                       proto::WireDType(x->scalar_type()));
  MOE_RETURN_IF_ERROR(proto::EncodeTensor(*x, dtype, request.mutable_x()));
  *request.mutable_options() = ToProto(options, absl::GetFlag(FLAGS_trace));
  if (options.second_choice_uniforms.defined()) {
    MOE_RETURN_IF_ERROR(proto::EncodeTensor(
        options.second_choice_uniforms.to(at::kFloat), moe::v1::FLOAT32,
        request.mutable_options()->mutable_second_choice_uniforms()));
  }
  return client->Forward(request);
}

absl::Status RunForward() {
  const std::string checkpoint = absl::GetFlag(FLAGS_checkpoint);
  const std::string target = absl::GetFlag(FLAGS_target);
  if (checkpoint.empty() == target.empty()) {
    return absl::InvalidArgumentError(
        "forward needs exactly one of --checkpoint (in-process engine) and "
        "--target (a moe-router)");
  }
  MOE_ASSIGN_OR_RETURN(router::RoutingOptions options, OptionsFromFlags());
  const std::string output = absl::GetFlag(FLAGS_output);
  if (output.empty() && absl::GetFlag(FLAGS_random_input).empty()) {
    return absl::InvalidArgumentError("forward needs --output");
  }
  at::Tensor x;
  router::ForwardTimings timings;
  const absl::Time start = absl::Now();
  absl::StatusOr<moe::v1::ForwardResponse> response =
      target.empty() ? ForwardInProcess(checkpoint, options, &x, &timings)
                     : ForwardRemote(target, options, &x);
  if (!response.ok()) return response.status();
  const double latency_ms =
      target.empty() ? timings.total_us / 1e3
                     : absl::ToDoubleMilliseconds(absl::Now() - start);
  if (absl::GetFlag(FLAGS_summary)) {
    PrintSummary(target.empty() ? "in-process" : target, x, options, *response,
                 latency_ms, target.empty() ? &timings : nullptr);
  }
  if (output.empty()) return absl::OkStatus();
  ForwardOutputs out;
  MOE_ASSIGN_OR_RETURN(out.y,
                       proto::DecodeTensor(response->y(), "y", x.numel()));
  for (const moe::v1::NamedTensor& t : response->trace()) {
    MOE_ASSIGN_OR_RETURN(
        at::Tensor tensor,
        proto::DecodeTensor(t.tensor(), t.name(),
                            std::numeric_limits<int64_t>::max()));
    out.extra.emplace_back(t.name(), tensor);
  }
  const moe::v1::Losses& l = response->losses();
  out.balance_loss = l.balance_loss();
  out.router_z_loss = l.router_z_loss();
  out.weighted_balance_loss = l.weighted_balance_loss();
  out.weighted_router_z_loss = l.weighted_router_z_loss();
  out.total_aux_loss = l.total_aux_loss();
  out.metadata = {{"source", target.empty() ? checkpoint : target},
                  {"mode", router::ModeName(options.mode)},
                  {"policy", router::PolicyName(options.policy)},
                  {"degraded", response->degraded() ? "true" : "false"}};
  MOE_RETURN_IF_ERROR(WriteForwardOutputs(output, out));
  MOE_LOG(INFO) << "wrote " << output;
  return absl::OkStatus();
}

absl::Status RunInfo() {
  const std::string target = absl::GetFlag(FLAGS_target);
  if (target.empty()) return absl::InvalidArgumentError("info needs --target");
  client::ClientOptions options;
  options.timeout = absl::Seconds(absl::GetFlag(FLAGS_timeout_seconds));
  MOE_ASSIGN_OR_RETURN(
      moe::v1::ModelInfo info,
      client::RouterClient::Create(target, options)->GetModelInfo());
  std::printf("model: %s, dim %lld, experts %lld%s, expert hidden %lld\n",
              info.kind().c_str(), static_cast<long long>(info.dim()),
              static_cast<long long>(info.num_experts()),
              info.num_experts_inner() > 0
                  ? absl::StrCat(" x ", info.num_experts_inner()).c_str()
                  : "",
              static_cast<long long>(info.expert_hidden()));
  std::printf(
      "defaults: threshold train %g / eval %g, capacity factor train "
      "%g / eval %g, loss coefs balance %g, z %g\n",
      info.threshold_train(), info.threshold_eval(),
      info.capacity_factor_train(), info.capacity_factor_eval(),
      info.balance_loss_coef(), info.router_z_loss_coef());
  std::printf(
      "on_expert_failure %s, max tokens per request %lld, in flight "
      "%lld\n",
      info.on_expert_failure().c_str(),
      static_cast<long long>(info.max_tokens_per_request()),
      static_cast<long long>(info.inflight_requests()));
  for (const moe::v1::WorkerInfo& w : info.workers()) {
    std::printf("worker %s: %s, experts [%s]%s%s\n", w.address().c_str(),
                w.up() ? "up" : "DOWN",
                absl::StrJoin(w.expert_ids(), ",").c_str(),
                w.device().empty() ? "" : " on ", w.device().c_str());
  }
  return absl::OkStatus();
}

// Closed-loop load: `concurrency` threads each send the same request back to
// back for `duration` seconds; progress every second, then throughput and
// latency percentiles.
absl::Status RunBench() {
  const std::string target = absl::GetFlag(FLAGS_target);
  if (target.empty()) return absl::InvalidArgumentError("bench needs --target");
  MOE_ASSIGN_OR_RETURN(router::RoutingOptions options, OptionsFromFlags());
  client::ClientOptions client_options;
  client_options.timeout = absl::Seconds(absl::GetFlag(FLAGS_timeout_seconds));
  client_options.max_attempts = 1;
  auto client = client::RouterClient::Create(target, client_options);
  MOE_ASSIGN_OR_RETURN(moe::v1::ModelInfo info, client->GetModelInfo());
  std::vector<std::string> parts =
      absl::StrSplit(absl::GetFlag(FLAGS_shape), 'x');
  int64_t b = 0, n = 0;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &b) ||
      !absl::SimpleAtoi(parts[1], &n) || b < 1 || n < 1) {
    return absl::InvalidArgumentError("--shape: expected BxN, e.g. 1x32");
  }
  at::Generator gen =
      at::make_generator<at::CPUGeneratorImpl>(absl::GetFlag(FLAGS_input_seed));
  moe::v1::ForwardRequest request;
  MOE_RETURN_IF_ERROR(proto::EncodeTensor(at::randn({b, n, info.dim()}, gen),
                                          moe::v1::FLOAT32,
                                          request.mutable_x()));
  *request.mutable_options() = ToProto(options, false);
  const int concurrency = std::max(1, absl::GetFlag(FLAGS_concurrency));
  const absl::Duration duration = absl::Seconds(absl::GetFlag(FLAGS_duration));
  std::printf("bench: %s, x [%lld, %lld, %lld], concurrency %d, %s\n",
              target.c_str(), static_cast<long long>(b),
              static_cast<long long>(n), static_cast<long long>(info.dim()),
              concurrency, absl::FormatDuration(duration).c_str());
  std::atomic<int64_t> done{0}, errors{0};
  std::mutex mu;
  std::vector<double> latencies_ms;
  std::string last_error;
  const absl::Time start = absl::Now();
  const absl::Time end = start + duration;
  std::vector<std::thread> threads;
  for (int i = 0; i < concurrency; ++i) {
    threads.emplace_back([&] {
      std::vector<double> mine;
      while (absl::Now() < end) {
        const absl::Time t0 = absl::Now();
        auto r = client->Forward(request);
        const double ms = absl::ToDoubleMilliseconds(absl::Now() - t0);
        if (r.ok()) {
          mine.push_back(ms);
          ++done;
        } else {
          ++errors;
          std::lock_guard<std::mutex> lock(mu);
          last_error = r.status().ToString();
        }
      }
      std::lock_guard<std::mutex> lock(mu);
      latencies_ms.insert(latencies_ms.end(), mine.begin(), mine.end());
    });
  }
  int64_t last = 0;
  for (int second = 1; absl::Now() < end; ++second) {
    absl::SleepFor(std::min(absl::Seconds(1), end - absl::Now()));
    const int64_t now_done = done.load();
    std::fprintf(stderr, "  %3ds  %lld requests (%lld/s)  %lld errors\n",
                 second, static_cast<long long>(now_done),
                 static_cast<long long>(now_done - last),
                 static_cast<long long>(errors.load()));
    last = now_done;
  }
  for (std::thread& t : threads) t.join();
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  std::sort(latencies_ms.begin(), latencies_ms.end());
  auto pct = [&](double q) {
    if (latencies_ms.empty()) return 0.0;
    const size_t i = std::min(latencies_ms.size() - 1,
                              static_cast<size_t>(q * latencies_ms.size()));
    return latencies_ms[i];
  };
  std::printf(
      "  %lld ok, %lld errors in %.1f s: %.1f requests/s, %.0f tokens/s\n"
      "  latency ms: p50 %.3f  p90 %.3f  p99 %.3f  max %.3f\n",
      static_cast<long long>(done.load()),
      static_cast<long long>(errors.load()), seconds, done.load() / seconds,
      done.load() * b * n / seconds, pct(0.5), pct(0.9), pct(0.99),
      latencies_ms.empty() ? 0.0 : latencies_ms.back());
  if (errors.load() > 0) std::printf("  last error: %s\n", last_error.c_str());
  const std::string json_out = absl::GetFlag(FLAGS_json_out);
  if (!json_out.empty()) {
    std::FILE* f = std::fopen(json_out.c_str(), "w");
    if (f == nullptr)
      return absl::PermissionDeniedError("cannot write " + json_out);
    std::fprintf(
        f,
        "{\"shape\": [%lld, %lld, %lld], \"concurrency\": %d, \"ok\": %lld, "
        "\"errors\": %lld, \"seconds\": %.3f, \"requests_per_s\": %.3f, "
        "\"tokens_per_s\": %.1f, \"p50_ms\": %.3f, \"p90_ms\": %.3f, "
        "\"p99_ms\": %.3f, \"max_ms\": %.3f}\n",
        static_cast<long long>(b), static_cast<long long>(n),
        static_cast<long long>(info.dim()), concurrency,
        static_cast<long long>(done.load()),
        static_cast<long long>(errors.load()), seconds, done.load() / seconds,
        done.load() * b * n / seconds, pct(0.5), pct(0.9), pct(0.99),
        latencies_ms.empty() ? 0.0 : latencies_ms.back());
    std::fclose(f);
  }
  return errors.load() == 0 ? absl::OkStatus()
                            : absl::UnavailableError("some requests failed");
}

absl::StatusOr<std::vector<MetricSample>> ScrapeMetrics(const std::string& host,
                                                        int port) {
  httplib::Client http(host, port);
  http.set_connection_timeout(2);
  http.set_read_timeout(5);
  auto res = http.Get("/metrics");
  if (!res || res->status != 200) {
    return absl::UnavailableError(
        absl::StrCat("cannot read http://", host, ":", port, "/metrics"));
  }
  return ParseMetricsText(res->body);
}

std::map<double, double> Buckets(const std::vector<MetricSample>& m,
                                 const std::string& name) {
  std::map<double, double> out;
  for (const MetricSample& s : m) {
    if (s.name != name) continue;
    auto le = s.labels.find("le");
    if (le == s.labels.end()) continue;
    double bound;
    if (le->second == "+Inf") {
      bound = std::numeric_limits<double>::infinity();
    } else if (!absl::SimpleAtod(le->second, &bound)) {
      continue;
    }
    out[bound] += s.value;
  }
  return out;
}

// A terminal view of the router's metrics, refreshed every --interval.
absl::Status RunStats() {
  const std::string target = absl::GetFlag(FLAGS_target);
  if (target.empty()) return absl::InvalidArgumentError("stats needs --target");
  client::ClientOptions options;
  options.timeout = absl::Seconds(5);
  MOE_ASSIGN_OR_RETURN(
      moe::v1::ModelInfo info,
      client::RouterClient::Create(target, options)->GetModelInfo());
  if (info.metrics_port() <= 0) {
    return absl::FailedPreconditionError(
        "the router serves no /metrics (started with --metrics_port=-1)");
  }
  const std::string host = target.substr(0, target.rfind(':'));
  const double interval = std::max(0.1, absl::GetFlag(FLAGS_interval));
  const int iterations = absl::GetFlag(FLAGS_iterations);
  const bool tty = ::isatty(STDOUT_FILENO);
  MOE_ASSIGN_OR_RETURN(std::vector<MetricSample> prev,
                       ScrapeMetrics(host, info.metrics_port()));
  for (int it = 1; iterations <= 0 || it <= iterations; ++it) {
    absl::SleepFor(absl::Seconds(interval));
    MOE_ASSIGN_OR_RETURN(std::vector<MetricSample> cur,
                         ScrapeMetrics(host, info.metrics_port()));
    auto delta = [&](const std::string& name,
                     const std::map<std::string, std::string>& match = {}) {
      return SumSamples(cur, name, match) - SumSamples(prev, name, match);
    };
    std::string out;
    if (tty) out += "\033[H\033[2J";
    absl::StrAppend(
        &out, "moe-serve router ", target, "  (metrics :", info.metrics_port(),
        ")  ", absl::FormatTime("%H:%M:%S", absl::Now(), absl::LocalTimeZone()),
        "  interval ", interval, " s\n");
    const double ok = delta("moe_router_requests_total", {{"code", "OK"}});
    const double all = delta("moe_router_requests_total");
    absl::StrAppend(
        &out,
        absl::StrFormat("requests  %.1f/s (errors %.1f/s)   tokens %.0f/s   in "
                        "flight %.0f   total %.0f requests\n",
                        all / interval, (all - ok) / interval,
                        delta("moe_router_tokens_total") / interval,
                        SumSamples(cur, "moe_router_inflight_requests"),
                        SumSamples(cur, "moe_router_requests_total")));
    std::map<double, double> b_now =
        Buckets(cur, "moe_router_request_duration_seconds_bucket");
    std::map<double, double> b_prev =
        Buckets(prev, "moe_router_request_duration_seconds_bucket");
    for (auto& [le, count] : b_now) count -= b_prev[le];
    absl::StrAppend(
        &out, absl::StrFormat("latency   p50 %.2f ms   p99 %.2f ms   (last "
                              "interval, from histogram buckets)\n",
                              HistogramQuantile(0.5, b_now) * 1e3,
                              HistogramQuantile(0.99, b_now) * 1e3));
    const double kept = delta("moe_router_expert_assignments_total");
    const std::map<std::string, double> dropped_now =
        SumBy(cur, "moe_router_dropped_assignments_total", "reason");
    const std::map<std::string, double> dropped_prev =
        SumBy(prev, "moe_router_dropped_assignments_total", "reason");
    double dropped = 0;
    for (const auto& [reason, v] : dropped_now) {
      dropped += v - dropped_prev.at(reason);
    }
    absl::StrAppend(&out, "drops    ");
    for (const auto& [reason, v] : dropped_now) {
      const double d = v - dropped_prev.at(reason);
      absl::StrAppend(
          &out, absl::StrFormat(
                    " %s %.2f%%", reason,
                    kept + dropped > 0 ? 100 * d / (kept + dropped) : 0.0));
    }
    absl::StrAppend(
        &out,
        absl::StrFormat("   tokens that lost every choice %.1f/s\n",
                        delta("moe_router_dropped_tokens_total") / interval));
    absl::StrAppend(
        &out,
        absl::StrFormat("balance   balancedness %.3f   capacity %.0f   "
                        "balance loss %.4f   z-loss %.4f\n",
                        SumSamples(cur, "moe_router_load_balancedness"),
                        SumSamples(cur, "moe_router_expert_capacity_tokens"),
                        SumSamples(cur, "moe_router_balance_loss"),
                        SumSamples(cur, "moe_router_router_z_loss")));
    std::map<std::string, double> load_now =
        SumBy(cur, "moe_router_expert_assignments_total", "expert");
    const std::map<std::string, double> load_prev =
        SumBy(prev, "moe_router_expert_assignments_total", "expert");
    std::vector<std::pair<int, double>> load;
    double max_load = 0;
    for (const auto& [expert, v] : load_now) {
      int id;
      if (!absl::SimpleAtoi(expert, &id)) continue;
      const double rate = (v - load_prev.at(expert)) / interval;
      load.emplace_back(id, rate);
      max_load = std::max(max_load, rate);
    }
    std::sort(load.begin(), load.end());
    absl::StrAppend(&out, "load per expert (kept assignments/s):\n");
    for (const auto& [id, rate] : load) {
      absl::StrAppend(
          &out, absl::StrFormat("  expert %3d |%s| %.1f/s\n", id,
                                Bar(static_cast<int64_t>(rate * 100),
                                    static_cast<int64_t>(max_load * 100), 40),
                                rate));
    }
    absl::StrAppend(&out, "workers:");
    for (const auto& [worker, up] :
         SumBy(cur, "moe_router_worker_up", "worker")) {
      absl::StrAppend(&out, " ", worker, up > 0 ? " up" : " DOWN", ";");
    }
    absl::StrAppend(&out, "\n");
    std::fputs(out.c_str(), stdout);
    std::fflush(stdout);
    prev = std::move(cur);
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> RunHealth() {
  const std::string target = absl::GetFlag(FLAGS_target);
  if (target.empty())
    return absl::InvalidArgumentError("health needs --target");
  MOE_ASSIGN_OR_RETURN(
      auto status,
      client::CheckHealth(target,
                          absl::Seconds(absl::GetFlag(FLAGS_timeout_seconds))));
  std::printf("%s\n",
              grpc::health::v1::HealthCheckResponse::ServingStatus_Name(status)
                  .c_str());
  return status == grpc::health::v1::HealthCheckResponse::SERVING;
}

absl::Status RunDemoCheckpoint() {
  const std::string output = absl::GetFlag(FLAGS_output);
  if (output.empty()) {
    return absl::InvalidArgumentError("demo-checkpoint needs --output");
  }
  ModelConfig config = common::DefaultDemoConfig();
  const std::string kind = absl::GetFlag(FLAGS_kind);
  if (kind == "sparse_moe_block") {
    config.kind = common::ModelKind::kSparseMoeBlock;
  } else if (kind == "hierarchical_moe") {
    config.kind = common::ModelKind::kHierarchicalMoe;
  } else if (kind != "moe") {
    return absl::InvalidArgumentError(
        absl::StrCat("--kind: \"", kind,
                     "\" is not moe, sparse_moe_block or "
                     "hierarchical_moe"));
  }
  config.dim = absl::GetFlag(FLAGS_dim);
  config.num_experts = absl::GetFlag(FLAGS_num_experts);
  config.num_experts_inner = absl::GetFlag(FLAGS_num_experts_inner);
  config.hidden_mult = absl::GetFlag(FLAGS_hidden_mult);
  uint64_t seed = 0;
  const std::string seed_flag = absl::GetFlag(FLAGS_seed);
  if (!seed_flag.empty() && !absl::SimpleAtoi(seed_flag, &seed)) {
    return absl::InvalidArgumentError("--seed: not an unsigned integer");
  }
  MOE_RETURN_IF_ERROR(common::WriteDemoCheckpoint(output, config, seed));
  MOE_LOG(INFO) << "wrote " << output << ": " << config.ToJson();
  return absl::OkStatus();
}

}  // namespace
}  // namespace moe::client

int main(int argc, char** argv) {
  const std::vector<std::string> positional = moe::common::ParseCommandLine(
      argc, argv, "moe-client",

      "the moe-serve command-line client.\n\n"
      "  moe-client forward --checkpoint=F --input=X.safetensors "
      "--output=OUT.safetensors [--mode=eval|train] [--trace] ...\n"
      "      run the in-process engine; writes output.y and the losses\n"
      "  moe-client forward --target=HOST:PORT --input=X.safetensors "
      "--output=OUT.safetensors ...\n"
      "      the same through a running moe-router\n"
      "  moe-client info --target=HOST:PORT\n"
      "      the model, its defaults and which worker hosts which expert\n"
      "  moe-client bench --target=HOST:PORT [--shape=1x32] "
      "[--concurrency=1] [--duration=10]\n"
      "      closed-loop load with progress; throughput and latency "
      "percentiles\n"
      "  moe-client stats --target=HOST:PORT [--interval=1] "
      "[--iterations=0]\n"
      "      live view of the router's metrics: load per expert, drops by "
      "reason, latency\n"
      "  moe-client health --target=HOST:PORT\n"
      "      grpc.health.v1 status; exit code 0 when SERVING\n"
      "  moe-client forward --checkpoint=F --random_input=4x1024\n"
      "      the same on a seeded random input, printing the routing summary\n"
      "  moe-client demo-checkpoint --output=F [--seed=0] [--dim=512] "
      "[--num_experts=16]\n"
      "      write a seeded random model\n\n"
      "Flag names accept dashes (--input-tensor) as well as underscores.");
  if (positional.size() != 2) {
    std::cerr
        << "usage: moe-client forward|bench|stats|info|health|demo-checkpoint "
           "[flags]; "
           "see --help\n";
    return 2;
  }
  const std::string command = positional[1];
  absl::Status status;
  if (command == "forward") {
    status = moe::client::RunForward();
  } else if (command == "bench") {
    status = moe::client::RunBench();
  } else if (command == "stats") {
    status = moe::client::RunStats();
  } else if (command == "info") {
    status = moe::client::RunInfo();
  } else if (command == "health") {
    absl::StatusOr<bool> serving = moe::client::RunHealth();
    if (!serving.ok()) {
      MOE_LOG(ERROR) << serving.status().message();
      return 1;
    }
    return *serving ? 0 : 1;
  } else if (command == "demo-checkpoint") {
    status = moe::client::RunDemoCheckpoint();
  } else {
    std::cerr << "moe-client: unknown command \"" << command
              << "\" (forward, bench, stats, info, health, demo-checkpoint); "
                 "see --help\n";
    return 2;
  }
  return moe::common::ExitCode(status);
}
