// ServerRunner: the process plumbing both servers share. It builds a gRPC
// server with the standard health service (grpc.health.v1, under the empty
// name for the process and under each service's name), optional server
// reflection and the RPC metrics interceptor, listens on host:port (port 0
// picks a free one, written to the port file; a busy port is an error, not
// a shared one), optionally a plaintext health-only listener beside a TLS
// one (--health_port), and shuts down gracefully on SIGTERM/SIGINT: health
// turns NOT_SERVING, calls are still served for `drain`, then no new ones
// are taken, in-flight calls get `grace` to finish, and the server stops
// (closing connections left idle, rather than waiting for their clients).
//
// Example (in a main()):
//   moe::server::BlockShutdownSignals();   // before any thread starts
//   MOE_ASSIGN_OR_RETURN(auto runner, ServerRunner::Start(options, {&svc}));
//   runner->SetServing(true);
//   runner->WaitForShutdownSignal();
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proto/tls.h"
#include "server/rpc_metrics.h"

namespace moe::server {

// What a server allows a connection, so that idle, stuck or abusive ones do
// not stay open (docs/security.md, "Connections").
struct ConnectionLimits {
  // A connection without calls is closed (GOAWAY) after this long.
  absl::Duration max_idle = absl::Minutes(5);
  // A connection is asked to close after this long (clients reconnect, which
  // also spreads them over new replicas), and calls still open then get
  // `age_grace` to finish.
  absl::Duration max_age = absl::Minutes(30);
  absl::Duration age_grace = absl::Minutes(1);
  // Calls open at once on one connection.
  int max_concurrent_streams = 256;
  // A connection that has not finished its handshake (TLS, HTTP/2
  // settings) by then is closed.
  absl::Duration handshake_timeout = absl::Seconds(10);
};

// The default memory quota, in messages of the receive limit.
inline constexpr int64_t kMemoryQuotaMessages = 8;

struct ServerOptions {
  std::string host = "0.0.0.0";
  int port = 0;
  std::string port_file;  // Written (atomically) once listening, if set.
  // Message size limits (gRPC takes at most INT_MAX; larger is capped).
  int64_t max_receive_bytes = 64 << 20;
  int64_t max_send_bytes = 64 << 20;
  // The most memory the server's connections may hold, all together, for
  // what they read: messages being received, and those handed to handlers
  // until their calls end (a gRPC ResourceQuota). Past it gRPC cancels
  // streams (RST_STREAM ENHANCE_YOUR_CALM: the caller sees
  // RESOURCE_EXHAUSTED "Received RST_STREAM with error code 11") instead of
  // the process growing until it is killed. 0: kMemoryQuotaMessages times
  // max_receive_bytes. At least two messages of max_receive_bytes.
  int64_t memory_quota_bytes = 0;
  absl::Duration grace = absl::Seconds(10);
  // After the signal: NOT_SERVING but still serving for this long, so that
  // load balancers (a Kubernetes Service's endpoints) stop sending first.
  absl::Duration drain = absl::ZeroDuration();
  // gRPC server reflection; without it no reflection is served (linking
  // gRPC's reflection library registers it for every server otherwise).
  bool reflection = false;
  ConnectionLimits limits;
  // Health names besides "" (the process): "moe.v1.Router", ...
  std::vector<std::string> health_services;
  // TLS or mutual TLS; plaintext (with a warning) when null.
  std::shared_ptr<grpc::ServerCredentials> credentials;
  // The files `credentials` were made of (empty: plaintext), for other
  // listeners of the same process (the router's REST port).
  proto::TlsFiles tls_files;
  // A second, plaintext listener carrying only grpc.health.v1 (for probes
  // that cannot speak TLS): -1 none, 0 a free port. Its port goes to
  // health_port_file when set.
  int health_port = -1;
  std::string health_port_file;
  RpcMetrics* rpc_metrics = nullptr;  // must outlive the runner
  // Called when the server stops taking calls, before it gives those in
  // flight `grace`: services with long-lived streams end them between
  // messages (ModelStreamInfer), rather than serve on until cut at `grace`.
  std::function<void()> on_shutdown;
};

// Blocks SIGTERM and SIGINT in the calling thread and every thread it starts
// later, so that WaitForShutdownSignal() can take them with sigwait, and
// ignores SIGPIPE (a peer gone while an HTTP answer is written). Call first
// thing in main().
void BlockShutdownSignals();

// What a server's main() is: BlockShutdownSignals(), the command line
// (common/cli: --help with `usage`, --version), gRPC's own log lines
// through ours, then `run`, whose status is the exit code (cli::ExitCode).
int ServerMain(int argc, char** argv, const char* program, const char* usage,
               absl::FunctionRef<absl::Status()> run);

// Waits up to `wait` for SIGTERM or SIGINT (blocked, see above) and says
// whether one came (taking it).
bool ShutdownRequested(absl::Duration wait);

class ServerRunner {
 public:
  // `services` must outlive the runner. Health starts NOT_SERVING.
  // Unavailable naming the address when it cannot listen (in use, say).
  static absl::StatusOr<std::unique_ptr<ServerRunner>> Start(
      const ServerOptions& options,
      const std::vector<grpc::Service*>& services);
  ~ServerRunner();

  int port() const { return port_; }
  int health_port() const { return health_port_; }
  std::string address() const;

  // Sets the health status of the process and of every service.
  void SetServing(bool serving);

  // Waits for SIGTERM or SIGINT, then drains and shuts down gracefully.
  // Returns the signal number.
  int WaitForShutdownSignal();
  // What WaitForShutdownSignal() does once signal `sig` came.
  void DrainAndShutdown(int sig);

  // NOT_SERVING, then stop accepting calls and give in-flight ones `grace`.
  // Once no call but health watches has been in flight for 250 ms,
  // connections still open (idle clients that have not answered gRPC's
  // GOAWAY ping) and the watches are closed rather than waited for.
  void Shutdown();

 private:
  ServerRunner(ServerOptions options,
               std::unique_ptr<std::atomic<int64_t>> calls,
               std::unique_ptr<grpc::Server> server, int port);
  absl::Status StartHealthListener();

  ServerOptions options_;
  std::unique_ptr<std::atomic<int64_t>> calls_;  // in flight on server_
  std::unique_ptr<grpc::Server> server_;
  int port_;
  std::unique_ptr<grpc::CallbackGenericService> health_only_;
  std::unique_ptr<grpc::Server> health_server_;  // plaintext, health only
  int health_port_ = 0;
  bool shut_down_ = false;
};

}  // namespace moe::server
