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

// Splits "a,b,c" into its non-empty parts.
std::vector<std::string> SplitList(absl::string_view text);

// argv-style pointers into `args` (which must outlive the result).
std::vector<char*> ArgvPointers(std::vector<std::string>& args);

// What every main() does first: names the program in log lines, sets the
// --help text, accepts dashed flag names and parses the flags. Returns the
// positional arguments (argv[0] first).
std::vector<std::string> ParseCommandLine(int argc, char** argv,
                                          const char* program,
                                          const char* usage);

// Logs a failed status and returns the process exit code (0 or 1).
int ExitCode(const absl::Status& status);

}  // namespace moe::common
