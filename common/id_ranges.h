// Expert id lists as people write them: "0-3,8".
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moe::common {

// Parses an id list such as "0-3,8" into sorted unique ids. InvalidArgument
// for a malformed list or an id outside [0, limit).
absl::StatusOr<std::vector<int64_t>> ParseIdRanges(absl::string_view text,
                                                   int64_t limit);

// The inverse for sorted unique ids: {0, 1, 2, 3, 8} -> "0-3,8".
std::string FoldIdRanges(const std::vector<int64_t>& ids);

}  // namespace moe::common
