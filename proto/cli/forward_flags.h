// The flags of a forward and what they make, shared by `moe-client forward`
// (through a router) and `moe-run forward` (in-process), so both take the
// same flags and files:
//   --input, --input_tensor, --draws_tensor | --random_input, --input_seed
//   --layer, --mode, --policy, --threshold, --capacity_factor, --seed,
//   --trace, --output, --summary
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "moe/v1/router.pb.h"

namespace moe::cli {

// "4x1024" -> {4, 1024}. InvalidArgument naming `flag` otherwise.
absl::StatusOr<std::pair<int64_t, int64_t>> ParseBxN(absl::string_view text,
                                                     absl::string_view flag);

// --seed, when given. InvalidArgument when it is not an unsigned integer.
absl::StatusOr<std::optional<uint64_t>> SeedFromFlags();

// --layer and --input_seed.
std::string LayerFromFlags();
uint64_t InputSeedFromFlags();

// Whether --random_input was given (the caller then needs the model dim).
bool WantsRandomInput();

// The routing options of the flags (mode, policy, threshold, capacity
// factor, seed, trace).
absl::StatusOr<moe::v1::RoutingOptions> RoutingOptionsFromFlags();

// The request the flags describe; `dim` sizes --random_input.
absl::StatusOr<moe::v1::ForwardRequest> ForwardRequestFromFlags(int64_t dim);

// Prints the routing summary (unless --summary=false) and writes --output
// when given. `where` is "in-process" or the router's address; a call
// through a router names its `request_id` (in the summary's first line and
// the output's metadata).
absl::Status FinishForward(const std::string& where,
                           const moe::v1::ForwardRequest& request,
                           const moe::v1::ForwardResponse& response,
                           absl::Duration latency,
                           const std::string& request_id = "");

}  // namespace moe::cli
