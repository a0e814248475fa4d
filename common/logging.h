// Minimal leveled logging to stderr, one line per message:
//   2026-11-29T07:46:20.123Z I moe-router: listening on 127.0.0.1:50051
//
// Example:
//   MOE_LOG(INFO) << "loaded " << path << " (" << n << " experts)";
//
// Named MOE_LOG so that it never collides with the LOG macro that LibTorch's
// headers define. Thread-safe: each message is written with one write(2).
#pragma once

#include <sstream>
#include <string>

namespace moe::common {

enum class LogLevel { kInfo, kWarning, kError };

// Sets the program name printed on every line (default: "moe").
void SetLogProgramName(const std::string& name);

// Writes one formatted line to stderr.
void WriteLogLine(LogLevel level, const std::string& message);

class LogMessage {
 public:
  explicit LogMessage(LogLevel level) : level_(level) {}
  ~LogMessage() { WriteLogLine(level_, stream_.str()); }
  LogMessage(const LogMessage&) = delete;
  LogMessage& operator=(const LogMessage&) = delete;
  std::ostream& stream() { return stream_; }

 private:
  LogLevel level_;
  std::ostringstream stream_;
};

}  // namespace moe::common

#define MOE_LOG_LEVEL_INFO ::moe::common::LogLevel::kInfo
#define MOE_LOG_LEVEL_WARNING ::moe::common::LogLevel::kWarning
#define MOE_LOG_LEVEL_ERROR ::moe::common::LogLevel::kError
#define MOE_LOG(level) ::moe::common::LogMessage(MOE_LOG_LEVEL_##level).stream()
