#include "server/metrics_http.h"

#include <httplib.h>
#include <prometheus/text_serializer.h>

#include <cstdio>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"

namespace moe::server {
namespace {

using common::ConnectionDeadlines;

// httplib's pool, each connection under the deadlines.
class DeadlinePool final : public httplib::TaskQueue {
 public:
  DeadlinePool(size_t threads, ConnectionDeadlines* deadlines)
      : pool_(threads), deadlines_(deadlines) {}
  void enqueue(std::function<void()> connection) override {
    pool_.enqueue(deadlines_->Track(std::move(connection)));
  }
  void shutdown() override { pool_.shutdown(); }

 private:
  httplib::ThreadPool pool_;
  ConnectionDeadlines* const deadlines_;
};

}  // namespace

absl::Status WritePortFile(const std::string& path, int port) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp);
    out << port << "\n";
    if (!out) return absl::PermissionDeniedError("cannot write " + path);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::PermissionDeniedError("cannot write " + path);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const std::string& host, int port,
    std::shared_ptr<prometheus::Registry> registry,
    absl::Duration request_timeout) {
  auto server = std::unique_ptr<MetricsHttpServer>(new MetricsHttpServer());
  server->registry_ = std::move(registry);
  server->http_ = std::make_unique<httplib::Server>();
  std::weak_ptr<prometheus::Registry> weak = server->registry_;
  server->http_->Get(
      "/metrics", [weak](const httplib::Request&, httplib::Response& res) {
        ConnectionDeadlines::Serving();
        std::shared_ptr<prometheus::Registry> r = weak.lock();
        if (!r) {
          res.status = 503;
          return;
        }
        prometheus::TextSerializer serializer;
        res.set_content(serializer.Serialize(r->Collect()),
                        "text/plain; version=0.0.4; charset=utf-8");
      });
  if (port == 0) {
    server->port_ = server->http_->bind_to_any_port(host);
  } else if (server->http_->bind_to_port(host, port)) {
    server->port_ = port;
  }
  if (server->port_ <= 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen for /metrics on ", host, ":", port));
  }
  // A scrape must arrive within the timeout (after the 5 s keep-alive), so
  // that slow senders cannot hold the pool's threads from Prometheus.
  ConnectionDeadlines::Options deadlines;
  deadlines.head = absl::Seconds(5) + request_timeout;
  deadlines.body = request_timeout;
  deadlines.on_cut = [](const ConnectionDeadlines::Cut& cut) {
    static common::LogRateLimiter* logs = new common::LogRateLimiter(10);
    if (int64_t skipped = 0; logs->Allow(&skipped)) {
      MOE_LOG(WARNING) << "/metrics: closed the connection from " << cut.peer
                       << ": " << cut.why << common::SuppressedNote(skipped);
    }
  };
  MOE_ASSIGN_OR_RETURN(
      server->deadlines_,
      ConnectionDeadlines::Start(server->port_, std::move(deadlines)));
  httplib::Server* http = server->http_.get();
  ConnectionDeadlines* tracked = server->deadlines_.get();
  http->new_task_queue = [tracked] {
    return new DeadlinePool(kThreads, tracked);
  };
  http->set_pre_routing_handler(
      [](const httplib::Request& req, httplib::Response& res) {
        // Only GET: httplib 0.11 would read the body of any other method,
        // without a Content-Length until the client closed.
        if (req.method != "GET" && req.method != "HEAD") {
          res.status = 405;
          res.set_header("Allow", "GET, HEAD");
          res.set_content("only GET /metrics\n", "text/plain");
          return httplib::Server::HandlerResponse::Handled;
        }
        ConnectionDeadlines::BodyNext(0);
        return httplib::Server::HandlerResponse::Unhandled;
      });
  http->set_post_routing_handler(
      [](const httplib::Request&, httplib::Response&) {
        ConnectionDeadlines::Answered();
      });
  server->thread_ = std::thread([http] { http->listen_after_bind(); });
  return server;
}

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> StartMetricsEndpoint(
    const std::string& host, int port, const std::string& port_file,
    std::shared_ptr<prometheus::Registry> registry) {
  if (port < 0) return std::unique_ptr<MetricsHttpServer>();
  absl::StatusOr<std::unique_ptr<MetricsHttpServer>> server =
      MetricsHttpServer::Start(host, port, std::move(registry));
  if (!server.ok()) return server.status();
  if (!port_file.empty()) {
    absl::Status status = WritePortFile(port_file, (*server)->port());
    if (!status.ok()) return status;
  }
  return server;
}

MetricsHttpServer::~MetricsHttpServer() {
  if (http_) http_->stop();
  // Idle keep-alive connections (a scraper's) end now, not at their
  // keep-alive's end.
  if (deadlines_) deadlines_->CloseIdle();
  if (thread_.joinable()) thread_.join();
}

}  // namespace moe::server
