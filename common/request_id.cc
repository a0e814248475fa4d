#include "common/request_id.h"

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

std::string RequestIdOrNew(absl::string_view from_caller) {
  return RequestIdOrNew(from_caller, {});
}

std::string RequestIdOrNew(absl::string_view from_caller,
                           absl::string_view from_body) {
  if (UsableRequestId(from_caller)) return std::string(from_caller);
  if (UsableRequestId(from_body)) return std::string(from_body);
  return NewRequestId();
}

}  // namespace moe::common
