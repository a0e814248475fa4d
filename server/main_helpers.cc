#include "server/main_helpers.h"

#include <fstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace moe::server {

absl::StatusOr<int64_t> OrdinalFromHostname(absl::string_view hostname) {
  // A pod's hostname is its name; the ordinal follows the last dash.
  const size_t dot = hostname.find('.');
  if (dot != absl::string_view::npos) hostname = hostname.substr(0, dot);
  const size_t dash = hostname.rfind('-');
  int64_t ordinal = -1;
  if (dash == absl::string_view::npos ||
      !absl::SimpleAtoi(hostname.substr(dash + 1), &ordinal) || ordinal < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("hostname \"", hostname,
                     "\" does not end in -<ordinal> (as StatefulSet pods do)"));
  }
  return ordinal;
}

absl::StatusOr<std::vector<std::string>> ExpandTemplate(
    absl::string_view pattern, int64_t n) {
  if (pattern.find("{i}") == absl::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("template \"", pattern, "\" has no {i} placeholder"));
  }
  if (n < 1) return absl::InvalidArgumentError("the count must be >= 1");
  std::vector<std::string> out;
  for (int64_t i = 0; i < n; ++i) {
    out.push_back(absl::StrReplaceAll(pattern, {{"{i}", absl::StrCat(i)}}));
  }
  return out;
}

std::vector<std::string> SplitList(absl::string_view text) {
  std::vector<std::string> out;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    part = absl::StripAsciiWhitespace(part);
    if (!part.empty()) out.emplace_back(part);
  }
  return out;
}

absl::StatusOr<std::vector<std::string>> WorkerAddresses(
    absl::string_view list, const std::string& file, absl::string_view pattern,
    int64_t count) {
  std::vector<std::string> out = SplitList(list);
  if (!file.empty()) {
    std::ifstream in(file);
    if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", file));
    std::string line;
    while (std::getline(in, line)) {
      for (std::string& a : SplitList(line)) {
        if (a[0] != '#') out.push_back(a);
      }
    }
  }
  if (!pattern.empty()) {
    absl::StatusOr<std::vector<std::string>> expanded =
        ExpandTemplate(pattern, count);
    if (!expanded.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--worker_template/--num_workers: ", expanded.status().message()));
    }
    out.insert(out.end(), expanded->begin(), expanded->end());
  }
  if (out.empty()) {
    return absl::InvalidArgumentError(
        "no workers: give --workers=HOST:PORT,..., --workers_file or "
        "--worker_template with --num_workers");
  }
  return out;
}

absl::StatusOr<common::DType> ParseWireDType(absl::string_view name) {
  common::DType dtype;
  if (common::ParseDTypeName(std::string_view(name.data(), name.size()),
                             &dtype) &&
      (dtype == common::DType::kFloat32 || dtype == common::DType::kBFloat16 ||
       dtype == common::DType::kFloat16)) {
    return dtype;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("\"", name, "\" is not float32, bfloat16 or float16"));
}

}  // namespace moe::server
