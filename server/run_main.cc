// moe-run: the in-process engine, the reference path for parity checks and
// debugging, with the forward flags and files of `moe-client forward`.
//
//   moe-run forward --checkpoint=F --input=X.safetensors [--layer=NAME]
//       [--mode=eval|train] [--trace] --output=OUT.safetensors
//   moe-run forward --checkpoint=F --random_input=4x1024
//   moe-run demo-checkpoint --output=F [--layers=1] [--seed=0] [--dim=512]
//       [--num_experts=16] [--num_experts_inner=0] [--hidden_mult=4]
//       [--kind=moe|sparse_moe_block|hierarchical_moe]
//
// A forward here runs the same request path as the router
// (router::ForwardRunner), with every expert in this process.
#include <cstdio>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/checkpoint.h"
#include "common/cli/command_line.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "common/torch/checkpoint_weights.h"
#include "common/torch/demo_model.h"
#include "experts/cpu_expert_shard.h"
#include "proto/cli/forward_flags.h"
#include "router/api/forward_runner.h"
#include "router/engine/expert_backend.h"
#include "router/engine/model_engine.h"
#include "server/compute_flags.h"

ABSL_FLAG(std::string, checkpoint, "",
          "forward: the checkpoint (safetensors with config_json).");
ABSL_FLAG(int, layers, 1, "demo-checkpoint: number of MoE layers.");
ABSL_FLAG(int, dim, 512, "demo-checkpoint: model dim.");
ABSL_FLAG(int, num_experts, 16, "demo-checkpoint: experts per layer.");
ABSL_FLAG(int, num_experts_inner, 0,
          "demo-checkpoint: inner experts per outer expert; > 0 makes a "
          "two-level MoE (--kind=hierarchical_moe without it: 4).");
ABSL_FLAG(double, hidden_mult, 4, "demo-checkpoint: expert hidden_mult.");
ABSL_FLAG(std::string, kind, "moe",
          "demo-checkpoint: moe, sparse_moe_block or hierarchical_moe "
          "(--num_experts outer experts of --num_experts_inner each).");

ABSL_DECLARE_FLAG(std::string, output);

namespace moe {
namespace {

absl::Status RunForward() {
  const std::string path = absl::GetFlag(FLAGS_checkpoint);
  if (path.empty()) {
    return absl::InvalidArgumentError(
        "forward needs --checkpoint (moe-run is the in-process engine; "
        "moe-client forward --target=HOST:PORT goes through a router)");
  }
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<common::Checkpoint> ckpt,
                       common::Checkpoint::Open(path));
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<router::ModelEngine> model,
                       router::ModelEngine::Load(*ckpt));
  MOE_ASSIGN_OR_RETURN(std::vector<common::ExpertMap> experts,
                       common::LoadAllExperts(*ckpt));
  ckpt.reset();
  std::map<common::ExpertKey, common::ExpertWeights> all;
  for (size_t l = 0; l < experts.size(); ++l) {
    for (auto& [id, w] : experts[l]) {
      all[{static_cast<int32_t>(l), id}] = std::move(w);
    }
  }
  MOE_ASSIGN_OR_RETURN(experts::CpuShardOptions compute,
                       server::CpuShardOptionsFromFlags());
  MOE_ASSIGN_OR_RETURN(
      auto shard, experts::CpuExpertShard::Create(std::move(all), compute));
  router::LocalExpertBackend backend(shard.get());
  router::ForwardLimits limits;
  limits.max_tokens_per_request = std::numeric_limits<int32_t>::max();
  router::ForwardRunner runner(model.get(), limits);
  MOE_ASSIGN_OR_RETURN(moe::v1::ForwardRequest request,
                       cli::ForwardRequestFromFlags(model->spec().dim));
  moe::v1::ForwardResponse response;
  const absl::Time start = absl::Now();
  MOE_ASSIGN_OR_RETURN(router::AdmittedForward admitted, runner.Admit(request));
  MOE_RETURN_IF_ERROR(runner.Run(admitted, backend, &response));
  return cli::FinishForward("in-process", request, response,
                            absl::Now() - start);
}

absl::Status RunDemoCheckpoint() {
  const std::string output = absl::GetFlag(FLAGS_output);
  if (output.empty()) {
    return absl::InvalidArgumentError("demo-checkpoint needs --output");
  }
  common::LayerConfig config = common::DefaultDemoConfig();
  const std::string kind = absl::GetFlag(FLAGS_kind);
  int inner = absl::GetFlag(FLAGS_num_experts_inner);
  if (inner < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--num_experts_inner: ", inner, " is negative"));
  }
  if (kind == "hierarchical_moe" || (kind == "moe" && inner > 0)) {
    config.kind = common::LayerKind::kHierarchicalMoe;
    if (inner == 0) inner = 4;
  } else if (inner > 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--num_experts_inner makes a two-level MoE; --kind=", kind,
                     " has one level"));
  } else if (kind == "sparse_moe_block") {
    config.kind = common::LayerKind::kSparseMoeBlock;
  } else if (kind != "moe") {
    return absl::InvalidArgumentError(
        absl::StrCat("--kind: \"", kind,
                     "\" is not moe, sparse_moe_block or hierarchical_moe"));
  }
  config.dim = absl::GetFlag(FLAGS_dim);
  config.num_experts = absl::GetFlag(FLAGS_num_experts);
  config.num_experts_inner = inner;
  config.hidden_mult = absl::GetFlag(FLAGS_hidden_mult);
  MOE_ASSIGN_OR_RETURN(std::optional<uint64_t> seed, cli::SeedFromFlags());
  MOE_RETURN_IF_ERROR(common::WriteDemoCheckpoint(
      output, config, absl::GetFlag(FLAGS_layers), seed.value_or(0)));
  MOE_LOG(INFO) << "wrote " << output << ": " << absl::GetFlag(FLAGS_layers)
                << " layer(s) of " << config.ToJson();
  return absl::OkStatus();
}

constexpr char kUsage[] =
    "the in-process engine of moe-serve (no servers).\n\n"
    "  moe-run forward --checkpoint=F --input=X.safetensors "
    "--output=OUT.safetensors [--layer=NAME] [--mode=eval|train] [--trace]\n"
    "      run one layer in this process; the files of moe-client forward\n"
    "  moe-run forward --checkpoint=F --random_input=4x1024\n"
    "      the same on a seeded random input, printing the routing summary\n"
    "  moe-run demo-checkpoint --output=F [--layers=1] [--seed=0] "
    "[--dim=512] [--num_experts=16] [--kind=moe|sparse_moe_block|"
    "hierarchical_moe] [--num_experts_inner=N]\n"
    "      write a seeded random model (the st-moe-pytorch README "
    "configuration by default)";

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  const std::vector<std::string> positional =
      moe::cli::ParseCommandLine(argc, argv, "moe-run", moe::kUsage);
  if (positional.size() != 2) {
    std::fprintf(
        stderr, "usage: moe-run forward|demo-checkpoint [flags]; see --help\n");
    return 2;
  }
  const std::string& command = positional[1];
  if (command == "forward") return moe::cli::ExitCode(moe::RunForward());
  if (command == "demo-checkpoint") {
    return moe::cli::ExitCode(moe::RunDemoCheckpoint());
  }
  std::fprintf(stderr,
               "moe-run: unknown command \"%s\" (forward, demo-checkpoint); "
               "see --help\n",
               command.c_str());
  return 2;
}
