#include "common/flags_util.h"

#include <set>

#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/allocator.h"
#include "common/logging.h"

namespace moe::common {

std::vector<std::string> NormalizeFlagDashes(int argc, char** argv) {
  std::vector<std::string> out;
  bool flags_done = false;
  for (int i = 0; i < argc; ++i) {
    std::string arg = argv[i];
    if (i > 0 && !flags_done && arg == "--") flags_done = true;
    if (i > 0 && !flags_done && arg.size() > 2 && arg[0] == '-' &&
        arg[1] == '-') {
      const size_t eq = arg.find('=');
      const size_t end = eq == std::string::npos ? arg.size() : eq;
      for (size_t j = 2; j < end; ++j) {
        if (arg[j] == '-') arg[j] = '_';
      }
    }
    out.push_back(std::move(arg));
  }
  return out;
}

absl::StatusOr<std::vector<int64_t>> ParseIdList(absl::string_view text,
                                                 int64_t limit) {
  std::set<int64_t> ids;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    part = absl::StripAsciiWhitespace(part);
    std::vector<absl::string_view> range = absl::StrSplit(part, '-');
    int64_t lo = 0, hi = 0;
    if (range.size() > 2 || !absl::SimpleAtoi(range[0], &lo) ||
        !absl::SimpleAtoi(range.back(), &hi) || lo > hi) {
      return absl::InvalidArgumentError(
          absl::StrCat("\"", part, "\" is not an id or a range like 0-3"));
    }
    if (lo < 0 || hi >= limit) {
      return absl::InvalidArgumentError(absl::StrCat(
          "\"", part, "\" is outside the valid ids 0..", limit - 1));
    }
    for (int64_t i = lo; i <= hi; ++i) ids.insert(i);
  }
  if (ids.empty()) return absl::InvalidArgumentError("empty id list");
  return std::vector<int64_t>(ids.begin(), ids.end());
}

absl::StatusOr<std::vector<int64_t>> ShardExperts(int64_t index, int64_t shards,
                                                  int64_t total_experts) {
  if (shards < 1 || shards > total_experts) {
    return absl::InvalidArgumentError(
        absl::StrCat("the number of shards must be in [1, ", total_experts,
                     "], got ", shards));
  }
  if (index < 0 || index >= shards) {
    return absl::InvalidArgumentError(
        absl::StrCat("shard index ", index, " is outside [0, ", shards, ")"));
  }
  std::vector<int64_t> ids;
  for (int64_t e = total_experts * index / shards;
       e < total_experts * (index + 1) / shards; ++e) {
    ids.push_back(e);
  }
  return ids;
}

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

std::vector<std::string> ParseCommandLine(int argc, char** argv,
                                          const char* program,
                                          const char* usage) {
  TuneAllocatorForReuse();
  SetLogProgramName(program);
  absl::SetProgramUsageMessage(usage);
  std::vector<std::string> args = NormalizeFlagDashes(argc, argv);
  std::vector<char*> ptrs = ArgvPointers(args);
  std::vector<char*> positional =
      absl::ParseCommandLine(static_cast<int>(args.size()), ptrs.data());
  return std::vector<std::string>(positional.begin(), positional.end());
}

int ExitCode(const absl::Status& status) {
  if (status.ok()) return 0;
  MOE_LOG(ERROR) << status.message();
  return 1;
}

std::vector<char*> ArgvPointers(std::vector<std::string>& args) {
  std::vector<char*> out;
  for (std::string& a : args) out.push_back(a.data());
  out.push_back(nullptr);
  return out;
}

}  // namespace moe::common
