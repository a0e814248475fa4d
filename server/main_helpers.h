// What the server main() files parse from their flags and files: the
// workers a router uses, a StatefulSet pod's ordinal, the wire dtype. Only
// main files use these; services take options structs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/dtype.h"

namespace moe::server {

// The ordinal of a StatefulSet pod name: "moe-expert-3" -> 3.
absl::StatusOr<int64_t> OrdinalFromHostname(absl::string_view hostname);

// Expands "moe-expert-{i}.moe-expert:50052" for i = 0..n-1.
absl::StatusOr<std::vector<std::string>> ExpandTemplate(
    absl::string_view pattern, int64_t n);

// Splits "a,b,c" into its non-empty, trimmed parts.
std::vector<std::string> SplitList(absl::string_view text);

// A router's workers: the addresses of `list` ("HOST:PORT,..."), then of
// `file` (one or more per line, '#' starts a comment), then `pattern`
// expanded for `count` workers. InvalidArgument naming the flag when none
// is given or the template is bad; NotFound for an unreadable file.
absl::StatusOr<std::vector<std::string>> WorkerAddresses(
    absl::string_view list, const std::string& file, absl::string_view pattern,
    int64_t count);

// `value`, or its error with the flag's name in front ("--wire_dtype: ...").
template <typename T>
absl::StatusOr<T> ForFlag(absl::string_view flag, absl::StatusOr<T> value) {
  if (value.ok()) return value;
  return absl::Status(value.status().code(),
                      absl::StrCat(flag, ": ", value.status().message()));
}

// "float32" / "bfloat16" / "float16".
absl::StatusOr<common::DType> ParseWireDType(absl::string_view name);

}  // namespace moe::server
