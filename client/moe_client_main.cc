// moe-client: the command-line client.
//
//   moe-client forward --checkpoint=F.safetensors --input=X.safetensors
//       [--input_tensor=x] [--draws_tensor=NAME] [--mode=eval|train]
//       [--policy=random|all|none|threshold] [--threshold=T]
//       [--capacity_factor=CF] [--seed=S] [--trace] --output=OUT.safetensors
//     Runs the in-process engine on a checkpoint.
//   moe-client forward --checkpoint=F --random_input=4x1024 [--input_seed=S]
//     The same on a seeded random input (no --output needed).
//   moe-client demo-checkpoint --output=F.safetensors [--seed=0] [--dim=512]
//       [--num_experts=16] [--hidden_mult=4] [--kind=moe]
//     Writes a seeded random model (the st-moe-pytorch README configuration
//     by default).
//
// Flag names accept dashes too (--input-tensor is --input_tensor).
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "common/checkpoint.h"
#include "common/demo_model.h"
#include "common/flags_util.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "common/torch_convert.h"
#include "client/forward_io.h"
#include "experts/expert_shard.h"
#include "router/engine/moe_engine.h"

ABSL_FLAG(std::string, checkpoint, "",
          "Checkpoint (safetensors with config_json) for the in-process "
          "engine.");
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
    return at::randn({b, n, dim}, gen);
  }
  MOE_ASSIGN_OR_RETURN(at::Tensor x,
                       ReadInputTensor(input, absl::GetFlag(FLAGS_input_tensor)));
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

void PrintSummary(const ModelConfig& config, const at::Tensor& x,
                  const router::RoutingOptions& o,
                  const router::ForwardResult& r) {
  const router::RoutingCounts& c = r.routing.counts;
  std::printf("forward: %s, x %s, mode %s, policy %s\n",
              common::ModelKindName(config.kind),
              common::ShapeToString(std::vector<int64_t>(x.sizes().begin(),
                                                         x.sizes().end()))
                  .c_str(),
              router::ModeName(o.mode), router::PolicyName(o.policy));
  auto level = [](const char* name, const router::RoutingResult& rr) {
    const router::RoutingCounts& k = rr.counts;
    std::printf(
        "  %s: capacity %lld per expert per group | kept %lld (first %lld, "
        "second %lld) | dropped first %lld, second %lld | second skipped by "
        "policy %lld | tokens that lost every choice %lld\n",
        name, static_cast<long long>(rr.capacity),
        static_cast<long long>(k.kept[0] + k.kept[1]),
        static_cast<long long>(k.kept[0]), static_cast<long long>(k.kept[1]),
        static_cast<long long>(k.dropped[0]),
        static_cast<long long>(k.dropped[1]),
        static_cast<long long>(k.second_skipped),
        static_cast<long long>(k.dropped_tokens));
  };
  std::printf("  tokens %lld\n", static_cast<long long>(c.tokens));
  level(r.has_inner ? "outer" : "routing", r.routing);
  if (r.has_inner) level("inner", r.inner_routing);
  int64_t max_load = 0;
  for (int64_t e = 0; e < r.plan.num_experts; ++e) {
    max_load = std::max(max_load, r.plan.count(e));
  }
  std::printf("  load per expert (kept assignments):\n");
  for (int64_t e = 0; e < r.plan.num_experts; ++e) {
    std::printf("    expert %3lld |%s| %lld\n", static_cast<long long>(e),
                Bar(r.plan.count(e), max_load, 40).c_str(),
                static_cast<long long>(r.plan.count(e)));
  }
  std::printf(
      "  losses: balance %.6g (weighted %.6g), router z %.6g (weighted "
      "%.6g), total aux %.6g\n",
      r.losses.balance_loss, r.losses.weighted_balance_loss,
      r.losses.router_z_loss, r.losses.weighted_router_z_loss,
      r.losses.total_aux_loss);
  const router::ForwardTimings& t = r.timings;
  std::printf(
      "  time: %.3f ms (pre %.3f, gate %.3f, plan+gather %.3f, experts %.3f, "
      "combine %.3f)\n",
      t.total_us / 1e3, t.pre_us / 1e3, t.gate_us / 1e3, t.plan_us / 1e3,
      t.experts_us / 1e3, t.combine_us / 1e3);
}

absl::Status RunForward() {
  const std::string checkpoint = absl::GetFlag(FLAGS_checkpoint);
  if (checkpoint.empty()) {
    return absl::InvalidArgumentError(
        "forward needs --checkpoint (the in-process engine)");
  }
  MOE_ASSIGN_OR_RETURN(router::RoutingOptions options, OptionsFromFlags());
  MOE_ASSIGN_OR_RETURN(common::Checkpoint ckpt,
                       common::LoadCheckpoint(checkpoint));
  MOE_ASSIGN_OR_RETURN(at::Tensor x, InputFromFlags(ckpt.config.dim, &options));
  MOE_ASSIGN_OR_RETURN(auto shard,
                       experts::ExpertShard::Create(std::move(ckpt.experts)));
  router::LocalExpertBackend backend(shard.get());
  MOE_ASSIGN_OR_RETURN(
      auto engine,
      router::MoeEngine::Create(ckpt.config, std::move(ckpt.router), &backend));
  MOE_ASSIGN_OR_RETURN(router::ForwardResult result,
                       engine->Forward(x, options));
  if (absl::GetFlag(FLAGS_summary)) {
    PrintSummary(ckpt.config, x, options, result);
  }
  const std::string output = absl::GetFlag(FLAGS_output);
  if (output.empty()) {
    if (absl::GetFlag(FLAGS_random_input).empty()) {
      return absl::InvalidArgumentError("forward needs --output");
    }
    return absl::OkStatus();
  }
  ForwardOutputs out;
  MOE_RETURN_IF_ERROR(common::TorchCall("output", [&] {
    out.y = result.y.to(x.scalar_type());
    if (absl::GetFlag(FLAGS_trace)) {
      out.extra = router::ForwardTrace(result, x.size(0), x.size(1));
    }
  }));
  out.balance_loss = result.losses.balance_loss;
  out.router_z_loss = result.losses.router_z_loss;
  out.weighted_balance_loss = result.losses.weighted_balance_loss;
  out.weighted_router_z_loss = result.losses.weighted_router_z_loss;
  out.total_aux_loss = result.losses.total_aux_loss;
  out.metadata = {{"checkpoint", checkpoint},
                  {"mode", router::ModeName(options.mode)},
                  {"policy", router::PolicyName(options.policy)}};
  MOE_RETURN_IF_ERROR(WriteForwardOutputs(output, out));
  MOE_LOG(INFO) << "wrote " << output;
  return absl::OkStatus();
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
    return absl::InvalidArgumentError(absl::StrCat(
        "--kind: \"", kind, "\" is not moe, sparse_moe_block or "
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
  moe::common::SetLogProgramName("moe-client");
  absl::SetProgramUsageMessage(
      "the moe-serve command-line client.\n\n"
      "  moe-client forward --checkpoint=F --input=X.safetensors "
      "--output=OUT.safetensors [--mode=eval|train] [--trace] ...\n"
      "      run the in-process engine; writes output.y and the losses\n"
      "  moe-client forward --checkpoint=F --random_input=4x1024\n"
      "      the same on a seeded random input, printing the routing summary\n"
      "  moe-client demo-checkpoint --output=F [--seed=0] [--dim=512] "
      "[--num_experts=16]\n"
      "      write a seeded random model\n\n"
      "Flag names accept dashes (--input-tensor) as well as underscores.");
  std::vector<std::string> args = moe::common::NormalizeFlagDashes(argc, argv);
  std::vector<char*> ptrs = moe::common::ArgvPointers(args);
  std::vector<char*> positional =
      absl::ParseCommandLine(static_cast<int>(args.size()), ptrs.data());
  if (positional.size() != 2) {
    std::cerr << "usage: moe-client forward|demo-checkpoint [flags]; "
                 "see --help\n";
    return 2;
  }
  const std::string command = positional[1];
  absl::Status status;
  if (command == "forward") {
    status = moe::client::RunForward();
  } else if (command == "demo-checkpoint") {
    status = moe::client::RunDemoCheckpoint();
  } else {
    std::cerr << "moe-client: unknown command \"" << command
              << "\" (forward, demo-checkpoint); see --help\n";
    return 2;
  }
  if (!status.ok()) {
    MOE_LOG(ERROR) << status.message();
    return 1;
  }
  return 0;
}
