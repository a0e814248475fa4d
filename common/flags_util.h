// Command-line helpers shared by the *_main.cc files.
#pragma once

#include <string>
#include <vector>

namespace moe::common {

// Rewrites "--input-tensor=x" to "--input_tensor=x" (abseil flags spell names
// with underscores) so both spellings work. Stops at a bare "--".
std::vector<std::string> NormalizeFlagDashes(int argc, char** argv);

// argv-style pointers into `args` (which must outlive the result).
std::vector<char*> ArgvPointers(std::vector<std::string>& args);

}  // namespace moe::common
