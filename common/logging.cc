#include "common/logging.h"

#include <unistd.h>

#include <mutex>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace moe::common {
namespace {

std::mutex& NameMutex() {
  static std::mutex mu;
  return mu;
}

std::string& ProgramName() {
  static std::string name = "moe";
  return name;
}

char LevelLetter(LogLevel level) {
  switch (level) {
    case LogLevel::kInfo:
      return 'I';
    case LogLevel::kWarning:
      return 'W';
    case LogLevel::kError:
      return 'E';
  }
  return '?';
}

}  // namespace

void SetLogProgramName(const std::string& name) {
  std::lock_guard<std::mutex> lock(NameMutex());
  ProgramName() = name;
}

void WriteLogLine(LogLevel level, const std::string& message) {
  std::string name;
  {
    std::lock_guard<std::mutex> lock(NameMutex());
    name = ProgramName();
  }
  std::string line = absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(),
                                      absl::UTCTimeZone());
  line += ' ';
  line += LevelLetter(level);
  line += ' ';
  line += name;
  line += ": ";
  line += message;
  line += '\n';
  // One write per line keeps lines from concurrent threads whole.
  size_t done = 0;
  while (done < line.size()) {
    ssize_t n = ::write(STDERR_FILENO, line.data() + done, line.size() - done);
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
}

}  // namespace moe::common
