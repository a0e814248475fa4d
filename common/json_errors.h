// Why a text that failed to parse as JSON is not JSON, for the error that
// says so: nlohmann's own words, with where ("line 1, column 2: syntax
// error while parsing object key - unexpected end of input; expected string
// literal"), without the text's own bytes (nlohmann quotes the token it was
// reading, which may be megabytes of a client's string), at most 240
// bytes of printable ASCII.
//
// Example:
//   Json root = Json::parse(body.begin(), body.end(), nullptr, false);
//   if (root.is_discarded()) {
//     return Bad(absl::StrCat("the body is not valid JSON: ",
//     WhyNotJson(body)));
//   }
//   -> "the body is not valid JSON: parse error at line 1, column 6: syntax
//       error while parsing value - invalid literal (NaN and Infinity are not
//       JSON numbers: Python's json.dumps writes them unless allow_nan=False)"
#pragma once

#include <string>

#include "absl/strings/string_view.h"

namespace moe::common {

// "it is empty" for a text of whitespace alone; nlohmann's reason and
// position otherwise, with a hint where the text holds NaN or Infinity.
// Parses `text` again: call it only on the error path.
std::string WhyNotJson(absl::string_view text);

}  // namespace moe::common
