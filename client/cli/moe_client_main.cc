// moe-client: the command-line client of a moe-router. Needs no LibTorch
// (the in-process runner is moe-run).
//
//   moe-client forward --target=HOST:PORT --input=X.safetensors
//       [--layer=NAME] [--mode=eval|train] [--trace] --output=OUT.safetensors
//   moe-client info | health | bench | stats --target=HOST:PORT
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/cli/commands.h"
#include "common/cli/command_line.h"

namespace {

constexpr char kUsage[] =
    "the moe-serve command-line client.\n\n"
    "  moe-client forward --target=HOST:PORT --input=X.safetensors "
    "--output=OUT.safetensors [--layer=NAME] [--mode=eval|train] [--trace] "
    "...\n"
    "      one forward through a moe-router; writes output.y and the losses\n"
    "  moe-client forward --target=HOST:PORT --random_input=4x1024\n"
    "      the same on a seeded random input, printing the routing summary\n"
    "  moe-client info --target=HOST:PORT\n"
    "      the model, its layers and defaults, which worker hosts which "
    "experts\n"
    "  moe-client health --target=HOST:PORT\n"
    "      grpc.health.v1 status of the router; exit code 0 when SERVING\n"
    "  moe-client bench --target=HOST:PORT [--shape=1x32] [--concurrency=1] "
    "[--duration=10] [--all_layers] [--rpc=infer|health]\n"
    "      closed-loop load with progress; throughput and latency percentiles\n"
    "      (--rpc=infer: the Open Inference Protocol's ModelInfer; "
    "--rpc=health: gRPC's\n"
    "      bare unary round trip on the same channel)\n"
    "  moe-client stats --target=HOST:PORT [--interval=1] [--iterations=0]\n"
    "      live view of the router's metrics: load per expert, drops by "
    "reason, per-layer balance, latency\n\n"
    "The in-process engine (forward --checkpoint=F, demo-checkpoint) is "
    "moe-run.";

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> positional =
      moe::cli::ParseCommandLine(argc, argv, "moe-client", kUsage);
  if (positional.size() != 2) {
    std::fprintf(stderr,
                 "usage: moe-client forward|info|health|bench|stats [flags]; "
                 "see --help\n");
    return 2;
  }
  const std::string& command = positional[1];
  absl::Status status;
  if (command == "forward") {
    status = moe::cli::RunForward();
  } else if (command == "info") {
    status = moe::cli::RunInfo();
  } else if (command == "health") {
    status = moe::cli::RunHealth();
  } else if (command == "bench") {
    status = moe::cli::RunBench();
  } else if (command == "stats") {
    status = moe::cli::RunStats();
  } else if (command == "demo-checkpoint") {
    status = absl::InvalidArgumentError(
        "demo-checkpoint moved to moe-run: moe-run demo-checkpoint "
        "--output=F ...");
  } else if (command == "help") {
    std::fputs(moe::cli::HelpText("moe-client", kUsage).c_str(), stdout);
    return 0;
  } else {
    std::fprintf(stderr,
                 "moe-client: unknown command \"%s\" (forward, info, health, "
                 "bench, stats); see --help\n",
                 command.c_str());
    return 2;
  }
  return moe::cli::ExitCode(status);
}
