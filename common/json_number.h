// JSON's number grammar (RFC 8259, section 6), scanned in place:
//   -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
// The one scanner of the project's two JSON readers that do not go through
// a JSON library: the safetensors header (common/safetensors_header.cc)
// and the REST bodies' tensor data (router/api/json_numbers.cc). Plain
// C++, no dependencies: the GPU backend's standalone build uses it too.
#pragma once

#include <cstddef>
#include <string_view>

namespace moe::common {

struct JsonNumberScan {
  // Whether text[start, end) is a number.
  bool ok = false;
  // ok: the index past the number; else the index where a digit was
  // wanted (for an error that names the byte).
  size_t end = 0;
  // ok: the number has neither a fraction nor an exponent.
  bool integer = false;
};

// The number that starts at text[i]. Not ok when there is none; what
// follows a number (a delimiter or not) is the caller's to check.
inline JsonNumberScan ScanJsonNumber(std::string_view text, size_t i) {
  const size_t n = text.size();
  const auto digit = [&](size_t k) {
    return k < n && text[k] >= '0' && text[k] <= '9';
  };
  // One or more digits from text[i]; false, i unchanged, when there are none.
  const auto digits = [&](size_t* k) {
    if (!digit(*k)) return false;
    while (digit(*k)) ++*k;
    return true;
  };
  JsonNumberScan scan;
  if (i < n && text[i] == '-') ++i;
  if (i < n && text[i] == '0') {
    ++i;
  } else if (!digits(&i)) {
    scan.end = i;
    return scan;
  }
  bool integer = true;
  if (i < n && text[i] == '.') {
    integer = false;
    ++i;
    if (!digits(&i)) {
      scan.end = i;
      return scan;
    }
  }
  if (i < n && (text[i] == 'e' || text[i] == 'E')) {
    integer = false;
    ++i;
    if (i < n && (text[i] == '+' || text[i] == '-')) ++i;
    if (!digits(&i)) {
      scan.end = i;
      return scan;
    }
  }
  scan.ok = true;
  scan.end = i;
  scan.integer = integer;
  return scan;
}

}  // namespace moe::common
