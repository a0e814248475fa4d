#include "router/routing_options.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace moe::router {

const char* ModeName(Mode mode) {
  return mode == Mode::kTrain ? "train" : "eval";
}

const char* PolicyName(SecondExpertPolicy policy) {
  switch (policy) {
    case SecondExpertPolicy::kRandom:
      return "random";
    case SecondExpertPolicy::kAll:
      return "all";
    case SecondExpertPolicy::kNone:
      return "none";
    case SecondExpertPolicy::kThreshold:
      return "threshold";
  }
  return "unknown";
}

absl::StatusOr<Mode> ParseMode(absl::string_view name) {
  const std::string lower = absl::AsciiStrToLower(name);
  if (lower == "eval") return Mode::kEval;
  if (lower == "train") return Mode::kTrain;
  return absl::InvalidArgumentError(
      absl::StrCat("mode: \"", name, "\" is not one of eval, train"));
}

absl::StatusOr<SecondExpertPolicy> ParsePolicy(absl::string_view name) {
  const std::string lower = absl::AsciiStrToLower(name);
  for (SecondExpertPolicy p :
       {SecondExpertPolicy::kRandom, SecondExpertPolicy::kAll,
        SecondExpertPolicy::kNone, SecondExpertPolicy::kThreshold}) {
    if (lower == PolicyName(p)) return p;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "policy: \"", name, "\" is not one of random, all, none, threshold"));
}

}  // namespace moe::router
