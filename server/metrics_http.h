// MetricsHttpServer: serves a prometheus-cpp registry as Prometheus text on
// GET /metrics, with cpp-httplib on its own thread.
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

namespace httplib {
class Server;
}

namespace moe::server {

class MetricsHttpServer {
 public:
  // Binds host:port (0 picks a free port) and starts serving. `registry` is
  // shared with the code that updates the metrics.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(
      const std::string& host, int port,
      std::shared_ptr<prometheus::Registry> registry);
  ~MetricsHttpServer();

  int port() const { return port_; }

 private:
  MetricsHttpServer() = default;

  std::shared_ptr<prometheus::Registry> registry_;
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
