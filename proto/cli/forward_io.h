// The forward file contract of moe-client and moe-run (README, "Files"): the
// input and draws tensors of a forward read from a safetensors file, and its
// outputs written to one: `output.y`, `output.balance_loss`,
// `output.router_z_loss`, `output.weighted_balance_loss`,
// `output.weighted_router_z_loss`, `output.total_aux_loss` and, with a
// trace, `trace.*` in the golden files' layouts. No LibTorch.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "common/host_tensor.h"
#include "moe/v1/router.pb.h"

namespace moe::cli {

// Reads tensor `name` from `path`. When `name` is "x" and the file has no
// tensor "x" but has "input.x" (the golden files' name), that one is read.
absl::StatusOr<common::HostTensor> ReadInputTensor(const std::string& path,
                                                   const std::string& name);

// Writes the outputs of `response` (y in its dtype, the losses as float32
// scalars, the trace as it came) with `metadata`.
absl::Status WriteForwardOutputs(
    const std::string& path, const moe::v1::ForwardResponse& response,
    const std::vector<std::pair<std::string, std::string>>& metadata);

}  // namespace moe::cli
