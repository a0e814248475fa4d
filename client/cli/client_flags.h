// The flags every moe-client subcommand that talks to a router shares:
// --target, --timeout_seconds, --allow_degraded, --on_expert_failure.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "client/router_client.h"

namespace moe::cli {

// --target, or InvalidArgument naming `command` when it is missing.
absl::StatusOr<std::string> TargetFromFlags(const char* command);

// The client options of the flags.
absl::StatusOr<client::ClientOptions> ClientOptionsFromFlags();

// --allow_degraded and --on_expert_failure as forward options.
absl::StatusOr<client::ForwardOptions> ForwardOptionsFromFlags();

}  // namespace moe::cli
