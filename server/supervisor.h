// The process supervision moe-up and the integration tests share: starting
// a program as a child (fork + exec), finding the port it listens on (its
// port file), waiting until it is healthy, and stopping it (SIGTERM, then
// SIGKILL after a grace period).
//
// Example (moe-up, tests/testing/deployment.cc):
//   ChildOptions o;
//   o.argv = {"build/bin/moe-expert", "--port=0", "--port_file=" + file};
//   MOE_ASSIGN_OR_RETURN(auto child, ChildProcess::Start(std::move(o)));
//   MOE_ASSIGN_OR_RETURN(int port, WaitForPortFile(file, deadline,
//                                                  child.get()));
//   MOE_RETURN_IF_ERROR(WaitServing(absl::StrCat("127.0.0.1:", port),
//                                   deadline, *child));
//
// Thread-compatible: one thread drives a child.
#pragma once

#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/security/credentials.h"

namespace moe::server {

struct ChildOptions {
  std::vector<std::string> argv;  // argv[0] is the program's path
  // Where the child's stdout and stderr go; empty: the parent's.
  std::string log_path;
  // Set in the child's environment unless already set there.
  std::vector<std::pair<std::string, std::string>> env_defaults;
  // A process group of its own, so that Ctrl-C in a terminal reaches only
  // the parent, which stops its children in order.
  bool own_process_group = false;
  // The child gets SIGTERM when the parent dies without stopping it.
  bool die_with_parent = false;
  // Destroyed while it runs, the child gets SIGTERM and this long to end
  // before SIGKILL (0: SIGKILL at once). moe-up removes its temporary
  // folder only when it ends on a signal it handles.
  absl::Duration destroy_grace = absl::ZeroDuration();
};

class ChildProcess {
 public:
  // Forks and execs options.argv[0] (the child unblocks every signal);
  // INTERNAL when fork fails. A failed exec shows as exit code 127.
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Start(
      ChildOptions options);
  // Stops (SIGTERM for options.destroy_grace, then SIGKILL) and reaps a
  // child still running.
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  const std::string& log_path() const { return log_path_; }
  // Whether it still runs (reaps it when it exited).
  bool running();
  // "exited with code 1", "was killed by signal 9"; "is running".
  std::string DescribeExit();
  // The exit code (128 + the signal when killed); -1 while it runs.
  int exit_code() const { return exit_code_; }

  void Signal(int sig);
  // SIGSTOP, then waits up to `timeout` until every thread of the child is
  // stopped. kill() only wakes one thread, which stops the others once it
  // runs: on a loaded machine the others may still take calls for a while
  // after kill() returned. False when a thread still runs after `timeout`
  // or the child is gone.
  bool Freeze(absl::Duration timeout = absl::Seconds(10));
  // Whether every thread of the child is stopped (state T in
  // /proc/PID/task/*/stat).
  bool Frozen() const;
  // Waits up to `timeout` for it to end: its exit code, or -1.
  int Wait(absl::Duration timeout);
  // SIGTERM, then SIGKILL when it has not ended after `grace`. Returns
  // false when it had to be killed.
  bool Stop(absl::Duration grace);

  // A memory field of /proc/PID/status in MiB ("VmRSS", "VmHWM": peak);
  // -1 once the process is gone.
  double StatusMiB(const std::string& field) const;
  // What it wrote to log_path.
  std::string Log() const;

 private:
  ChildProcess(pid_t pid, std::string log_path, absl::Duration destroy_grace)
      : pid_(pid),
        log_path_(std::move(log_path)),
        destroy_grace_(destroy_grace) {}
  pid_t pid_;
  std::string log_path_;
  absl::Duration destroy_grace_;
  int exit_code_ = -1;
};

// Reads the port `child` (may be null: any writer) writes to `path` once it
// listens; waits until `deadline`. UNAVAILABLE (with its log) when the
// child exits first, DEADLINE_EXCEEDED when the file never appears,
// CANCELLED when `interrupted` (if set; asked between looks, which it may
// wait in, ~50 ms) returns true.
absl::StatusOr<int> WaitForPortFile(
    const std::string& path, absl::Time deadline, ChildProcess* child,
    const std::function<bool()>& interrupted = nullptr);

// How WaitServing reaches a server.
struct HealthProbe {
  std::shared_ptr<grpc::ChannelCredentials> credentials;  // null: plaintext
  std::string tls_server_name;                            // when not the host
  // Asked between checks (which it may wait in, ~50 ms); true ends the
  // wait with CANCELLED.
  std::function<bool()> interrupted;
};

// Waits until `address` answers health SERVING, until `deadline`.
// UNAVAILABLE when `child` (may be null) exits first, DEADLINE_EXCEEDED
// after the deadline.
absl::Status WaitServing(const std::string& address, absl::Time deadline,
                         ChildProcess* child, const HealthProbe& probe = {});

}  // namespace moe::server
