#include "common/request_id.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <random>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/logging.h"

namespace moe::common {
namespace {

// splitmix64's finaliser: a bijection, so distinct counters give distinct
// IDs, and consecutive ones look unrelated.
uint64_t Mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t RandomStart() {
  std::random_device device;
  return (uint64_t{device()} << 32) ^ device();
}

}  // namespace

bool UsableRequestId(absl::string_view id) {
  if (id.empty() || id.size() > kMaxRequestIdBytes) return false;
  for (char c : id) {
    if (absl::ascii_isalnum(static_cast<unsigned char>(c))) continue;
    switch (c) {
      case '.':
      case '_':
      case '-':
      case ':':
      case '/':
      case '+':
      case '=':
        continue;
      default:
        return false;
    }
  }
  return true;
}

absl::Status CheckRequestId(absl::string_view id) {
  if (UsableRequestId(id)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "request ID ", QuoteForLog(id), " is not 1 to ", kMaxRequestIdBytes,
      " bytes of letters, digits and . _ - : / + ="));
}

std::string NewRequestId() {
  static const uint64_t start = RandomStart();
  static std::atomic<uint64_t> next{0};
  return absl::StrFormat(
      "%016x", Mix(start + next.fetch_add(1, std::memory_order_relaxed)));
}

std::string RequestIdNote(absl::string_view id) {
  return absl::StrCat(" [request ", id, "]");
}

absl::string_view TraceIdOf(absl::string_view traceparent) {
  // version "-" trace-id "-" parent-id "-" flags: 2, 32, 16 and 2 lowercase
  // hex digits; a version past 00 may append "-..." fields.
  auto hex = [](absl::string_view s) {
    return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) {
      return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
    });
  };
  auto zero = [](absl::string_view s) {
    return s.find_first_not_of('0') == absl::string_view::npos;
  };
  if (traceparent.size() < 55) return {};
  const absl::string_view version = traceparent.substr(0, 2);
  const absl::string_view trace = traceparent.substr(3, 32);
  const absl::string_view parent = traceparent.substr(36, 16);
  const absl::string_view flags = traceparent.substr(53, 2);
  if (!hex(version) || version == "ff" || traceparent[2] != '-' ||
      traceparent[35] != '-' || traceparent[52] != '-' || !hex(trace) ||
      !hex(parent) || !hex(flags) || zero(trace) || zero(parent)) {
    return {};
  }
  if (traceparent.size() > 55 && (version == "00" || traceparent[55] != '-')) {
    return {};
  }
  return trace;
}

std::string RequestIdOrNew(absl::string_view from_caller,
                           absl::string_view from_body,
                           absl::string_view traceparent) {
  if (UsableRequestId(from_caller)) return std::string(from_caller);
  if (UsableRequestId(from_body)) return std::string(from_body);
  const absl::string_view trace = TraceIdOf(traceparent);
  if (!trace.empty()) return std::string(trace);
  return NewRequestId();
}

}  // namespace moe::common
