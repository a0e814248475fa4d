// Raw TCP on 127.0.0.1 for tests that speak HTTP (or nothing) byte by byte.
#pragma once

#include "absl/strings/string_view.h"

namespace moe::testing {

// A TCP connection to 127.0.0.1:port (-1 when refused), with 30 s send and
// receive timeouts so that no test waits forever.
int ConnectLoopback(int port);

// Sends all of `bytes` (no SIGPIPE); false once a send fails.
bool SendAll(int fd, absl::string_view bytes);

}  // namespace moe::testing
