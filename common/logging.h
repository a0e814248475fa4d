// Minimal leveled logging to stderr, one line per message:
//   2026-11-29T07:46:20.123Z I moe-router: listening on 127.0.0.1:50051
// or, as JSON (SetLogFormat; --log_format=json), one object per line for
// log pipelines (Loki, Elasticsearch, Cloud Logging):
//   {"time":"2026-11-29T07:46:20.123Z","level":"INFO",
//    "program":"moe-router","message":"listening on 127.0.0.1:50051"}
// (one line; broken here to fit).
//
// Example:
//   MOE_LOG(INFO) << "loaded " << path << " (" << n << " experts)";
//
// Named MOE_LOG so that it never collides with the LOG macro that LibTorch's
// headers define. Thread-safe: each message is written with one write(2).
// A message cannot forge a line: its line breaks start indented
// continuation lines, and other control bytes are written escaped (\xNN).
// Strings that come from clients go in through QuoteForLog (bounded).
#pragma once

#include <cstdint>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace moe::common {

enum class LogLevel { kInfo, kWarning, kError };

enum class LogFormat { kText, kJson };

// "text" or "json"; InvalidArgument naming both otherwise.
absl::StatusOr<LogFormat> ParseLogFormat(absl::string_view name);

// Sets the program name printed on every line (default: "moe").
void SetLogProgramName(const std::string& name);

// Sets how every line is written from now on (default: text).
void SetLogFormat(LogFormat format);

// A named value a line carries besides its message ("request_id"): a
// field of its own in JSON lines, for pipelines to filter on; text lines
// show only the message (which names it too).
using LogField = std::pair<std::string, std::string>;

// One line as WriteLogLine writes it, '\n' included. Text: a line break in
// the message starts an indented continuation line and other control bytes
// are escaped (\xNN). JSON: one line whatever the message holds (JSON's own
// escapes; bytes that are not UTF-8 become U+FFFD), `fields` between
// "program" and "message".
std::string FormatLogLine(LogFormat format, LogLevel level,
                          absl::string_view program, absl::Time time,
                          absl::string_view message,
                          const std::vector<LogField>& fields = {});

// Writes one formatted line to stderr.
void WriteLogLine(LogLevel level, const std::string& message,
                  const std::vector<LogField>& fields = {});

// `text` as it may appear in a log line or an error message: quoted, control
// and non-ASCII bytes escaped (\n, \xNN), at most `max_bytes` of it shown
// ("...\" (1048576 bytes)" after a cut).
std::string QuoteForLog(absl::string_view text, size_t max_bytes = 64);

// At most `per_second` lines a second for one kind of event (a refusal,
// say); the first line after a quiet spell says how many were left out.
//
// Example:
//   static LogRateLimiter refusals(10);
//   if (int64_t skipped; refusals.Allow(&skipped)) {
//     MOE_LOG(WARNING) << line << SuppressedNote(skipped);
//   }
//
// Thread-safe.
class LogRateLimiter {
 public:
  explicit LogRateLimiter(int per_second) : per_second_(per_second) {}
  // Whether to log now; *suppressed receives how many were not logged
  // since the last line that was.
  bool Allow(int64_t* suppressed);

 private:
  const int per_second_;
  absl::Mutex mu_;
  absl::Time window_start_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  int in_window_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t suppressed_ ABSL_GUARDED_BY(mu_) = 0;
};

// " (N more like it not logged)", or "" when N is 0.
std::string SuppressedNote(int64_t suppressed);

class LogMessage {
 public:
  explicit LogMessage(LogLevel level) : level_(level) {}
  ~LogMessage() { WriteLogLine(level_, stream_.str(), fields_); }
  LogMessage(const LogMessage&) = delete;
  LogMessage& operator=(const LogMessage&) = delete;
  // Adds a field (LogField); an empty value adds nothing.
  LogMessage& Field(absl::string_view key, absl::string_view value) {
    if (!value.empty()) fields_.emplace_back(key, value);
    return *this;
  }
  std::ostream& stream() { return stream_; }

 private:
  LogLevel level_;
  std::vector<LogField> fields_;
  std::ostringstream stream_;
};

}  // namespace moe::common

#define MOE_LOG_LEVEL_INFO ::moe::common::LogLevel::kInfo
#define MOE_LOG_LEVEL_WARNING ::moe::common::LogLevel::kWarning
#define MOE_LOG_LEVEL_ERROR ::moe::common::LogLevel::kError
#define MOE_LOG(level) ::moe::common::LogMessage(MOE_LOG_LEVEL_##level).stream()
// MOE_LOG with one field (LogField), e.g.
//   MOE_LOG_WITH(WARNING, "request_id", id) << "Forward " << id << " ...";
#define MOE_LOG_WITH(level, key, value) \
  ::moe::common::LogMessage(MOE_LOG_LEVEL_##level).Field(key, value).stream()
