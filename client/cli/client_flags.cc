#include "client/cli/client_flags.h"

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"

ABSL_FLAG(std::string, target, "",
          "The router's HOST:PORT (forward, bench, stats, info, health).");
ABSL_FLAG(double, timeout_seconds, 60, "Deadline of a call to the router.");
ABSL_FLAG(bool, allow_degraded, false,
          "Accept an answer that lacks some experts' outputs (their workers "
          "failed) instead of failing.");
ABSL_FLAG(std::string, on_expert_failure, "",
          "Per-request failure policy: drop or fail (default: the "
          "router's).");

namespace moe::cli {

absl::StatusOr<std::string> TargetFromFlags(const char* command) {
  const std::string target = absl::GetFlag(FLAGS_target);
  if (target.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(command, " needs --target=HOST:PORT (a moe-router)"));
  }
  return target;
}

absl::StatusOr<client::ClientOptions> ClientOptionsFromFlags() {
  client::ClientOptions options;
  const double timeout = absl::GetFlag(FLAGS_timeout_seconds);
  if (!(timeout > 0)) {
    return absl::InvalidArgumentError("--timeout_seconds must be > 0");
  }
  options.timeout = absl::Seconds(timeout);
  return options;
}

absl::StatusOr<client::ForwardOptions> ForwardOptionsFromFlags() {
  client::ForwardOptions options;
  options.allow_degraded = absl::GetFlag(FLAGS_allow_degraded);
  const std::string policy = absl::GetFlag(FLAGS_on_expert_failure);
  if (policy == "drop") {
    options.on_expert_failure = moe::v1::ON_FAILURE_DROP;
  } else if (policy == "fail") {
    options.on_expert_failure = moe::v1::ON_FAILURE_FAIL;
  } else if (!policy.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--on_expert_failure: \"", policy, "\" is not drop or fail"));
  }
  return options;
}

}  // namespace moe::cli
