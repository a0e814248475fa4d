#include "common/layer_config.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/json_errors.h"
#include "common/status_macros.h"

namespace moe::common {
namespace {

using Json = nlohmann::json;

constexpr int64_t kMaxDim = 1 << 16;
constexpr int64_t kMaxExperts = 4096;

absl::Status KeyError(absl::string_view key, absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("layer config: \"", key, "\" ", what));
}

absl::StatusOr<int64_t> GetInt(const Json& root, const char* key) {
  auto it = root.find(key);
  if (it == root.end()) return KeyError(key, "is missing");
  if (!it->is_number_integer()) return KeyError(key, "must be an integer");
  return it->get<int64_t>();
}

// Reads an optional number into *out; leaves it unchanged when absent.
template <typename T>
absl::Status GetNumber(const Json& root, const char* key, T* out) {
  auto it = root.find(key);
  if (it == root.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number()) return KeyError(key, "must be a number");
  const double value = it->get<double>();
  if (!std::isfinite(value)) return KeyError(key, "must be finite");
  *out = static_cast<T>(value);
  return absl::OkStatus();
}

}  // namespace

const char* LayerKindName(LayerKind kind) {
  switch (kind) {
    case LayerKind::kMoe:
      return "moe";
    case LayerKind::kSparseMoeBlock:
      return "sparse_moe_block";
    case LayerKind::kHierarchicalMoe:
      return "hierarchical_moe";
  }
  return "unknown";
}

int64_t LayerConfig::expert_hidden() const {
  return static_cast<int64_t>(static_cast<double>(dim) * hidden_mult * 2.0 /
                              3.0);
}

int64_t LayerConfig::expert_parameters() const {
  const int64_t h = expert_hidden();
  return 3 * h * dim + 3 * h + dim;
}

int64_t LayerConfig::feed_forward_hidden() const {
  return static_cast<int64_t>(static_cast<double>(dim) * 4.0 * 2.0 / 3.0);
}

std::string LayerConfig::ToJson() const {
  Json j;
  j["kind"] = LayerKindName(kind);
  j["dim"] = dim;
  if (hierarchical()) {
    j["num_experts"] = {num_experts, num_experts_inner};
  } else {
    j["num_experts"] = num_experts;
  }
  j["hidden_mult"] = hidden_mult;
  j["threshold_train"] = threshold_train;
  j["threshold_eval"] = threshold_eval;
  j["capacity_factor_train"] = capacity_factor_train;
  j["capacity_factor_eval"] = capacity_factor_eval;
  j["balance_loss_coef"] = balance_loss_coef;
  j["router_z_loss_coef"] = router_z_loss_coef;
  if (!mode.empty()) j["mode"] = mode;
  return j.dump();
}

absl::Status ValidateLayerConfig(const LayerConfig& c) {
  if (c.dim < 1 || c.dim > kMaxDim) {
    return KeyError("dim",
                    absl::StrCat("must be in [1, ", kMaxDim, "], got ", c.dim));
  }
  if (c.num_experts < 2 || c.num_experts > kMaxExperts) {
    return KeyError("num_experts",
                    absl::StrCat("must be in [2, ", kMaxExperts,
                                 "] (top-2 routing needs at least 2 experts), "
                                 "got ",
                                 c.num_experts));
  }
  if (c.kind == LayerKind::kHierarchicalMoe && !c.hierarchical()) {
    return KeyError("num_experts",
                    "must be a pair [outer, inner] for a hierarchical_moe");
  }
  if (c.kind == LayerKind::kMoe && c.hierarchical()) {
    return KeyError("num_experts",
                    "must be an integer for kind \"moe\" (a pair means "
                    "\"hierarchical_moe\")");
  }
  if (c.hierarchical() &&
      (c.num_experts_inner < 2 || c.num_experts_inner > kMaxExperts)) {
    return KeyError("num_experts",
                    absl::StrCat("inner count must be in [2, ", kMaxExperts,
                                 "], got ", c.num_experts_inner));
  }
  if (c.total_experts() > kMaxExperts) {
    return KeyError(
        "num_experts",
        absl::StrCat("outer x inner must be at most ", kMaxExperts));
  }
  if (!(c.hidden_mult > 0) || c.expert_hidden() < 1) {
    return KeyError("hidden_mult",
                    "must be positive and give a hidden size of at least 1");
  }
  MOE_RETURN_IF_ERROR(ValidateThreshold("threshold_train", c.threshold_train));
  MOE_RETURN_IF_ERROR(ValidateThreshold("threshold_eval", c.threshold_eval));
  MOE_RETURN_IF_ERROR(
      ValidateCapacityFactor("capacity_factor_train", c.capacity_factor_train));
  MOE_RETURN_IF_ERROR(
      ValidateCapacityFactor("capacity_factor_eval", c.capacity_factor_eval));
  if (!(c.balance_loss_coef >= 0)) {
    return KeyError("balance_loss_coef", "must be >= 0");
  }
  if (!(c.router_z_loss_coef >= 0)) {
    return KeyError("router_z_loss_coef", "must be >= 0");
  }
  if (!c.mode.empty() && c.mode != "eval" && c.mode != "train") {
    return KeyError("mode", "must be \"eval\" or \"train\"");
  }
  return absl::OkStatus();
}

absl::Status ValidateThreshold(absl::string_view what, double threshold) {
  if (!std::isfinite(threshold) || threshold < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": ", threshold, " is not a finite number >= 0"));
  }
  return absl::OkStatus();
}

absl::Status ValidateCapacityFactor(absl::string_view what,
                                    double capacity_factor) {
  if (!std::isfinite(capacity_factor) || capacity_factor <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": ", capacity_factor, " is not a finite number > 0"));
  }
  return absl::OkStatus();
}

absl::StatusOr<LayerConfig> ParseLayerConfig(absl::string_view json) {
  Json root = Json::parse(json.begin(), json.end(), nullptr,
                          /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer config: not valid JSON: ", WhyNotJson(json)));
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError("layer config: not a JSON object");
  }
  LayerConfig c;
  auto kind_it = root.find("kind");
  std::string kind = "moe";
  if (kind_it != root.end()) {
    if (!kind_it->is_string()) return KeyError("kind", "must be a string");
    kind = kind_it->get<std::string>();
  }
  if (kind == "moe") {
    c.kind = LayerKind::kMoe;
  } else if (kind == "sparse_moe_block") {
    c.kind = LayerKind::kSparseMoeBlock;
  } else if (kind == "hierarchical_moe") {
    c.kind = LayerKind::kHierarchicalMoe;
  } else {
    return KeyError("kind", absl::StrCat("is \"", kind,
                                         "\"; expected moe, sparse_moe_block "
                                         "or hierarchical_moe"));
  }

  MOE_ASSIGN_OR_RETURN(c.dim, GetInt(root, "dim"));
  auto experts_it = root.find("num_experts");
  if (experts_it == root.end()) return KeyError("num_experts", "is missing");
  if (experts_it->is_number_integer()) {
    c.num_experts = experts_it->get<int64_t>();
  } else if (experts_it->is_array() && experts_it->size() == 2 &&
             (*experts_it)[0].is_number_integer() &&
             (*experts_it)[1].is_number_integer()) {
    c.num_experts = (*experts_it)[0].get<int64_t>();
    c.num_experts_inner = (*experts_it)[1].get<int64_t>();
  } else {
    return KeyError("num_experts",
                    "must be an integer or a pair of integers [outer, inner]");
  }

  MOE_RETURN_IF_ERROR(GetNumber(root, "hidden_mult", &c.hidden_mult));
  MOE_RETURN_IF_ERROR(GetNumber(root, "threshold_train", &c.threshold_train));
  MOE_RETURN_IF_ERROR(GetNumber(root, "threshold_eval", &c.threshold_eval));
  MOE_RETURN_IF_ERROR(
      GetNumber(root, "capacity_factor_train", &c.capacity_factor_train));
  MOE_RETURN_IF_ERROR(
      GetNumber(root, "capacity_factor_eval", &c.capacity_factor_eval));
  // f1a7959 calls the balance coefficient `loss_coef`.
  MOE_RETURN_IF_ERROR(GetNumber(root, "loss_coef", &c.balance_loss_coef));
  MOE_RETURN_IF_ERROR(
      GetNumber(root, "balance_loss_coef", &c.balance_loss_coef));
  MOE_RETURN_IF_ERROR(
      GetNumber(root, "router_z_loss_coef", &c.router_z_loss_coef));

  auto mode_it = root.find("mode");
  if (mode_it != root.end() && !mode_it->is_null()) {
    if (!mode_it->is_string()) return KeyError("mode", "must be a string");
    c.mode = mode_it->get<std::string>();
  }
  auto top_n_it = root.find("top_n");
  if (top_n_it != root.end() &&
      !(top_n_it->is_number_integer() && top_n_it->get<int64_t>() == 2)) {
    return KeyError("top_n", "must be 2: moe-serve implements top-2 routing");
  }
  MOE_RETURN_IF_ERROR(ValidateLayerConfig(c));
  return c;
}

}  // namespace moe::common
