// The moe-client subcommands, one file each (client/cli/<name>.cc).
#pragma once

#include "absl/status/status.h"

namespace moe::cli {

absl::Status RunForward();  // forward.cc: one forward through a router
absl::Status RunInfo();     // info.cc: the model, layers and workers
absl::Status RunHealth();   // health.cc: grpc.health.v1 of the router
absl::Status RunBench();    // bench.cc: closed-loop load with progress
absl::Status RunStats();    // stats.cc: live view of the router's metrics

}  // namespace moe::cli
