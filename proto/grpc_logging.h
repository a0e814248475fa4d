// gRPC's own log lines (gpr_log: its errors, and with GRPC_VERBOSITY=debug
// its debug lines), written through common/logging.h so that they take the
// program's --log_format like every other line:
//   2026-12-06T04:33:02.636Z E moe-router: grpc chttp2_transport.cc:1234: ...
//
// Example (a server main, right after cli::ParseCommandLine):
//   proto::RouteGrpcLogs();
#pragma once

#include <string>

namespace moe::proto {

// From now on, for the whole process (gRPC has one log function). Call
// before gRPC starts, so that its first lines are routed too.
void RouteGrpcLogs();

// "grpc FILE:LINE: MESSAGE" for gRPC's line at `file` (its path cut to the
// file's name).
std::string GrpcLogMessage(const char* file, int line, const char* message);

}  // namespace moe::proto
