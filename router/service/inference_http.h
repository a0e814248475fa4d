// The Open Inference Protocol's REST form (HTTP/1.1, JSON) on its own port:
//   GET  /v2                                    server metadata
//   GET  /v2/health/live, /v2/health/ready      200, or 400 when not ready
//   GET  /v2/models/{m}[/versions/{v}]          model metadata
//   GET  /v2/models/{m}[/versions/{v}]/ready    200, or 400 when not ready
//   POST /v2/models/{m}[/versions/{v}]/infer    inference
//   POST /v2/repository/index                   every model and its state
//                                               (Triton's and MLServer's
//                                               repository index, read-only)
// Bodies are parsed into the gRPC messages (router/api/open_inference_json.h)
// and served like ModelInfer, through RouterService::Serve: the same token
// ("Authorization: Bearer ..."; the health paths need none), admission,
// logs and metrics, and the same bits of y. Errors are {"error": "..."}
// with 400 (bad request), 401 (token), 404 (model or version), 429
// (overload), 503 (not ready, degraded), 504 (deadline), 500 (other). A body
// over `max_body_bytes` is refused with 413 before it is parsed. One thread
// per open connection, from a pool of `Options::threads`; a request that
// takes longer than `Options::request_timeout` to arrive ends its
// connection (common::ConnectionDeadlines), so slow senders cannot hold them
// all. With TLS files it serves HTTPS (and requires client certificates when
// given a CA), as the gRPC port does, and takes changed files without a
// restart.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/connection_deadlines.h"
#include "proto/tls.h"
#include "router/service/router_metrics.h"
#include "router/service/router_service.h"

namespace httplib {
class Server;
}

namespace moe::router {

class InferenceHttpServer {
 public:
  static constexpr int kMaxThreads = 4096;

  struct Options {
    // A body over this many bytes is refused (413) before it is read.
    int64_t max_body_bytes = 64 << 20;
    // The bytes of infer bodies held at once (read or being served); one
    // that does not fit beside them is refused (429) and its bytes dropped
    // as they arrive. 0: twice `max_body_bytes`. Also caps the body limit.
    int64_t max_bytes_in_flight = 0;
    // Connections served at once. Each open connection holds one of these
    // threads while it is open, an idle keep-alive one for at most
    // `keep_alive`; a connection beyond them waits (in the accept queue)
    // for one.
    int threads = 64;
    // How long a connection may sit idle, before its first request or
    // between two, before the router closes it.
    absl::Duration keep_alive = absl::Seconds(5);
    // How long a request may take to arrive, however steadily its bytes
    // come: its head (after the keep-alive wait, and the write of the
    // answer before it) within this long, its body within this long plus
    // one second per MiB of it. A connection past it is closed
    // (common::ConnectionDeadlines).
    absl::Duration request_timeout = absl::Seconds(30);
    // HTTPS with this certificate and key, client certificates of its CA
    // required when one is set; plaintext when no certificate is given.
    // The files are re-read when they change (every `refresh_seconds` at
    // most), as the gRPC port's are.
    proto::TlsFiles tls;
    // Body bytes held and connections served or waiting are reported here
    // (none when null); it must outlive the server.
    RouterMetrics* metrics = nullptr;
  };

  // Listens on host:port (0 picks a free one). `router` must outlive it.
  static absl::StatusOr<std::unique_ptr<InferenceHttpServer>> Start(
      const std::string& host, int port, RouterService* router,
      const Options& options);
  // Stops listening and waits for the requests in progress.
  ~InferenceHttpServer();

  int port() const { return port_; }

 private:
  InferenceHttpServer() = default;

  // Before http_: its TLS contexts call into it until they are freed.
  std::unique_ptr<proto::ServerTlsReloader> tls_;
  // Before http_: its pool's connections report their stages to it.
  std::unique_ptr<common::ConnectionDeadlines> deadlines_;
  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
  int port_ = 0;
};

}  // namespace moe::router
