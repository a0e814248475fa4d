#include "proto/grpc_logging.h"

#include <grpc/support/log.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/logging.h"

namespace moe::proto {
namespace {

void Write(gpr_log_func_args* args) {
  // gRPC's debug and info lines (GRPC_VERBOSITY) are info here.
  const common::LogLevel level = args->severity == GPR_LOG_SEVERITY_ERROR
                                     ? common::LogLevel::kError
                                     : common::LogLevel::kInfo;
  common::WriteLogLine(level,
                       GrpcLogMessage(args->file, args->line, args->message));
}

}  // namespace

std::string GrpcLogMessage(const char* file, int line, const char* message) {
  absl::string_view name = file != nullptr ? file : "?";
  if (const size_t slash = name.rfind('/'); slash != absl::string_view::npos) {
    name.remove_prefix(slash + 1);
  }
  return absl::StrCat("grpc ", name, ":", line, ": ",
                      message != nullptr ? message : "");
}

void RouteGrpcLogs() { gpr_set_log_function(&Write); }

}  // namespace moe::proto
