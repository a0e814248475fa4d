#include "common/logging.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace moe::common {
namespace {

// Never destroyed: gRPC's threads may still log (proto/grpc_logging.h)
// while the process exits.
std::mutex& NameMutex() {
  static std::mutex* mu = new std::mutex;
  return *mu;
}

std::string& ProgramName() {
  static std::string* name = new std::string("moe");
  return *name;
}

std::atomic<LogFormat>& Format() {
  static std::atomic<LogFormat> format{LogFormat::kText};
  return format;
}

const char* LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kInfo:
      return "INFO";
    case LogLevel::kWarning:
      return "WARNING";
    case LogLevel::kError:
      return "ERROR";
  }
  return "?";
}

}  // namespace

void SetLogProgramName(const std::string& name) {
  std::lock_guard<std::mutex> lock(NameMutex());
  ProgramName() = name;
}

absl::StatusOr<LogFormat> ParseLogFormat(absl::string_view name) {
  if (name == "text") return LogFormat::kText;
  if (name == "json") return LogFormat::kJson;
  return absl::InvalidArgumentError(
      absl::StrCat("log format must be text or json, not ", QuoteForLog(name)));
}

void SetLogFormat(LogFormat format) { Format().store(format); }

std::string FormatLogLine(LogFormat format, LogLevel level,
                          absl::string_view program, absl::Time time,
                          absl::string_view message,
                          const std::vector<LogField>& fields) {
  const std::string stamp =
      absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", time, absl::UTCTimeZone());
  if (format == LogFormat::kJson) {
    nlohmann::ordered_json line = {{"time", stamp},
                                   {"level", LevelName(level)},
                                   {"program", std::string(program)}};
    for (const auto& [key, value] : fields) line[key] = value;
    line["message"] = std::string(message);
    return line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) +
           "\n";
  }
  std::string line = stamp;
  line += ' ';
  line += LevelName(level)[0];  // I, W, E
  line += ' ';
  line.append(program.data(), program.size());
  line += ": ";
  // No byte of the message can start a line of its own.
  for (const char c : message) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '\n') {
      line += "\n    ";
    } else if (u < 0x20 && c != '\t') {
      static const char kHex[] = "0123456789abcdef";
      line += "\\x";
      line += kHex[u >> 4];
      line += kHex[u & 15];
    } else {
      line += c;
    }
  }
  line += '\n';
  return line;
}

void WriteLogLine(LogLevel level, const std::string& message,
                  const std::vector<LogField>& fields) {
  std::string name;
  {
    std::lock_guard<std::mutex> lock(NameMutex());
    name = ProgramName();
  }
  const std::string line =
      FormatLogLine(Format().load(), level, name, absl::Now(), message, fields);
  // One write per line keeps lines from concurrent threads whole.
  size_t done = 0;
  while (done < line.size()) {
    ssize_t n = ::write(STDERR_FILENO, line.data() + done, line.size() - done);
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
}

std::string QuoteForLog(absl::string_view text, size_t max_bytes) {
  static const char kHex[] = "0123456789abcdef";
  std::string out = "\"";
  const size_t shown = std::min(text.size(), max_bytes);
  for (size_t i = 0; i < shown; ++i) {
    const auto u = static_cast<unsigned char>(text[i]);
    if (text[i] == '"' || text[i] == '\\') {
      out += '\\';
      out += text[i];
    } else if (text[i] == '\n') {
      out += "\\n";
    } else if (u < 0x20 || u >= 0x7f) {
      out += "\\x";
      out += kHex[u >> 4];
      out += kHex[u & 15];
    } else {
      out += text[i];
    }
  }
  if (shown < text.size()) {
    out += "...\" (" + std::to_string(text.size()) + " bytes)";
  } else {
    out += '"';
  }
  return out;
}

bool LogRateLimiter::Allow(int64_t* suppressed) {
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&mu_);
  if (now - window_start_ >= absl::Seconds(1)) {
    window_start_ = now;
    in_window_ = 0;
  }
  if (in_window_ >= per_second_) {
    ++suppressed_;
    return false;
  }
  ++in_window_;
  *suppressed = suppressed_;
  suppressed_ = 0;
  return true;
}

std::string SuppressedNote(int64_t suppressed) {
  return suppressed == 0
             ? std::string()
             : " (" + std::to_string(suppressed) + " more like it not logged)";
}

}  // namespace moe::common
