// moe-client info: the model a router serves (name, fingerprint, layers and
// their defaults), its limits and which worker hosts which experts, with
// the reason of every worker that is not up.
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/cli/client_flags.h"
#include "client/cli/commands.h"
#include "common/id_ranges.h"
#include "common/status_macros.h"

namespace moe::cli {

absl::Status RunInfo() {
  MOE_ASSIGN_OR_RETURN(std::string target, TargetFromFlags("info"));
  MOE_ASSIGN_OR_RETURN(client::ClientOptions options, ClientOptionsFromFlags());
  absl::StatusOr<moe::v1::ModelInfo> got =
      client::RouterClient::Create(target, options)->GetModelInfo();
  if (absl::IsUnimplemented(got.status())) {
    return absl::FailedPreconditionError(
        absl::StrCat(target,
                     " does not serve moe.v1.Router (an expert worker?); point "
                     "--target at a moe-router"));
  }
  if (!got.ok()) return got.status();
  const moe::v1::ModelInfo& info = *got;
  std::printf("model \"%s\" %s, dim %lld, %d layer%s, %s\n",
              info.model_name().c_str(), info.fingerprint().c_str(),
              static_cast<long long>(info.dim()), info.layers_size(),
              info.layers_size() == 1 ? "" : "s",
              info.ready() ? "ready" : "NOT READY");
  for (const moe::v1::LayerInfo& l : info.layers()) {
    std::printf(
        "layer %s: %s, experts %lld%s, expert hidden %lld; threshold train "
        "%g / eval %g, capacity factor train %g / eval %g, loss coefs "
        "balance %g, z %g%s\n",
        l.name().empty() ? "(unnamed)" : ("\"" + l.name() + "\"").c_str(),
        l.kind().c_str(), static_cast<long long>(l.num_experts()),
        l.num_experts_inner() > 0
            ? absl::StrCat(" x ", l.num_experts_inner()).c_str()
            : "",
        static_cast<long long>(l.expert_hidden()), l.threshold_train(),
        l.threshold_eval(), l.capacity_factor_train(), l.capacity_factor_eval(),
        l.balance_loss_coef(), l.router_z_loss_coef(),
        l.uncovered_experts_size() > 0
            ? absl::StrCat("; NO WORKER for experts [",
                           common::FoldIdRanges(std::vector<int64_t>(
                               l.uncovered_experts().begin(),
                               l.uncovered_experts().end())),
                           "]")
                  .c_str()
            : "");
  }
  std::printf(
      "on_expert_failure %s, max tokens per request %lld, in flight "
      "%lld\n",
      info.on_expert_failure().c_str(),
      static_cast<long long>(info.max_tokens_per_request()),
      static_cast<long long>(info.inflight_requests()));
  if (info.workers_hidden()) {
    std::printf(
        "workers: hidden (the router shows them to callers with a token: "
        "--token_file)\n");
  }
  for (const moe::v1::WorkerInfo& w : info.workers()) {
    std::vector<std::string> hosted;
    for (const moe::v1::WorkerExperts& e : w.experts()) {
      hosted.push_back(
          absl::StrCat(e.layer().empty() ? "" : e.layer() + ":", "[",
                       common::FoldIdRanges(std::vector<int64_t>(
                           e.expert_ids().begin(), e.expert_ids().end())),
                       "]"));
    }
    const bool bf16 = w.compute_dtype() == "bfloat16";
    std::printf("worker %s: %s%s%s, experts %s%s%s%s\n", w.address().c_str(),
                w.state().c_str(), w.reason().empty() ? "" : " (",
                w.reason().empty() ? "" : (w.reason() + ")").c_str(),
                hosted.empty() ? "none" : absl::StrJoin(hosted, " ").c_str(),
                w.device().empty() ? "" : " on ", w.device().c_str(),
                bf16 ? " (bfloat16 compute)" : "");
  }
  // Copies per expert over the workers that are up: replicas made by hand
  // or by moe-balancer (docs/placement.md).
  std::map<std::string, std::map<int64_t, int>> copies;
  for (const moe::v1::WorkerInfo& w : info.workers()) {
    if (w.state() != "up") continue;
    for (const moe::v1::WorkerExperts& e : w.experts()) {
      for (int64_t id : e.expert_ids()) ++copies[e.layer()][id];
    }
  }
  for (const auto& [layer, by_expert] : copies) {
    std::map<int, std::vector<int64_t>> by_count;
    for (const auto& [id, n] : by_expert) by_count[n].push_back(id);
    if (by_count.size() == 1 && by_count.begin()->first == 1) continue;
    std::vector<std::string> parts;
    for (const auto& [n, ids] : by_count) {
      parts.push_back(absl::StrCat(n, n == 1 ? " copy [" : " copies [",
                                   common::FoldIdRanges(ids), "]"));
    }
    std::printf("replicas%s: %s\n",
                layer.empty() ? "" : absl::StrCat(" of ", layer).c_str(),
                absl::StrJoin(parts, ", ").c_str());
  }
  return absl::OkStatus();
}

}  // namespace moe::cli
