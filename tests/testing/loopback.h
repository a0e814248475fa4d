// Raw TCP on 127.0.0.1 for tests that speak HTTP (or nothing) byte by byte.
#pragma once

#include <string>

#include "absl/strings/string_view.h"

namespace moe::testing {

// A TCP connection to 127.0.0.1:port (-1 when refused), with 30 s send and
// receive timeouts so that no test waits forever.
int ConnectLoopback(int port);

// Sends all of `bytes` (no SIGPIPE); false once a send fails.
bool SendAll(int fd, absl::string_view bytes);

// One HTTP/1.1 answer that has a Content-Length: its status, and its head
// and body in `head` and `body` (either may be null); -1 when the
// connection ended (or a receive timed out) first.
int ReadAnswer(int fd, std::string* body, std::string* head = nullptr);

}  // namespace moe::testing
