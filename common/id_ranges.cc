#include "common/id_ranges.h"

#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace moe::common {

absl::StatusOr<std::vector<int64_t>> ParseIdRanges(absl::string_view text,
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

std::string FoldIdRanges(const std::vector<int64_t>& ids) {
  std::vector<std::string> parts;
  for (size_t i = 0; i < ids.size();) {
    size_t j = i;
    while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
    parts.push_back(i == j ? absl::StrCat(ids[i])
                           : absl::StrCat(ids[i], "-", ids[j]));
    i = j + 1;
  }
  return absl::StrJoin(parts, ",");
}

}  // namespace moe::common
