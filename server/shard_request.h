// What the worker (server/worker.h) asks of the binary's shard factory: a
// device as --device names it, the rows of one call, the GPU streams. Each
// worker binary's factory (server/compute_flags.h for moe-expert,
// server/gpu_compute_flags.h for moe-expert-gpu) turns the selected experts
// of a checkpoint into an ExpertShard.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/checkpoint.h"
#include "common/expert_set.h"
#include "experts/device.h"
#include "experts/expert_shard.h"

namespace moe::server {

// A worker's --device: auto, or one device ("cpu", "host", "cuda",
// "cuda:N"; "cuda" is cuda:0).
struct DeviceChoice {
  bool automatic = true;
  experts::Device device;
};

// InvalidArgument naming the flag for anything else.
absl::StatusOr<DeviceChoice> ParseDevice(absl::string_view flag);

// What the worker asks of its shard factory.
struct ShardRequest {
  DeviceChoice device;
  std::string device_flag;  // as given, for messages ("--device=cuda:1: ...")
  int64_t max_rows = 0;     // --max_tokens_per_call: rows of one call
  int gpu_streams = 1;      // --gpu_streams
  int gpu_small_rows = 8;   // --gpu_small_rows (GpuOptions::small_rows)
};

// The shard of `experts` (at least one) of `checkpoint`. Its errors stop
// the worker with their message; they name the flag at fault.
using ShardFactory =
    std::function<absl::StatusOr<std::unique_ptr<experts::ExpertShard>>(
        const common::Checkpoint& checkpoint, const common::ExpertSet& experts,
        const ShardRequest& request)>;

}  // namespace moe::server
