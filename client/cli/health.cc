// moe-client health: the router's grpc.health.v1 status (moe.v1.Router);
// exit 0 when SERVING. Pointed at a worker, it says so.
#include <cstdio>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "client/cli/client_flags.h"
#include "client/cli/commands.h"
#include "common/status_macros.h"

ABSL_FLAG(std::string, service, "moe.v1.Router",
          "health: the service to check (\"\" for the whole process).");

namespace moe::cli {

absl::Status RunHealth() {
  MOE_ASSIGN_OR_RETURN(std::string target, TargetFromFlags("health"));
  MOE_ASSIGN_OR_RETURN(client::ClientOptions options, ClientOptionsFromFlags());
  const std::string service = absl::GetFlag(FLAGS_service);
  absl::StatusOr<grpc::health::v1::HealthCheckResponse::ServingStatus> status =
      client::CheckHealth(target, options.timeout, service, options);
  if (absl::IsNotFound(status.status()) && service == "moe.v1.Router") {
    // Not a router; a worker answers for its own service.
    if (client::CheckHealth(target, options.timeout, "moe.v1.ExpertWorker",
                            options)
            .ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          target,
          " is an expert worker (moe.v1.ExpertWorker), not a router; "
          "use --service=moe.v1.ExpertWorker to check it"));
    }
  }
  if (!status.ok()) return status.status();
  std::printf("%s\n",
              grpc::health::v1::HealthCheckResponse::ServingStatus_Name(*status)
                  .c_str());
  if (*status != grpc::health::v1::HealthCheckResponse::SERVING) {
    return absl::UnavailableError(absl::StrCat(
        target, " is not serving (",
        grpc::health::v1::HealthCheckResponse::ServingStatus_Name(*status),
        ")"));
  }
  return absl::OkStatus();
}

}  // namespace moe::cli
