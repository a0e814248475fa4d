// What every moe-serve main() does first, for moe-client, moe-run and the
// servers alike: tune the allocator (common/allocator.h), name the program
// in log lines, and parse the flags, where
//   --help, -h   prints the usage and the binary's own flags with their
//                defaults, and exits 0;
//   --version    prints the version, the git revision and the device
//                support built in, and exits 0;
// and flag names may be spelled with dashes (--input-tensor) as well as
// underscores.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace moe::cli {

// Returns the positional arguments (argv[0] first). Exits 0 after --help
// and --version, and 1 after abseil's message for a bad flag.
std::vector<std::string> ParseCommandLine(int argc, char** argv,
                                          const char* program,
                                          const char* usage);

// The --help text: `usage`, then every flag defined in moe-serve's own
// sources with its type, default and help, sorted by name.
std::string HelpText(const char* program, const char* usage);

// "moe-client 0.1.0 (git 1a2b3c4d5e6f), device support: cpu".
std::string VersionText(const char* program);

// Rewrites "--input-tensor=x" to "--input_tensor=x" (abseil flags spell names
// with underscores). Stops at a bare "--".
std::vector<std::string> NormalizeFlagDashes(int argc, char** argv);

// Logs a failed status and returns the process exit code (0 or 1).
int ExitCode(const absl::Status& status);

}  // namespace moe::cli
