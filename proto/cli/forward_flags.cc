#include "proto/cli/forward_flags.h"

#include <algorithm>
#include <cstdio>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/logging.h"
#include "common/random_input.h"
#include "common/status_macros.h"
#include "proto/cli/forward_io.h"
#include "proto/tensor_codec.h"

ABSL_FLAG(std::string, input, "",
          "forward: safetensors file holding x; bench: requests cycle "
          "through the rows of its x [K, N, d], [1, N, d] each.");
ABSL_FLAG(std::string, input_tensor, "x",
          "forward: name of the input tensor [B, n, d] in --input (\"x\" "
          "falls back to \"input.x\").");
ABSL_FLAG(std::string, draws_tensor, "",
          "forward: name of a tensor of second-choice uniforms [B, n] or "
          "[2, B, n] (row 1 used) in --input, for exact replay of the random "
          "policy.");
ABSL_FLAG(std::string, random_input, "",
          "forward: instead of --input, a seeded standard-normal input of "
          "shape BxN (for example 4x1024).");
ABSL_FLAG(uint64_t, input_seed, 0, "forward: seed of --random_input.");
ABSL_FLAG(std::string, layer, "",
          "forward: the MoE layer to run (may be empty for a one-layer "
          "model; `moe-client info` lists them).");
ABSL_FLAG(std::string, mode, "eval",
          "eval or train (which thresholds and capacity factors apply).");
ABSL_FLAG(std::string, policy, "random",
          "Second-expert policy: random (the reference; the layer's "
          "threshold), all, none, threshold.");
ABSL_FLAG(std::string, threshold, "",
          "Override of the layer's threshold for the mode.");
ABSL_FLAG(std::string, capacity_factor, "",
          "Override of the layer's capacity factor for the mode.");
ABSL_FLAG(std::string, seed, "",
          "Seed of the random policy's draws (default: a fresh one per "
          "forward).");
ABSL_FLAG(bool, trace, false,
          "forward: also write the routing tensors (trace.*) to --output.");
ABSL_FLAG(std::string, output, "", "forward: output safetensors file.");
ABSL_FLAG(bool, summary, true, "forward: print a routing summary.");

namespace moe::cli {
namespace {

const char* ModeName(moe::v1::Mode m) {
  return m == moe::v1::TRAIN ? "train" : "eval";
}

const char* PolicyName(moe::v1::SecondExpertPolicy p) {
  switch (p) {
    case moe::v1::ALL:
      return "all";
    case moe::v1::NONE:
      return "none";
    case moe::v1::THRESHOLD:
      return "threshold";
    default:
      return "random";
  }
}

std::string Bar(int64_t value, int64_t max, int width) {
  const int n = max > 0 ? static_cast<int>((value * width + max / 2) / max) : 0;
  return std::string(n, '#') + std::string(width - n, ' ');
}

void PrintLevel(const char* name, const moe::v1::LevelStats& k) {
  std::printf(
      "  %s: capacity %lld per expert per group | kept %lld (first %lld, "
      "second %lld) | dropped first %lld, second %lld | second skipped by "
      "policy %lld | tokens that lost every choice %lld\n",
      name, static_cast<long long>(k.expert_capacity()),
      static_cast<long long>(k.kept_first() + k.kept_second()),
      static_cast<long long>(k.kept_first()),
      static_cast<long long>(k.kept_second()),
      static_cast<long long>(k.dropped_first()),
      static_cast<long long>(k.dropped_second()),
      static_cast<long long>(k.second_skipped()),
      static_cast<long long>(k.dropped_tokens()));
}

void PrintSummary(const std::string& where, const std::string& request_id,
                  const moe::v1::ForwardRequest& request,
                  const moe::v1::ForwardResponse& r, absl::Duration latency) {
  const moe::v1::RoutingStats& s = r.stats();
  std::vector<int64_t> shape(request.x().shape().begin(),
                             request.x().shape().end());
  std::printf(
      "forward (%s): layer %s, x %s, mode %s, policy %s%s\n", where.c_str(),
      r.layer().empty() ? "(the only one)" : r.layer().c_str(),
      common::ShapeToString(shape).c_str(), ModeName(request.options().mode()),
      PolicyName(request.options().policy()),
      request_id.empty() ? "" : (", request " + request_id).c_str());
  std::printf("  tokens %lld\n", static_cast<long long>(s.routing().tokens()));
  PrintLevel(s.has_inner() ? "outer" : "routing", s.routing());
  if (s.has_inner()) PrintLevel("inner", s.inner());
  if (r.degraded()) {
    std::printf(
        "  DEGRADED: experts [%s] unavailable, %lld assignments "
        "dropped\n",
        absl::StrJoin(r.failed_experts(), ",").c_str(),
        static_cast<long long>(s.dropped_expert_unavailable()));
  }
  int64_t max_load = 0;
  for (int64_t k : s.kept_per_expert()) max_load = std::max(max_load, k);
  std::printf("  load per expert (kept assignments):\n");
  for (int e = 0; e < s.kept_per_expert_size(); ++e) {
    std::printf("    expert %3d |%s| %lld\n", e,
                Bar(s.kept_per_expert(e), max_load, 40).c_str(),
                static_cast<long long>(s.kept_per_expert(e)));
  }
  const moe::v1::Losses& l = r.losses();
  std::printf(
      "  losses: balance %.6g (weighted %.6g), router z %.6g (weighted "
      "%.6g), total aux %.6g\n",
      l.balance_loss(), l.weighted_balance_loss(), l.router_z_loss(),
      l.weighted_router_z_loss(), l.total_aux_loss());
  std::printf("  latency: %.3f ms\n", absl::ToDoubleMilliseconds(latency));
}

}  // namespace

absl::StatusOr<std::pair<int64_t, int64_t>> ParseBxN(absl::string_view text,
                                                     absl::string_view flag) {
  std::vector<std::string> parts = absl::StrSplit(text, 'x');
  int64_t b = 0, n = 0;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &b) ||
      !absl::SimpleAtoi(parts[1], &n) || b < 1 || n < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        flag, ": expected BxN, for example 4x1024, not \"", text, "\""));
  }
  return std::make_pair(b, n);
}

absl::StatusOr<std::optional<uint64_t>> SeedFromFlags() {
  const std::string seed = absl::GetFlag(FLAGS_seed);
  if (seed.empty()) return std::optional<uint64_t>();
  uint64_t v;
  if (!absl::SimpleAtoi(seed, &v)) {
    return absl::InvalidArgumentError("--seed: not an unsigned integer");
  }
  return std::optional<uint64_t>(v);
}

std::string LayerFromFlags() { return absl::GetFlag(FLAGS_layer); }

uint64_t InputSeedFromFlags() { return absl::GetFlag(FLAGS_input_seed); }

bool WantsRandomInput() { return !absl::GetFlag(FLAGS_random_input).empty(); }

absl::StatusOr<moe::v1::RoutingOptions> RoutingOptionsFromFlags() {
  moe::v1::RoutingOptions o;
  const std::string mode = absl::GetFlag(FLAGS_mode);
  if (mode == "eval") {
    o.set_mode(moe::v1::EVAL);
  } else if (mode == "train") {
    o.set_mode(moe::v1::TRAIN);
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--mode: \"", mode, "\" is not eval or train"));
  }
  const std::string policy = absl::GetFlag(FLAGS_policy);
  if (policy == "random") {
    o.set_policy(moe::v1::RANDOM);
  } else if (policy == "all") {
    o.set_policy(moe::v1::ALL);
  } else if (policy == "none") {
    o.set_policy(moe::v1::NONE);
  } else if (policy == "threshold") {
    o.set_policy(moe::v1::THRESHOLD);
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "--policy: \"", policy, "\" is not random, all, none or threshold"));
  }
  if (const std::string t = absl::GetFlag(FLAGS_threshold); !t.empty()) {
    float v;
    if (!absl::SimpleAtof(t, &v)) {
      return absl::InvalidArgumentError("--threshold: not a number");
    }
    o.set_threshold(v);
  }
  if (const std::string cf = absl::GetFlag(FLAGS_capacity_factor);
      !cf.empty()) {
    double v;
    if (!absl::SimpleAtod(cf, &v)) {
      return absl::InvalidArgumentError("--capacity_factor: not a number");
    }
    o.set_capacity_factor(v);
  }
  MOE_ASSIGN_OR_RETURN(std::optional<uint64_t> seed, SeedFromFlags());
  if (seed.has_value()) o.set_seed(*seed);
  o.set_return_trace(absl::GetFlag(FLAGS_trace));
  return o;
}

absl::StatusOr<moe::v1::ForwardRequest> ForwardRequestFromFlags(int64_t dim) {
  const std::string input = absl::GetFlag(FLAGS_input);
  const std::string random_input = absl::GetFlag(FLAGS_random_input);
  if (input.empty() == random_input.empty()) {
    return absl::InvalidArgumentError(
        "give exactly one of --input and --random_input");
  }
  if (absl::GetFlag(FLAGS_output).empty() && random_input.empty()) {
    return absl::InvalidArgumentError("forward needs --output");
  }
  moe::v1::ForwardRequest request;
  MOE_ASSIGN_OR_RETURN(*request.mutable_options(), RoutingOptionsFromFlags());
  request.set_layer(absl::GetFlag(FLAGS_layer));
  if (!random_input.empty()) {
    MOE_ASSIGN_OR_RETURN(auto bn, ParseBxN(random_input, "--random_input"));
    MOE_RETURN_IF_ERROR(proto::EncodeTensor(
        common::RandomNormalTensor({bn.first, bn.second, dim},
                                   absl::GetFlag(FLAGS_input_seed)),
        request.mutable_x()));
    return request;
  }
  MOE_ASSIGN_OR_RETURN(
      common::HostTensor x,
      ReadInputTensor(input, absl::GetFlag(FLAGS_input_tensor)));
  MOE_RETURN_IF_ERROR(proto::EncodeTensor(x, request.mutable_x()));
  if (const std::string draws = absl::GetFlag(FLAGS_draws_tensor);
      !draws.empty()) {
    MOE_ASSIGN_OR_RETURN(common::HostTensor u, ReadInputTensor(input, draws));
    MOE_RETURN_IF_ERROR(proto::EncodeTensor(
        u, request.mutable_options()->mutable_second_choice_uniforms()));
  }
  return request;
}

absl::Status FinishForward(const std::string& where,
                           const moe::v1::ForwardRequest& request,
                           const moe::v1::ForwardResponse& response,
                           absl::Duration latency,
                           const std::string& request_id) {
  if (absl::GetFlag(FLAGS_summary)) {
    PrintSummary(where, request_id, request, response, latency);
  }
  const std::string output = absl::GetFlag(FLAGS_output);
  if (output.empty()) return absl::OkStatus();
  std::vector<std::pair<std::string, std::string>> metadata = {
      {"source", where},
      {"layer", response.layer()},
      {"mode", ModeName(request.options().mode())},
      {"policy", PolicyName(request.options().policy())},
      {"degraded", response.degraded() ? "true" : "false"}};
  if (!request_id.empty()) metadata.emplace_back("request_id", request_id);
  MOE_RETURN_IF_ERROR(WriteForwardOutputs(output, response, metadata));
  MOE_LOG(INFO) << "wrote " << output;
  return absl::OkStatus();
}

}  // namespace moe::cli
