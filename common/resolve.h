// Every address a name resolves to: how the router and the balancer find
// workers behind one DNS name (a StatefulSet's headless Service has an A
// record per pod).
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace moe::common {

// "NAME:PORT" -> every address of NAME as "IP:PORT" ("[IP]:PORT" for IPv6),
// sorted, without repeats. InvalidArgument for a malformed NAME:PORT,
// NotFound when the name does not resolve (or has no address).
absl::StatusOr<std::vector<std::string>> ResolveAll(absl::string_view target);

}  // namespace moe::common
