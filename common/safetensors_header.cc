#include "common/safetensors_header.h"

#include <algorithm>
#include <limits>
#include <set>
#include <utility>

#include "common/json_number.h"

namespace moe::common {
namespace {

constexpr int kMaxDepth = 64;
constexpr char kMalformed[] = "malformed safetensors file: ";

// A parsed JSON value. Numbers keep their text: the header needs only
// non-negative integers, and a value of any other kind is only skipped.
struct Json {
  enum class Kind { kNull, kBool, kNumber, kString, kArray, kObject };
  Kind kind = Kind::kNull;
  std::string text;               // a string's contents, a number's token
  std::vector<std::string> keys;  // an object's keys
  std::vector<Json> items;        // an array's items, an object's values

  const Json* Find(std::string_view key) const {
    for (size_t i = 0; i < keys.size(); ++i) {
      if (keys[i] == key) return &items[i];
    }
    return nullptr;
  }
};

// Strict RFC 8259 JSON, recursive descent, depth-limited.
class JsonParser {
 public:
  explicit JsonParser(std::string_view text) : s_(text) {}

  // The document: one value and nothing after it but white space.
  bool Document(Json* out) {
    if (!Value(out, 0)) return false;
    Space();
    return i_ == s_.size() || Fail("text after the JSON object");
  }
  const std::string& error() const { return error_; }

 private:
  bool Fail(const std::string& what) {
    if (error_.empty()) {
      error_ = what + " at byte " + std::to_string(std::min(i_, s_.size()));
    }
    return false;
  }
  void Space() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' ||
                              s_[i_] == '\n' || s_[i_] == '\r')) {
      ++i_;
    }
  }
  bool Accept(char c) {
    Space();
    if (i_ < s_.size() && s_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  bool Expect(char c) {
    return Accept(c) || Fail(std::string("expected '") + c + "'");
  }
  bool Literal(std::string_view word) {
    if (s_.substr(i_, word.size()) != word) return Fail("unknown literal");
    i_ += word.size();
    return true;
  }

  bool Value(Json* out, int depth) {
    if (depth > kMaxDepth) return Fail("nested too deeply");
    Space();
    if (i_ >= s_.size()) return Fail("unexpected end");
    const char c = s_[i_];
    if (c == '{') return Object(out, depth);
    if (c == '[') return Array(out, depth);
    if (c == '"') {
      out->kind = Json::Kind::kString;
      return String(&out->text);
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
      out->kind = Json::Kind::kNumber;
      return Number(&out->text);
    }
    if (c == 't' || c == 'f') {
      out->kind = Json::Kind::kBool;
      return Literal(c == 't' ? "true" : "false");
    }
    out->kind = Json::Kind::kNull;
    return Literal("null");
  }

  bool Object(Json* out, int depth) {
    out->kind = Json::Kind::kObject;
    ++i_;  // '{'
    if (Accept('}')) return true;
    std::set<std::string> seen;
    do {
      Space();
      std::string key;
      if (i_ >= s_.size() || s_[i_] != '"') return Fail("expected a key");
      if (!String(&key)) return false;
      if (!seen.insert(key).second)
        return Fail("duplicate key \"" + key + "\"");
      if (!Expect(':')) return false;
      out->keys.push_back(std::move(key));
      out->items.emplace_back();
      if (!Value(&out->items.back(), depth + 1)) return false;
    } while (Accept(','));
    return Expect('}');
  }

  bool Array(Json* out, int depth) {
    out->kind = Json::Kind::kArray;
    ++i_;  // '['
    if (Accept(']')) return true;
    do {
      out->items.emplace_back();
      if (!Value(&out->items.back(), depth + 1)) return false;
    } while (Accept(','));
    return Expect(']');
  }

  bool Number(std::string* token) {
    const JsonNumberScan scan = ScanJsonNumber(s_, i_);
    if (!scan.ok) {
      i_ = scan.end;
      return Fail("expected a digit");
    }
    *token = std::string(s_.substr(i_, scan.end - i_));
    i_ = scan.end;
    return true;
  }

  bool Hex4(uint32_t* v) {
    if (i_ + 4 > s_.size()) return Fail("truncated \\u escape");
    *v = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = s_[i_++];
      const int d = c >= '0' && c <= '9'   ? c - '0'
                    : c >= 'a' && c <= 'f' ? c - 'a' + 10
                    : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                           : -1;
      if (d < 0) return Fail("bad \\u escape");
      *v = *v << 4 | static_cast<uint32_t>(d);
    }
    return true;
  }

  static void AppendUtf8(uint32_t cp, std::string* out) {
    if (cp < 0x80) {
      out->push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out->push_back(static_cast<char>(0xC0 | cp >> 6));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
      out->push_back(static_cast<char>(0xE0 | cp >> 12));
      out->push_back(static_cast<char>(0x80 | (cp >> 6 & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      out->push_back(static_cast<char>(0xF0 | cp >> 18));
      out->push_back(static_cast<char>(0x80 | (cp >> 12 & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp >> 6 & 0x3F)));
      out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }

  bool Escape(std::string* out) {
    if (i_ >= s_.size()) return Fail("truncated escape");
    const char c = s_[i_++];
    switch (c) {
      case '"':
      case '\\':
      case '/':
        out->push_back(c);
        return true;
      case 'b':
        out->push_back('\b');
        return true;
      case 'f':
        out->push_back('\f');
        return true;
      case 'n':
        out->push_back('\n');
        return true;
      case 'r':
        out->push_back('\r');
        return true;
      case 't':
        out->push_back('\t');
        return true;
      case 'u':
        break;
      default:
        return Fail("bad escape");
    }
    uint32_t cp;
    if (!Hex4(&cp)) return false;
    if (cp >= 0xDC00 && cp <= 0xDFFF) return Fail("lone low surrogate");
    if (cp >= 0xD800 && cp <= 0xDBFF) {
      uint32_t low;
      if (s_.substr(i_, 2) != "\\u") return Fail("lone high surrogate");
      i_ += 2;
      if (!Hex4(&low)) return false;
      if (low < 0xDC00 || low > 0xDFFF) return Fail("lone high surrogate");
      cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
    }
    AppendUtf8(cp, out);
    return true;
  }

  // One UTF-8 sequence starting at s_[i_] (a byte >= 0x80), copied.
  bool Utf8(std::string* out) {
    const auto b0 = static_cast<unsigned char>(s_[i_]);
    int n;
    uint32_t cp, min;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
      n = 1, cp = b0 & 0x1F, min = 0x80;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      n = 2, cp = b0 & 0x0F, min = 0x800;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      n = 3, cp = b0 & 0x07, min = 0x10000;
    } else {
      return Fail("invalid UTF-8");
    }
    if (i_ + n >= s_.size()) return Fail("invalid UTF-8");
    for (int k = 1; k <= n; ++k) {
      const auto b = static_cast<unsigned char>(s_[i_ + k]);
      if ((b & 0xC0) != 0x80) return Fail("invalid UTF-8");
      cp = cp << 6 | (b & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      return Fail("invalid UTF-8");
    }
    out->append(s_.substr(i_, n + 1));
    i_ += n + 1;
    return true;
  }

  bool String(std::string* out) {
    ++i_;  // '"'
    while (i_ < s_.size()) {
      const auto c = static_cast<unsigned char>(s_[i_]);
      if (c == '"') {
        ++i_;
        return true;
      }
      if (c < 0x20) return Fail("control character in a string");
      if (c == '\\') {
        ++i_;
        if (!Escape(out)) return false;
      } else if (c >= 0x80) {
        if (!Utf8(out)) return false;
      } else {
        out->push_back(static_cast<char>(c));
        ++i_;
      }
    }
    return Fail("unterminated string");
  }

  std::string_view s_;
  size_t i_ = 0;
  std::string error_;
};

// A non-negative integer number that fits in uint64_t.
bool AsUnsigned(const Json& v, uint64_t* out) {
  if (v.kind != Json::Kind::kNumber || v.text.empty()) return false;
  uint64_t n = 0;
  for (char c : v.text) {
    if (c < '0' || c > '9') return false;
    const uint64_t d = static_cast<uint64_t>(c - '0');
    if (n > (std::numeric_limits<uint64_t>::max() - d) / 10) return false;
    n = n * 10 + d;
  }
  *out = n;
  return true;
}

bool Malformed(const std::string& what, std::string* error) {
  *error = kMalformed + what;
  return false;
}

bool TensorError(const std::string& name, const std::string& what,
                 std::string* error) {
  return Malformed("tensor \"" + name + "\": " + what, error);
}

std::string Shape(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    out += (i ? ", " : "") + std::to_string(shape[i]);
  }
  return out + "]";
}

bool ParseShape(const std::string& name, const Json* shape, TensorEntry* entry,
                std::string* error) {
  if (shape == nullptr || shape->kind != Json::Kind::kArray) {
    return TensorError(name, "missing or non-array \"shape\"", error);
  }
  for (const Json& dim : shape->items) {
    uint64_t d;
    if (!AsUnsigned(dim, &d)) {
      return TensorError(name, "shape entries must be non-negative integers",
                         error);
    }
    if (d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return TensorError(name, "shape entry too large", error);
    }
    entry->shape.push_back(static_cast<int64_t>(d));
  }
  return true;
}

bool ParseEntry(const std::string& name, const Json& value, uint64_t data_size,
                TensorEntry* entry, std::string* error) {
  if (name.empty()) return Malformed("a tensor has an empty name", error);
  if (value.kind != Json::Kind::kObject) {
    return TensorError(name, "not an object", error);
  }
  entry->name = name;
  const Json* dtype = value.Find("dtype");
  if (dtype == nullptr || dtype->kind != Json::Kind::kString) {
    return TensorError(name, "missing or non-string \"dtype\"", error);
  }
  if (!ParseSafetensorsDType(dtype->text, &entry->dtype)) {
    return TensorError(name,
                       "unknown dtype \"" + dtype->text +
                           "\" (supported: " + SafetensorsDTypeNames() + ")",
                       error);
  }
  if (!ParseShape(name, value.Find("shape"), entry, error)) return false;
  const Json* offsets = value.Find("data_offsets");
  if (offsets == nullptr || offsets->kind != Json::Kind::kArray ||
      offsets->items.size() != 2 ||
      !AsUnsigned(offsets->items[0], &entry->begin) ||
      !AsUnsigned(offsets->items[1], &entry->end)) {
    return TensorError(
        name, "\"data_offsets\" must be two non-negative integers", error);
  }
  if (entry->begin > entry->end) {
    return TensorError(name, "data_offsets begin > end", error);
  }
  if (entry->end > data_size) {
    return TensorError(name,
                       "data_offsets [" + std::to_string(entry->begin) + ", " +
                           std::to_string(entry->end) +
                           ") run past the data section (" +
                           std::to_string(data_size) + " bytes)",
                       error);
  }
  // Bytes of the shape, without overflow.
  const uint64_t elem = ElementSize(entry->dtype);
  uint64_t bytes = elem;
  for (int64_t d : entry->shape) {
    const auto ud = static_cast<uint64_t>(d);
    if (ud != 0 && bytes > std::numeric_limits<uint64_t>::max() / ud) {
      return TensorError(name, "byte size overflows", error);
    }
    bytes *= ud;
  }
  if (entry->end - entry->begin != bytes) {
    return TensorError(name,
                       "shape " + Shape(entry->shape) + " of " +
                           SafetensorsDTypeName(entry->dtype) + " needs " +
                           std::to_string(bytes) +
                           " bytes but data_offsets span " +
                           std::to_string(entry->end - entry->begin),
                       error);
  }
  return true;
}

bool ParseMetadata(const Json& value, SafetensorsHeader* out,
                   std::string* error) {
  if (value.kind != Json::Kind::kObject) {
    return Malformed("__metadata__ is not an object", error);
  }
  for (size_t i = 0; i < value.keys.size(); ++i) {
    if (value.items[i].kind != Json::Kind::kString) {
      return Malformed(
          "__metadata__ value \"" + value.keys[i] + "\" is not a string",
          error);
    }
    out->metadata[value.keys[i]] = value.items[i].text;
  }
  return true;
}

bool CheckOverlaps(const std::vector<TensorEntry>& tensors,
                   std::string* error) {
  std::vector<const TensorEntry*> by_offset;
  for (const TensorEntry& e : tensors) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const TensorEntry* a, const TensorEntry* b) {
              return a->begin != b->begin ? a->begin < b->begin
                                          : a->end < b->end;
            });
  const TensorEntry* last = nullptr;  // the non-empty one reaching furthest
  for (const TensorEntry* cur : by_offset) {
    // Empty tensors occupy no bytes and cannot overlap anything.
    if (cur->begin == cur->end) continue;
    if (last != nullptr && cur->begin < last->end) {
      return TensorError(cur->name,
                         "data overlaps tensor \"" + last->name + "\"", error);
    }
    if (last == nullptr || cur->end > last->end) last = cur;
  }
  return true;
}

}  // namespace

bool ParseSafetensorsHeaderJson(std::string_view header_json,
                                uint64_t data_size, SafetensorsHeader* out,
                                std::string* error) {
  *out = SafetensorsHeader();
  Json root;
  JsonParser parser(header_json);
  if (!parser.Document(&root)) {
    return Malformed("header is not valid JSON (" + parser.error() + ")",
                     error);
  }
  if (root.kind != Json::Kind::kObject) {
    return Malformed("header is not a JSON object", error);
  }
  for (size_t i = 0; i < root.keys.size(); ++i) {
    if (root.keys[i] == "__metadata__") {
      if (!ParseMetadata(root.items[i], out, error)) return false;
      continue;
    }
    TensorEntry entry;
    if (!ParseEntry(root.keys[i], root.items[i], data_size, &entry, error)) {
      return false;
    }
    out->tensors.push_back(std::move(entry));
  }
  if (!CheckOverlaps(out->tensors, error)) return false;
  std::sort(out->tensors.begin(), out->tensors.end(),
            [](const TensorEntry& a, const TensorEntry& b) {
              return a.name < b.name;
            });
  return true;
}

uint64_t SafetensorsHeaderLength(const unsigned char prefix[8]) {
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = n << 8 | prefix[i];
  return n;
}

}  // namespace moe::common
