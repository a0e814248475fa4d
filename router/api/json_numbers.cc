#include "router/api/json_numbers.h"

#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string_view>
#include <system_error>

#include "common/float_bits.h"
#include "common/json_number.h"

namespace moe::router {
namespace {

// Past this nesting of the body's own containers nothing is lifted (a
// lifted array sits at depth 3: the root, "inputs", one input).
constexpr size_t kMaxFrames = 32;

constexpr size_t kNone = std::string::npos;

bool IsSpace(char c) { return c == ' ' || c == '\n' || c == '\r' || c == '\t'; }

// The array at text[i] ('['), when it holds only numbers and arrays, none
// deeper than kMaxDataDepth, every number a float32: its numbers appended
// to `out` and the index past its ']'. kNone otherwise (`out` then holds
// garbage).
//
// Each number gets the float nlohmann's value would give: the correctly
// rounded double (nlohmann's integers convert to it exactly as well), cast
// to float32, refused past float32's range; an integer zero is +0 ("-0"
// is nlohmann's integer 0).
size_t LiftArray(absl::string_view text, size_t i, std::vector<float>* out) {
  const size_t n = text.size();
  int depth = 0;  // arrays open
  bool want_value = true;
  bool just_opened = false;
  while (i < n) {
    const char c = text[i];
    if (IsSpace(c)) {
      ++i;
      continue;
    }
    if (c == '[') {
      // The array itself is a value at depth `depth`.
      if (!want_value || depth > kMaxDataDepth) return kNone;
      ++depth;
      just_opened = true;
      ++i;
      continue;
    }
    if (c == ']') {
      if (want_value && !just_opened) return kNone;  // [1,]
      --depth;
      ++i;
      if (depth == 0) return i;
      want_value = false;
      just_opened = false;
      continue;
    }
    if (c == ',') {
      if (want_value) return kNone;
      want_value = true;
      just_opened = false;
      ++i;
      continue;
    }
    if (!want_value || depth > kMaxDataDepth) return kNone;
    const common::JsonNumberScan scan =
        common::ScanJsonNumber(std::string_view(text.data(), text.size()), i);
    if (!scan.ok) return kNone;
    const size_t end = scan.end;
    double v = 0;
    const auto [ptr, ec] =
        std::from_chars(text.data() + i, text.data() + end, v);
    if (ec != std::errc() || ptr != text.data() + end) return kNone;
    if (!(std::fabs(v) <= std::numeric_limits<float>::max())) return kNone;
    if (scan.integer && v == 0) v = 0;
    out->push_back(static_cast<float>(v));
    want_value = false;
    just_opened = false;
    i = end;
  }
  return kNone;
}

// One open container of the body's text while it is scanned.
struct Frame {
  bool object = false;
  bool inputs = false;    // the root's "inputs" array
  int64_t input = -1;     // an element of "inputs": its index
  int64_t elements = 0;   // an array's values so far
  absl::string_view key;  // an object's last key
  bool want_key = false;  // an object awaits a key (not a value)
  bool has_data = false;  // an input: "data" seen
};

// LiftInputData's work; false where nothing may be lifted (`lifted` then
// holds garbage).
bool Lift(absl::string_view json, LiftedInputData* out) {
  LiftedInputData& lifted = *out;
  std::vector<Frame> frames;
  bool root_has_inputs = false;
  size_t copied = 0;  // json[0, copied) is in lifted.json or lifted
  const size_t n = json.size();
  size_t i = 0;
  while (i < n) {
    const char c = json[i];
    if (IsSpace(c) || c == ':') {
      ++i;
      continue;
    }
    Frame* top = frames.empty() ? nullptr : &frames.back();
    if (c == ',') {
      if (top != nullptr && top->object) top->want_key = true;
      ++i;
      continue;
    }
    if (c == '}' || c == ']') {
      if (top == nullptr || top->object != (c == '}')) return false;
      frames.pop_back();
      ++i;
      continue;
    }
    if (c == '"') {
      // A string: to its closing quote, past escapes.
      size_t j = i + 1;
      bool escaped = false;
      while (j < n && json[j] != '"') {
        if (json[j] == '\\') {
          escaped = true;
          ++j;
        }
        ++j;
      }
      if (j >= n) return false;
      if (top != nullptr && top->object && top->want_key) {
        // A key written with escapes may spell one that matters.
        if (escaped) return false;
        top->key = json.substr(i + 1, j - i - 1);
        top->want_key = false;
        if (frames.size() == 1 && top->key == "inputs") {
          if (root_has_inputs) return false;
          root_has_inputs = true;
        }
        if (top->input >= 0 && top->key == "data") {
          if (top->has_data) return false;
          top->has_data = true;
        }
      } else if (top != nullptr && !top->object) {
        ++top->elements;
      }
      i = j + 1;
      continue;
    }
    // A value other than a string.
    int64_t index = -1;  // its index in its array
    if (top != nullptr && !top->object) index = top->elements++;
    if (c == '[' && top != nullptr && top->input >= 0 && top->key == "data") {
      std::vector<float> values;
      const size_t end = LiftArray(json, i, &values);
      if (end != kNone) {
        lifted.json.append(json.data() + copied, i - copied);
        lifted.json.append("[]");
        copied = end;
        if (lifted.values.size() <= static_cast<size_t>(top->input)) {
          lifted.values.resize(top->input + 1);
        }
        lifted.values[top->input] = std::move(values);
        i = end;
        continue;
      }
    }
    if (c == '{' || c == '[') {
      if (frames.size() >= kMaxFrames) return false;
      Frame f;
      f.object = c == '{';
      f.want_key = f.object;
      if (!f.object && frames.size() == 1 && top->object &&
          top->key == "inputs") {
        f.inputs = true;
      }
      if (f.object && top != nullptr && top->inputs) f.input = index;
      frames.push_back(f);
      ++i;
      continue;
    }
    // A number or a literal (or a byte-order mark, which the parser
    // skips): to the next delimiter. (Never an empty step: every
    // delimiter was taken above.)
    while (i < n && !IsSpace(json[i]) &&
           std::memchr(",:[]{}\"", json[i], 7) == nullptr) {
      ++i;
    }
  }
  if (lifted.values.empty() || !frames.empty()) return false;
  lifted.json.append(json.data() + copied, n - copied);
  return true;
}

}  // namespace

LiftedInputData LiftInputData(absl::string_view json) {
  LiftedInputData lifted;
  if (!Lift(json, &lifted)) return {};
  return lifted;
}

void AppendFloat32Json(float v, std::string* out) {
  if (!std::isfinite(v)) {
    out->append("null");
    return;
  }
  char buffer[48];
  const uint32_t bits = common::Float32Bits(v);
  // The shortest float32 digits (which the standard fixes: shortest, then
  // nearest) read back as the same float32 when read as a double then
  // cast, for every finite float32 but these two, ±7.038531e-26: their
  // digits sit so near a half-way point between float32s that the double
  // lands on it and rounds to the other side. They get the double's own
  // digits. (JsonNumbersTest.EveryFloat32ReadsBackAsItself checks a
  // sample, every float32 with MOE_EVERY_FLOAT32=1.)
  char* const end = (bits & 0x7fffffffu) == 0x15ae43fdu
                        ? std::to_chars(buffer, buffer + sizeof(buffer),
                                        static_cast<double>(v))
                              .ptr
                        : std::to_chars(buffer, buffer + sizeof(buffer), v).ptr;
  out->append(buffer, end);
  if (std::memchr(buffer, '.', end - buffer) == nullptr &&
      std::memchr(buffer, 'e', end - buffer) == nullptr) {
    out->append(".0");
  }
}

}  // namespace moe::router
