// The numbers of the REST edge's JSON tensors, read and written without a
// JSON value per number (nlohmann's parse of a 1 x 32 x 512 body of x
// spent ~240 ns a number; its dump of y ~100 ns and 19 bytes a number).
//
// Reading: LiftInputData takes the arrays of numbers that are the "data"
// of the body's "inputs" out of its text, parsing each number where it
// stands, and leaves the rest (small) for the JSON parser, with each taken
// array written as []. It takes only what it can read exactly as the
// parser would (the same float for every number, the same refusals): an
// array with anything but numbers and arrays in it, a number that is no
// float32, nesting past kMaxDataDepth, a key written with escapes or given
// twice are left where they are, and the parser reads them as before.
// tests/unit/router/api/json_numbers_test.cc and the oip_json fuzz target
// check that both ways give the same request for every body.
//
// Writing: AppendFloat32Json writes each float32 as the shortest decimal
// that reads back as that float32, whether read as a float32 or, as
// Python's json and most JSON parsers do, as a double then cast (checked
// for every finite float32 in the test: two of them need more digits).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace moe::router {

// Nesting of a tensor's "data" deeper than this is refused (and would
// cost stack): the outer array is depth 0, its elements depth 1.
inline constexpr int kMaxDataDepth = 16;

struct LiftedInputData {
  // The JSON to parse: the text with every lifted array written as [];
  // empty when nothing was lifted (parse the text itself).
  std::string json;
  // Per element of "inputs", in order: the values of its "data",
  // flattened row-major, when they were lifted.
  std::vector<std::optional<std::vector<float>>> values;

  bool Lifted(size_t input) const {
    return input < values.size() && values[input].has_value();
  }
};

// Lifts the number arrays of `json`'s inputs' "data" (see above). Never
// fails: what it does not take the JSON parser reads.
LiftedInputData LiftInputData(absl::string_view json);

// Appends `v` to `out` as a JSON number: the shortest decimal that reads
// back as `v` (read as a double then cast, or as a float32), with ".0"
// when it is a whole number (as nlohmann writes doubles); null where v is
// not finite (JSON has no NaN or Infinity).
void AppendFloat32Json(float v, std::string* out);

}  // namespace moe::router
