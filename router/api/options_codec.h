// moe.v1.RoutingOptions <-> router::RoutingOptions, both directions, the one
// place the wire vocabulary of routing options meets the engine's.
// Translation only: the bounds are checked by router::ValidateRoutingOptions,
// in-process and remote alike.
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "moe/v1/router.pb.h"
#include "router/routing_options.h"

namespace moe::router {

// InvalidArgument naming the field for an unknown mode or policy value or a
// malformed uniforms tensor; ResourceExhausted for uniforms of more than
// `max_elements` elements.
absl::StatusOr<RoutingOptions> RoutingOptionsFromProto(
    const moe::v1::RoutingOptions& options, int64_t max_elements);

// The inverse (return_trace is not a routing option and is left false).
moe::v1::RoutingOptions RoutingOptionsToProto(const RoutingOptions& options);

}  // namespace moe::router
