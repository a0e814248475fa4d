#include "common/json_errors.h"

#include <nlohmann/json.hpp>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace moe::common {
namespace {

using Json = nlohmann::json;

constexpr size_t kMaxBytes = 240;

// nlohmann's message without its "[json.exception.parse_error.101] " prefix
// and its "; last read: '...'" quote of the input (the token read last: a
// client's bytes, of any length), keeping its "; expected ..." ending.
std::string Reason(absl::string_view what) {
  const size_t prefix = what.find("] ");
  if (what.substr(0, 1) == "[" && prefix != absl::string_view::npos) {
    what.remove_prefix(prefix + 2);
  }
  const size_t quote = what.find("; last read: ");
  std::string reason(what.substr(0, quote));
  if (quote != absl::string_view::npos) {
    const size_t expected = what.rfind("; expected ");
    if (expected != absl::string_view::npos && expected > quote) {
      absl::StrAppend(&reason, what.substr(expected));
    }
  }
  for (char& c : reason) {
    if (!absl::ascii_isprint(static_cast<unsigned char>(c))) c = '?';
  }
  if (reason.size() > kMaxBytes) reason.resize(kMaxBytes);
  return reason;
}

}  // namespace

std::string WhyNotJson(absl::string_view text) {
  if (absl::StripAsciiWhitespace(text).empty()) return "it is empty";
  try {
    [[maybe_unused]] const Json parsed = Json::parse(text.begin(), text.end());
  } catch (const Json::parse_error& e) {
    std::string reason = Reason(e.what());
    // nlohmann stops at the N of NaN and at the I of Infinity (-Infinity).
    const size_t at = e.byte > 0 ? e.byte - 1 : 0;
    if (at < text.size() && (absl::StartsWith(text.substr(at), "NaN") ||
                             absl::StartsWith(text.substr(at), "Infinity"))) {
      absl::StrAppend(&reason,
                      " (NaN and Infinity are not JSON numbers: Python's "
                      "json.dumps writes them unless allow_nan=False)");
    }
    return reason;
  } catch (const Json::exception& e) {
    return Reason(e.what());  // a number too large for a double
  }
  return "nlohmann::json parsed it on a second try";
}

}  // namespace moe::common
