// MetricsHttpServer: serves a prometheus-cpp registry as Prometheus text on
// GET /metrics, with cpp-httplib on its own thread and a pool of kThreads
// connections at once; a request must arrive within kRequestTimeout (after
// a keep-alive wait of 5 s) or its connection is closed
// (common::ConnectionDeadlines), so that slow senders cannot hold the pool.
//
// prometheus-cpp's civetweb Exposer is not used on purpose: civetweb asks for
// a small fixed thread stack, and the static TLS of LibTorch and OpenBLAS
// does not fit in it ("Cannot create first worker thread"). cpp-httplib's
// threads use the default stack.
#pragma once

#include <prometheus/registry.h>

#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/connection_deadlines.h"

namespace httplib {
class Server;
}

namespace moe::server {

class MetricsHttpServer {
 public:
  static constexpr size_t kThreads = 8;
  static constexpr absl::Duration kRequestTimeout = absl::Seconds(10);

  // Binds host:port (0 picks a free port) and starts serving. `registry` is
  // shared with the code that updates the metrics. A request must arrive
  // within `request_timeout` (kRequestTimeout but in tests).
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& host, int port,
      std::shared_ptr<prometheus::Registry> registry,
      absl::Duration request_timeout = kRequestTimeout);
  ~MetricsHttpServer();

  int port() const { return port_; }

 private:
  MetricsHttpServer() = default;

  std::shared_ptr<prometheus::Registry> registry_;
  // Before http_: its pool's connections report their stages to it.
  std::unique_ptr<common::ConnectionDeadlines> deadlines_;
  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
  int port_ = 0;
};

// The --metrics_port convention of both servers: -1 serves nothing (returns
// null), 0 picks a free port; the port is written to `port_file` if set.
absl::StatusOr<std::unique_ptr<MetricsHttpServer>> StartMetricsEndpoint(
    const std::string& host, int port, const std::string& port_file,
    std::shared_ptr<prometheus::Registry> registry);

// Writes `port` to `path` atomically (shared by the servers' --*_port_file).
absl::Status WritePortFile(const std::string& path, int port);

}  // namespace moe::server
