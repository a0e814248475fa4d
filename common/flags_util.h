// Command-line helpers shared by the *_main.cc files.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moe::common {

// Rewrites "--input-tensor=x" to "--input_tensor=x" (abseil flags spell names
// with underscores) so both spellings work. Stops at a bare "--".
std::vector<std::string> NormalizeFlagDashes(int argc, char** argv);

// Parses an id list such as "0-3,8" into sorted unique ids. InvalidArgument
// for a malformed list or an id outside [0, limit).
absl::StatusOr<std::vector<int64_t>> ParseIdList(absl::string_view text,
                                                 int64_t limit);

// The contiguous expert range of shard `index` of `shards`: the same split
// moe-up and the Kubernetes StatefulSet use (shard i gets experts
// [E*i/n, E*(i+1)/n)). InvalidArgument when index is out of range or a shard
// would be empty.
absl::StatusOr<std::vector<int64_t>> ShardExperts(int64_t index, int64_t shards,
                                                  int64_t total_experts);

// The ordinal of a StatefulSet pod name: "moe-expert-3" -> 3.
absl::StatusOr<int64_t> OrdinalFromHostname(absl::string_view hostname);

// Expands "moe-expert-{i}.moe-expert:50052" for i = 0..n-1.
absl::StatusOr<std::vector<std::string>> ExpandTemplate(
    absl::string_view pattern, int64_t n);

// Splits "a,b,c" into its non-empty parts.
std::vector<std::string> SplitList(absl::string_view text);

// argv-style pointers into `args` (which must outlive the result).
std::vector<char*> ArgvPointers(std::vector<std::string>& args);

// What every main() does first: tunes the allocator (common/allocator.h),
// names the program in log lines, sets the
// --help text, accepts dashed flag names and parses the flags. Returns the
// positional arguments (argv[0] first).
std::vector<std::string> ParseCommandLine(int argc, char** argv,
                                          const char* program,
                                          const char* usage);

// Logs a failed status and returns the process exit code (0 or 1).
int ExitCode(const absl::Status& status);

}  // namespace moe::common
