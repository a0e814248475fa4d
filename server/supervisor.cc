#include "server/supervisor.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "proto/health_check.h"

namespace moe::server {
namespace {

// In the child, between fork and exec: only async-signal-safe calls, and
// the setenv that precedes exec.
[[noreturn]] void ExecChild(const ChildOptions& o) {
  if (!o.log_path.empty()) {
    FILE* f = std::fopen(o.log_path.c_str(), "w");
    if (f != nullptr) {
      ::dup2(fileno(f), STDOUT_FILENO);
      ::dup2(fileno(f), STDERR_FILENO);
    }
  }
  // The parent may block SIGTERM/SIGINT to take them with sigwait.
  sigset_t set;
  sigemptyset(&set);
  pthread_sigmask(SIG_SETMASK, &set, nullptr);
  if (o.own_process_group) setpgid(0, 0);
  if (o.die_with_parent) prctl(PR_SET_PDEATHSIG, SIGTERM);
  for (const auto& [name, value] : o.env_defaults) {
    ::setenv(name.c_str(), value.c_str(), /*overwrite=*/0);
  }
  std::vector<char*> args;
  for (const std::string& a : o.argv)
    args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  ::execv(args[0], args.data());
  std::perror(("exec " + o.argv[0]).c_str());
  std::_Exit(127);
}

}  // namespace

absl::StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Start(
    ChildOptions options) {
  if (options.argv.empty()) {
    return absl::InvalidArgumentError("no program to start");
  }
  const pid_t pid = ::fork();
  if (pid < 0) {
    return absl::InternalError(
        absl::StrCat("fork failed for ", options.argv[0]));
  }
  if (pid == 0) ExecChild(options);
  return std::unique_ptr<ChildProcess>(new ChildProcess(
      pid, std::move(options.log_path), options.destroy_grace));
}

ChildProcess::~ChildProcess() {
  // A frozen child cannot take SIGTERM: it goes straight to SIGKILL.
  if (destroy_grace_ > absl::ZeroDuration() && running() && !Frozen()) {
    Stop(destroy_grace_);
  }
  if (running()) {
    ::kill(pid_, SIGCONT);  // a stopped child takes SIGKILL too, but say so
    ::kill(pid_, SIGKILL);
    Wait(absl::Seconds(10));
  }
}

bool ChildProcess::running() {
  if (exit_code_ >= 0 || pid_ <= 0) return false;
  int status = 0;
  if (::waitpid(pid_, &status, WNOHANG) == pid_) {
    exit_code_ =
        WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return false;
  }
  return true;
}

std::string ChildProcess::DescribeExit() {
  if (running()) return "is running";
  if (exit_code_ > 128) {
    return absl::StrCat("was killed by signal ", exit_code_ - 128);
  }
  return absl::StrCat("exited with code ", exit_code_);
}

void ChildProcess::Signal(int sig) {
  if (running()) ::kill(pid_, sig);
}

bool ChildProcess::Frozen() const {
  std::error_code error;
  std::filesystem::directory_iterator tasks(
      absl::StrCat("/proc/", pid_, "/task"), error);
  if (error) return false;
  int threads = 0;
  for (const auto& task : tasks) {
    std::ifstream in(task.path() / "stat");
    std::string stat((std::istreambuf_iterator<char>(in)),
                     std::istreambuf_iterator<char>());
    // "TID (comm) STATE ...": comm may hold spaces and parentheses.
    const size_t close = stat.rfind(')');
    if (close == std::string::npos || close + 2 >= stat.size()) continue;
    const char state = stat[close + 2];
    if (state != 'T' && state != 't') return false;
    ++threads;
  }
  return threads > 0;
}

bool ChildProcess::Freeze(absl::Duration timeout) {
  if (!running()) return false;
  ::kill(pid_, SIGSTOP);
  const absl::Time deadline = absl::Now() + timeout;
  while (!Frozen()) {
    if (absl::Now() > deadline || !running()) return false;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return true;
}

int ChildProcess::Wait(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  // waitpid cannot wait with a timeout: poll, briefly.
  while (running()) {
    if (absl::Now() > deadline) return -1;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return exit_code_;
}

bool ChildProcess::Stop(absl::Duration grace) {
  if (!running()) return true;
  ::kill(pid_, SIGTERM);
  if (Wait(grace) >= 0) return true;
  ::kill(pid_, SIGKILL);
  Wait(absl::Seconds(10));
  return false;
}

double ChildProcess::StatusMiB(const std::string& field) const {
  std::ifstream in(absl::StrCat("/proc/", pid_, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) != 0) continue;
    absl::string_view v = absl::StripAsciiWhitespace(absl::StripSuffix(
        absl::string_view(line).substr(field.size() + 1), "kB"));
    double kb = 0;
    if (absl::SimpleAtod(v, &kb)) return kb / 1024;
  }
  return -1;
}

std::string ChildProcess::Log() const {
  std::ifstream in(log_path_);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

namespace {

// Between two looks: `interrupted` (which may wait), or a short sleep.
bool Pause(const std::function<bool()>& interrupted) {
  if (interrupted) return interrupted();
  absl::SleepFor(absl::Milliseconds(20));
  return false;
}

}  // namespace

absl::StatusOr<int> WaitForPortFile(const std::string& path,
                                    absl::Time deadline, ChildProcess* child,
                                    const std::function<bool()>& interrupted) {
  for (;;) {
    std::ifstream in(path);
    std::string text;
    int port = 0;
    if ((in >> text) && absl::SimpleAtoi(text, &port)) return port;
    if (child != nullptr && !child->running()) {
      return absl::UnavailableError(
          absl::StrCat("it ", child->DescribeExit(), " before writing ", path,
                       child->log_path().empty() ? "" : ":\n", child->Log()));
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrCat("no port file ", path));
    }
    if (Pause(interrupted)) return absl::CancelledError("interrupted");
  }
}

absl::Status WaitServing(const std::string& address, absl::Time deadline,
                         ChildProcess* child, const HealthProbe& probe) {
  for (;;) {
    auto health = proto::CheckHealth(address, absl::Milliseconds(500), "",
                                     probe.credentials, probe.tls_server_name);
    if (health.ok() &&
        *health == grpc::health::v1::HealthCheckResponse::SERVING) {
      return absl::OkStatus();
    }
    if (child != nullptr && !child->running()) {
      return absl::UnavailableError(
          absl::StrCat("it ", child->DescribeExit(), " before serving"));
    }
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat(address, " not SERVING in time"));
    }
    if (Pause(probe.interrupted)) return absl::CancelledError("interrupted");
  }
}

}  // namespace moe::server
