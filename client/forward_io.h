// The moe-client file contract (DESIGN.md section 4): reading the input and
// draws tensors of a forward from a safetensors file, and writing its outputs
// (`output.y`, the losses, and optionally the routing trace).
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "common/host_tensor.h"

namespace moe::client {

// Reads tensor `name` from `path`. When `name` is "x" and the file has no
// tensor "x" but has "input.x" (the golden files' name), that one is read.
absl::StatusOr<at::Tensor> ReadInputTensor(const std::string& path,
                                           const std::string& name);

struct ForwardOutputs {
  at::Tensor y;
  double balance_loss = 0;
  double router_z_loss = 0;
  double weighted_balance_loss = 0;
  double weighted_router_z_loss = 0;
  double total_aux_loss = 0;
  std::vector<std::pair<std::string, at::Tensor>> extra;  // e.g. the trace
  std::vector<std::pair<std::string, std::string>> metadata;
};

// Writes `output.y`, `output.balance_loss`, `output.router_z_loss`,
// `output.weighted_balance_loss`, `output.weighted_router_z_loss`,
// `output.total_aux_loss` (float32 scalars) and the extra tensors.
absl::Status WriteForwardOutputs(const std::string& path,
                                 const ForwardOutputs& outputs);

}  // namespace moe::client
