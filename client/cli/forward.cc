// moe-client forward: one forward through a running moe-router, with the
// files and flags of proto/cli/forward_flags.h.
#include "absl/time/clock.h"
#include "client/cli/client_flags.h"
#include "client/cli/commands.h"
#include "common/request_id.h"
#include "common/status_macros.h"
#include "proto/cli/forward_flags.h"

namespace moe::cli {

absl::Status RunForward() {
  MOE_ASSIGN_OR_RETURN(std::string target, TargetFromFlags("forward"));
  MOE_ASSIGN_OR_RETURN(client::ClientOptions options, ClientOptionsFromFlags());
  MOE_ASSIGN_OR_RETURN(client::ForwardOptions forward,
                       ForwardOptionsFromFlags());
  auto client = client::RouterClient::Create(target, options);
  int64_t dim = 0;
  if (WantsRandomInput()) {
    MOE_ASSIGN_OR_RETURN(moe::v1::ModelInfo info, client->GetModelInfo());
    dim = info.dim();
  }
  MOE_ASSIGN_OR_RETURN(moe::v1::ForwardRequest request,
                       ForwardRequestFromFlags(dim));
  request.set_on_expert_failure(forward.on_expert_failure);
  const std::string request_id =
      forward.request_id.empty() ? common::NewRequestId() : forward.request_id;
  const absl::Time start = absl::Now();
  MOE_ASSIGN_OR_RETURN(
      moe::v1::ForwardResponse response,
      client->Forward(request, request_id, forward.traceparent));
  const absl::Duration latency = absl::Now() - start;
  if (response.degraded() && !forward.allow_degraded) {
    return client::WithRequestId(client::DegradedError(response), request_id);
  }
  return FinishForward(target, request, response, latency, request_id);
}

}  // namespace moe::cli
