#include "router/service/inference_http.h"

#include <httplib.h>

#include <algorithm>
#include <ctime>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/logging.h"
#include "common/request_id.h"
#include "common/status_macros.h"
#include "moe_version.h"
#include "router/api/open_inference.h"
#include "router/api/open_inference_json.h"
#include "router/service/inference_service.h"

namespace moe::router {

using common::ConnectionDeadlines;

namespace {

// The request ID's header (common::kRequestIdKey, as HTTP spells it).
constexpr char kRequestIdHeader[] = "X-Request-Id";

constexpr char kJson[] = "application/json";
// The bytes of an infer body's JSON when binary tensor data follows it.
constexpr char kJsonLength[] = "Inference-Header-Content-Length";
// The path of a model, and of its version when given.
constexpr char kModel[] = R"(/v2/models/([^/]+)(?:/versions/([^/]+))?)";
// A body over the limit whose length is at most this many times the limit
// is read and dropped before its 413, so that a client that sends its
// whole body before it reads the answer (Python's http.client and
// requests do) reads the 413: answered from the head, such a client hung
// until its own timeout (httplib keeps the connection after a handler's
// "Connection: close" and took the body for the next request's head).
constexpr int64_t kDrainFactor = 4;

int HttpCode(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return 200;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
      return 400;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kCancelled:
      return 503;
    case absl::StatusCode::kDeadlineExceeded:
      return 504;
    default:
      return 500;
  }
}

void Reply(httplib::Response& res, const absl::Status& status) {
  res.status = HttpCode(status.code());
  res.set_content(ErrorJson(status.message()), kJson);
}

std::string Version(const httplib::Request& req) {
  return req.matches.size() > 2 ? std::string(req.matches[2]) : std::string();
}

// The layer of the request's model, or the error that answers it.
absl::StatusOr<int> Model(const RouterService& router,
                          const httplib::Request& req) {
  const ModelEngine& model = router.runner().model();
  return FindOipModel(model.spec(), model.fingerprint(),
                      std::string(req.matches[1]), Version(req));
}

absl::Status Authorize(const RouterService& router,
                       const httplib::Request& req) {
  return router.Authorize(req.get_header_value("Authorization"));
}

// GET of a description that needs the token: `of(router, request)`, the
// request naming the path's model and version (none on a path without
// one), answered as `to_json` writes it.
template <typename Request, typename Of, typename ToJson>
httplib::Server::Handler TokenGet(RouterService* router, Of of,
                                  ToJson to_json) {
  return [router, of, to_json](const httplib::Request& req,
                               httplib::Response& res) {
    absl::Status status = Authorize(*router, req);
    if (!status.ok()) return Reply(res, status);
    Request request;
    if (req.matches.size() > 1) {
      request.set_name(std::string(req.matches[1]));
      request.set_version(Version(req));
    }
    auto answer = of(*router, request);
    if (!answer.ok()) return Reply(res, answer.status());
    res.set_content(to_json(*answer), kJson);
  };
}

// The most bytes a repository index request's body may have.
constexpr size_t kMaxIndexBody = 4096;

// The bytes of the infer bodies held at once, from before a body is read
// until its answer is made: with the threads' count alone, 64 bodies
// of up to the body limit each could be held.
class BodyBudget {
 public:
  BodyBudget(int64_t limit, RouterMetrics* metrics)
      : limit_(limit), metrics_(metrics) {}

  // `bytes` held from Take (which makes it) until the hold ends.
  class Hold {
   public:
    Hold(BodyBudget* budget, int64_t bytes) : budget_(budget), bytes_(bytes) {}
    Hold(const Hold&) = delete;
    Hold& operator=(const Hold&) = delete;
    ~Hold() {
      {
        absl::MutexLock lock(&budget_->mu_);
        budget_->held_ -= bytes_;
      }
      budget_->metrics_->AddRestBodyBytes(-bytes_);
    }

   private:
    BodyBudget* const budget_;
    const int64_t bytes_;
  };

  // Holds `bytes` in `*hold`; RESOURCE_EXHAUSTED (and nothing held) when
  // they do not fit beside the bodies held now.
  absl::Status Take(int64_t bytes, std::optional<Hold>* hold) {
    absl::MutexLock lock(&mu_);
    if (held_ + bytes > limit_) {
      return absl::ResourceExhaustedError(
          absl::StrCat("REST bodies held now: ", held_, " bytes; this one's ",
                       bytes, " would pass the limit of ", limit_,
                       " (--http_max_bytes_in_flight); retry later"));
    }
    held_ += bytes;
    hold->emplace(this, bytes);
    metrics_->AddRestBodyBytes(bytes);
    return absl::OkStatus();
  }

 private:
  const int64_t limit_;
  RouterMetrics* const metrics_;
  absl::Mutex mu_;
  int64_t held_ ABSL_GUARDED_BY(mu_) = 0;
};

// httplib's thread pool, counting the connections it serves and those
// waiting for one of its threads, and putting each under `deadlines`.
class CountedThreadPool final : public httplib::TaskQueue {
 public:
  CountedThreadPool(size_t threads, RouterMetrics* metrics,
                    ConnectionDeadlines* deadlines)
      : pool_(threads), metrics_(metrics), deadlines_(deadlines) {}

  void enqueue(std::function<void()> connection) override {
    metrics_->AddRestConnections(0, 1);
    pool_.enqueue(
        [this, connection = deadlines_->Track(std::move(connection))] {
          metrics_->AddRestConnections(1, -1);
          connection();
          metrics_->AddRestConnections(-1, 0);
        });
  }
  // Serves the connections still waiting, then joins the threads.
  void shutdown() override { pool_.shutdown(); }

 private:
  httplib::ThreadPool pool_;
  RouterMetrics* const metrics_;
  ConnectionDeadlines* const deadlines_;
};

// How a request's body is encoded: as it is; compressed in a way httplib
// inflates as it reads (Content-Encoding: gzip, deflate or br), so that its
// length on the wire says nothing of its size; or in another way, which
// httplib would hand over as it is.
enum class BodyEncoding { kIdentity, kInflated, kUnsupported };

BodyEncoding EncodingOf(const httplib::Request& req) {
  const std::string encoding = req.get_header_value("Content-Encoding");
  if (encoding.empty() || encoding == "identity") {
    return BodyEncoding::kIdentity;
  }
  if (encoding == "gzip" || encoding == "deflate" || encoding == "br") {
    return BodyEncoding::kInflated;
  }
  return BodyEncoding::kUnsupported;
}

bool Chunked(const httplib::Request& req) {
  return req.get_header_value("Transfer-Encoding").find("chunked") !=
         std::string::npos;
}

// The body a request's head announces, for its deadline: its
// Content-Length (0 when it has none or no number; at most what is read of
// a body over the limit, `kDrainFactor` times it), or `max_body` when it
// comes in chunks.
int64_t AnnouncedBody(const httplib::Request& req, int64_t max_body) {
  if (Chunked(req)) return max_body;
  uint64_t length = 0;
  if (!absl::SimpleAtoi(req.get_header_value("Content-Length"), &length)) {
    return 0;
  }
  return static_cast<int64_t>(
      std::min(length, static_cast<uint64_t>(kDrainFactor * max_body)));
}

// The most bytes of a request's head (its line and header fields) the REST
// port takes. A head past it that arrives whole is answered 431; one that
// keeps coming is cut once past it (ConnectionDeadlines, which checks every
// 100 ms: httplib takes any number of header lines).
constexpr int64_t kMaxHeadBytes = 64 << 10;

// A request's head as it came: its bytes (its line and its fields, each
// with its CRLF) and its fields (not those httplib adds itself, such as
// REMOTE_ADDR).
struct HeadSize {
  int64_t bytes = 0;
  int fields = 0;
};
HeadSize HeadSizeOf(const httplib::Request& req) {
  HeadSize head;
  head.bytes = static_cast<int64_t>(req.method.size() + req.target.size() +
                                    req.version.size() + 4 + 2);
  for (const auto& [name, value] : req.headers) {
    if (name == "REMOTE_ADDR" || name == "REMOTE_PORT" ||
        name == "LOCAL_ADDR" || name == "LOCAL_PORT") {
      continue;
    }
    head.bytes += static_cast<int64_t>(name.size() + value.size() + 4);
    ++head.fields;
  }
  return head;
}

// A request of a method httplib reads a body for (POST, PUT, PATCH,
// DELETE) whose head gives it no length: httplib 0.11 would read it until
// the client closed the connection, so a `curl -X POST` without data waited
// for the body deadline and got no answer.
bool BodyWithoutLength(const httplib::Request& req) {
  const bool has_body = req.method == "POST" || req.method == "PUT" ||
                        req.method == "PATCH" || req.method == "DELETE" ||
                        req.method == "PRI";
  return has_body && !req.has_header("Content-Length") && !Chunked(req);
}

// The caller's request ID when usable, else its traceparent's trace ID,
// else a new one (the body's `id`, once read, comes before the trace): in
// the answer's headers whatever it says, and in the logs.
std::string RequestId(const httplib::Request& req, httplib::Response& res) {
  std::string request_id =
      common::RequestIdOrNew(req.get_header_value(kRequestIdHeader), {},
                             req.get_header_value(common::kTraceparentKey));
  res.set_header(kRequestIdHeader, request_id);
  return request_id;
}

// How long a connection closed by a refusal waits for its client's next
// byte before it closes (Apache's lingering close waits 2 s per read).
constexpr absl::Duration kLingerQuiet = absl::Seconds(2);

// A refusal that closes the connection (413 from the head, 411, 431, a
// body that inflates past the limit), just before it is written: its
// bytes are written by a content provider that then reads and drops what
// the client still sends (ConnectionDeadlines::Linger), until the client
// closes or pauses for `kLingerQuiet`, for at most `linger` in all, so
// that a client still sending the body reads the answer rather than a
// reset ("broken pipe" in curl one time in three, for a 3 GB body; a
// client that sends all of its body before it reads, as Python's
// http.client does, never read the 413 of a body over 4x the limit).
void LingerAfterRefusal(absl::Duration linger, httplib::Response& res) {
  if (res.status < 400 || res.body.empty() ||
      res.get_header_value("Connection") != "close") {
    return;
  }
  // httplib has set Content-Length from the body; the provider writes the
  // same bytes.
  auto body = std::make_shared<std::string>(std::move(res.body));
  res.body.clear();
  res.content_length_ = body->size();
  res.content_provider_ = [body, linger](size_t offset, size_t length,
                                         httplib::DataSink& sink) {
    sink.write(body->data() + offset, length);
    ConnectionDeadlines::Linger(std::min(kLingerQuiet, linger), linger);
    return true;
  };
}

// 413 for a body of `length` bytes.
void TooLarge(int64_t length, int64_t max_body, httplib::Response& res) {
  res.status = 413;
  res.set_content(
      ErrorJson(absl::StrCat("the body (", length,
                             " bytes) is larger than this router takes (",
                             max_body, ")")),
      kJson);
}

// The bytes an infer body may hold: its declared length, or without one
// (chunked) as many as the limit allows, in `*declared`. A length that is
// no number, or over `drain` (4 x the limit on the infer path, the limit
// itself where the client asked before sending: Expect), is answered here
// (true), from the head, with "Connection: close" (httplib would read and
// drop all of the body first, up to 2^64 bytes for a length of -1). A
// length over the limit but within `drain` sets `*too_large`: the body is
// to be read, dropped and answered with `TooLarge`.
bool RefusedByLength(const httplib::Request& req, int64_t max_body,
                     int64_t drain, int64_t* declared, bool* too_large,
                     httplib::Response& res) {
  *declared = max_body;
  *too_large = false;
  if (!req.has_header("Content-Length")) return false;
  uint64_t length = 0;
  if (!absl::SimpleAtoi(req.get_header_value("Content-Length"), &length)) {
    res.set_header("Connection", "close");
    Reply(res, absl::InvalidArgumentError("Content-Length: not a size"));
    return true;
  }
  if (length <= static_cast<uint64_t>(max_body)) {
    *declared = static_cast<int64_t>(length);
    return false;
  }
  TooLarge(static_cast<int64_t>(
               std::min<uint64_t>(length, std::numeric_limits<int64_t>::max())),
           max_body, res);
  if (length > static_cast<uint64_t>(drain)) {
    res.set_header("Connection", "close");
    return true;
  }
  *too_large = true;
  return false;
}

// POST .../infer: the body as a ModelInferRequest, served and answered.
// `request_id` names it in the logs. `status` is the edge's verdict so far
// (token, budget); when it is not OK the body was not kept and the call is
// refused (and counted) with it.
void Infer(RouterService& router, const httplib::Request& req,
           const std::string& body, std::string request_id, absl::Status status,
           httplib::Response& res) {
  const ModelEngine& model = router.runner().model();
  OipInferRequest asked;
  RestInferRequest rest;
  std::string model_name;
  inference::ModelInferResponse answer;
  std::string id;
  if (status.ok()) {
    absl::StatusOr<int> layer = Model(router, req);
    absl::StatusOr<RestInferRequest> request =
        layer.ok()
            ? ModelInferFromJson(body, req.get_header_value(kJsonLength),
                                 std::string(req.matches[1]), Version(req))
            : absl::StatusOr<RestInferRequest>(layer.status());
    absl::StatusOr<OipInferRequest> translated =
        request.ok() ? FromModelInfer(request->request, model.spec(), *layer)
                     : absl::StatusOr<OipInferRequest>(request.status());
    if (translated.ok()) {
      asked = std::move(*translated);
      model_name = OipModelName(model.spec(), *layer);
      rest = *std::move(request);
      id = rest.request.id();
      // Without a usable X-Request-Id the body's own `id` names the call
      // when it can (as Triton's request ID does).
      if (!common::UsableRequestId(req.get_header_value(kRequestIdHeader)) &&
          common::UsableRequestId(id)) {
        request_id = id;
        res.headers.erase(kRequestIdHeader);
        res.set_header(kRequestIdHeader, request_id);
      }
    }
    status = translated.status();
  }
  absl::Notification done;
  absl::Status outcome;
  RouterService::Job job(
      router.clock()->Now(), absl::InfiniteFuture(),
      absl::StrCat("http:", req.remote_addr, ":", req.remote_port),
      std::move(request_id), req.get_header_value(common::kTraceparentKey),
      "REST infer", Protocol::kOipRest, [] { return false; },
      [&]() -> absl::Status {
        absl::StatusOr<inference::ModelInferResponse> r =
            ToModelInfer(&job.response, asked, model_name, model.fingerprint(),
                         id, router.clock()->Now() >= job.deadline());
        if (!r.ok()) return r.status();
        answer = std::move(*r);
        return absl::OkStatus();
      },
      [&](absl::Status s) {
        outcome = std::move(s);
        done.Notify();
      });
  job.LimitTime(asked.timeout);
  job.request = std::move(asked.forward);
  router.Serve(&job, std::move(status));
  done.WaitForNotification();
  if (!outcome.ok()) return Reply(res, outcome);
  RestInferAnswer written = ModelInferToJson(answer, &rest);
  // Moved, not copied (httplib's set_content copies): y may be megabytes.
  res.body = std::move(written.body);
  if (written.json_length < 0) {
    res.set_header("Content-Type", kJson);
    return;
  }
  res.set_header("Content-Type", "application/octet-stream");
  res.set_header(kJsonLength, absl::StrCat(written.json_length));
}

}  // namespace

absl::StatusOr<std::unique_ptr<InferenceHttpServer>> InferenceHttpServer::Start(
    const std::string& host, int port, RouterService* router,
    const Options& options) {
  if (options.threads < 1 || options.threads > kMaxThreads) {
    return absl::InvalidArgumentError(
        absl::StrCat("REST: threads (--http_threads) must be 1 to ",
                     kMaxThreads, ", not ", options.threads));
  }
  if (options.keep_alive < absl::Seconds(1) || options.max_body_bytes < 1 ||
      options.max_bytes_in_flight < 0) {
    return absl::InvalidArgumentError(
        "REST: keep-alive must be at least 1 s, the body limit positive and "
        "the bytes in flight (--http_max_bytes_in_flight) 0 or more");
  }
  if (options.request_timeout < absl::Seconds(1) ||
      options.request_timeout > absl::Hours(1)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "REST: the request timeout (--http_request_timeout_s) must be 1 s to "
        "1 h, not ",
        absl::FormatDuration(options.request_timeout)));
  }
  const proto::TlsFiles& tls = options.tls;
  auto server = std::unique_ptr<InferenceHttpServer>(new InferenceHttpServer());
  if (tls.cert_file.empty()) {
    server->http_ = std::make_unique<httplib::Server>();
  } else {
    absl::StatusOr<std::unique_ptr<proto::ServerTlsReloader>> reloader =
        proto::ServerTlsReloader::Create(tls);
    if (!reloader.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("REST (--http_port): ", reloader.status().message()));
    }
    server->tls_ = *std::move(reloader);
    proto::ServerTlsReloader* files = server->tls_.get();
    auto https = std::make_unique<httplib::SSLServer>(
        [files](SSL_CTX& ctx) { return files->Install(&ctx); });
    if (!https->is_valid()) {
      return absl::InternalError(absl::StrCat(
          "REST (--http_port): OpenSSL did not take the certificate ",
          tls.cert_file, " and key ", tls.key_file));
    }
    server->http_ = std::move(https);
  }
  httplib::Server& http = *server->http_;
  // httplib serves a connection on one thread from its first request to
  // its close; its default pool (8 threads on a small machine) let eight
  // idle keep-alive clients hold every other client off for a minute.
  static NoRouterMetrics no_metrics;
  RouterMetrics* metrics =
      options.metrics != nullptr ? options.metrics : &no_metrics;
  const size_t threads = static_cast<size_t>(options.threads);
  // Called once the port is bound and its deadlines started (below).
  InferenceHttpServer* self = server.get();
  http.new_task_queue = [threads, metrics, self] {
    return new CountedThreadPool(threads, metrics, self->deadlines_.get());
  };
  const int64_t bytes_in_flight = options.max_bytes_in_flight > 0
                                      ? options.max_bytes_in_flight
                                      : 2 * options.max_body_bytes;
  // A body the budget could never hold is too large, not a reason to
  // retry.
  const int64_t max_body = std::min(options.max_body_bytes, bytes_in_flight);
  http.set_payload_max_length(static_cast<size_t>(max_body));
  http.set_read_timeout(60, 0);
  http.set_write_timeout(60, 0);
  http.set_keep_alive_timeout(
      static_cast<time_t>(absl::ToInt64Seconds(options.keep_alive)));
  // Headers and body leave in separate writes: without this, Nagle and
  // the client's delayed ACK hold each answer about 40 ms.
  http.set_tcp_nodelay(true);
  // The stages of each connection's requests, for its deadlines: a head is
  // in when it is routed; its answer is made once its handler is done.
  http.set_pre_routing_handler([max_body](const httplib::Request& req,
                                          httplib::Response& res) {
    if (const HeadSize head = HeadSizeOf(req); head.bytes > kMaxHeadBytes) {
      res.status = 431;
      res.set_header("Connection", "close");
      res.set_content(
          ErrorJson(absl::StrCat("the request's head (its line and ",
                                 head.fields, " header fields: ", head.bytes,
                                 " bytes) is larger than this router takes (",
                                 kMaxHeadBytes, " bytes)")),
          kJson);
      return httplib::Server::HandlerResponse::Handled;
    }
    if (BodyWithoutLength(req)) {
      res.status = 411;
      res.set_content(
          ErrorJson(absl::StrCat(
              "a ", req.method,
              " needs a Content-Length header (Content-Length: 0 for no "
              "body) or Transfer-Encoding: chunked")),
          kJson);
      return httplib::Server::HandlerResponse::Handled;
    }
    ConnectionDeadlines::BodyNext(AnnouncedBody(req, max_body));
    return httplib::Server::HandlerResponse::Unhandled;
  });
  http.set_post_routing_handler(
      [linger = options.request_timeout](const httplib::Request&,
                                         httplib::Response& res) {
        ConnectionDeadlines::Answered();
        LingerAfterRefusal(linger, res);
      });
  http.Get("/v2/health/live",
           [](const httplib::Request&, httplib::Response& res) {
             res.set_content("{}", kJson);
           });
  http.Get("/v2/health/ready",
           [router](const httplib::Request&, httplib::Response& res) {
             res.status = router->pool().ready() ? 200 : 400;
             res.set_content("{}", kJson);
           });
  http.Get("/v2", [router](const httplib::Request& req,
                           httplib::Response& res) {
    absl::Status status = Authorize(*router, req);
    if (!status.ok()) return Reply(res, status);
    res.set_content(ServerMetadataToJson(OipServerMetadata(kVersion)), kJson);
  });
  // The model repository index of Triton and MLServer, read-only (the
  // models are the checkpoint's layers: nothing is loaded or unloaded).
  // The body ({} or {"ready": bool}) is small: one past kMaxIndexBody is
  // refused, not read.
  http.Post("/v2/repository/index",
            [router](const httplib::Request& req, httplib::Response& res,
                     const httplib::ContentReader& read) {
              std::string body;
              const bool whole = read([&body](const char* data, size_t length) {
                if (body.size() + length > kMaxIndexBody) return false;
                body.append(data, length);
                return true;
              });
              if (!whole) {
                res.set_header("Connection", "close");
                res.status = 413;
                res.set_content(ErrorJson(absl::StrCat(
                                    "an index request's body is at most ",
                                    kMaxIndexBody, " bytes")),
                                kJson);
                return;
              }
              absl::Status status = Authorize(*router, req);
              if (!status.ok()) return Reply(res, status);
              absl::StatusOr<inference::RepositoryIndexRequest> request =
                  RepositoryIndexFromJson(body);
              if (!request.ok()) return Reply(res, request.status());
              absl::StatusOr<inference::RepositoryIndexResponse> index =
                  RepositoryIndexOf(*router, *request);
              if (!index.ok()) return Reply(res, index.status());
              res.set_content(RepositoryIndexToJson(*index), kJson);
            });
  // The statistics extension: every model's (GET /v2/models/stats, first:
  // the model route below would take "stats" for a model's name), or one
  // model's.
  http.Get("/v2/models/stats",
           TokenGet<inference::ModelStatisticsRequest>(
               router, ModelStatisticsOf, ModelStatisticsToJson));
  http.Get(std::string(kModel) + "/stats",
           TokenGet<inference::ModelStatisticsRequest>(
               router, ModelStatisticsOf, ModelStatisticsToJson));
  http.Get(std::string(kModel) + "/config",
           TokenGet<inference::ModelConfigRequest>(router, ModelConfigOf,
                                                   ModelConfigToJson));
  http.Get(std::string(kModel) + "/ready",
           [router](const httplib::Request& req, httplib::Response& res) {
             absl::StatusOr<int> layer = Model(*router, req);
             if (!layer.ok()) return Reply(res, layer.status());
             res.status = WhyLayerNotReady(*router, *layer).empty() ? 200 : 400;
             res.set_content("{}", kJson);
           });
  http.Get(kModel, TokenGet<inference::ModelMetadataRequest>(
                       router, ModelMetadataOf, ModelMetadataToJson));
  // A client that asks before it sends its body (`Expect: 100-continue`,
  // as curl does past 1 MiB) is refused before it sends it where the
  // length or the token already refuse the request (counted and logged as
  // the handler would), with "Connection: close".
  http.set_expect_100_continue_handler(
      [router, max_body](const httplib::Request& req, httplib::Response& res) {
        if (req.method != "POST" || !absl::EndsWith(req.path, "/infer")) {
          return 100;
        }
        std::string request_id = RequestId(req, res);
        int64_t declared = 0;
        bool too_large = false;
        if (RefusedByLength(req, max_body, max_body, &declared, &too_large,
                            res)) {
          return res.status;
        }
        absl::Status status = Authorize(*router, req);
        if (status.ok()) return 100;
        res.set_header("Connection", "close");
        Infer(*router, req, "", std::move(request_id), std::move(status), res);
        return res.status;
      });
  // The body is read here, not by httplib before the handler: the token
  // and the budget are checked first, and a refused body is read and
  // dropped (keeping the connection usable) rather than held.
  auto budget = std::make_shared<BodyBudget>(bytes_in_flight, metrics);
  http.Post(
      std::string(kModel) + "/infer",
      [router, budget, max_body](const httplib::Request& req,
                                 httplib::Response& res,
                                 const httplib::ContentReader& read) {
        std::string request_id = RequestId(req, res);
        int64_t declared = max_body;
        bool too_large = false;
        if (RefusedByLength(req, max_body, kDrainFactor * max_body, &declared,
                            &too_large, res)) {
          return;
        }
        if (too_large) {
          // httplib reads and drops a body over its limit (the same as
          // ours) and says 413; the answer is the one made above.
          read([](const char*, size_t) { return true; });
          return;
        }
        // A compressed body may inflate to the limit, whatever its
        // length: it is held as the limit, as a chunked one is. One in an
        // encoding httplib does not inflate is read and dropped, and
        // refused.
        const BodyEncoding encoding = EncodingOf(req);
        const bool compressed = encoding == BodyEncoding::kInflated;
        if (compressed) declared = max_body;
        absl::Status status = Authorize(*router, req);
        const bool unsupported =
            status.ok() && encoding == BodyEncoding::kUnsupported;
        std::optional<BodyBudget::Hold> hold;
        if (status.ok() && !unsupported) {
          status = budget->Take(declared, &hold);
        }
        std::string body;
        const bool keep = hold.has_value();
        if (keep && !compressed && req.has_header("Content-Length")) {
          body.reserve(static_cast<size_t>(declared));
        }
        // The bytes as httplib hands them over, inflated: without a
        // bound a 64 KB gzip of zeros became 64 MB in memory (1,000
        // to 1). (httplib hands over the bytes of an encoding it does
        // not know as they are.)
        int64_t inflated = 0;
        if (!read([&](const char* data, size_t length) {
              inflated += static_cast<int64_t>(length);
              if (inflated > max_body) return false;
              if (keep) body.append(data, length);
              return true;
            })) {
          if (inflated > max_body) {
            res.set_header("Connection", "close");
            res.status = 413;
            res.set_content(
                ErrorJson(absl::StrCat(
                    compressed
                        ? absl::StrCat("the body, decompressed "
                                       "(Content-Encoding: ",
                                       req.get_header_value("Content-Encoding")
                                           .substr(0, 16),
                                       "),")
                        : "the body",
                    " is larger than this router takes (", max_body,
                    " bytes)")),
                kJson);
          }
          return;
        }
        if (unsupported) {
          res.status = 415;
          res.set_content(
              ErrorJson(absl::StrCat(
                  "Content-Encoding ",
                  common::QuoteForLog(
                      req.get_header_value("Content-Encoding").substr(0, 32)),
                  ": this router inflates gzip, deflate and br")),
              kJson);
          return;
        }
        ConnectionDeadlines::Serving();
        Infer(*router, req, body, std::move(request_id), std::move(status),
              res);
      });
  http.set_error_handler([](const httplib::Request& req,
                            httplib::Response& res) {
    if (!res.body.empty()) return;
    // httplib's own refusals come here with no body: 413, and 414 and 400
    // for a request line or a header line past its bounds (or unreadable).
    const std::string message =
        res.status == 413 ? "the body is larger than this router takes"
        : res.status == 414
            ? absl::StrCat(
                  "the request line (method, path and query) is "
                  "longer than this router takes (",
                  CPPHTTPLIB_REQUEST_URI_MAX_LENGTH, " bytes)")
        : res.status == 400
            ? absl::StrCat(
                  "the request could not be read as HTTP/1.1: a "
                  "malformed request line, header field or chunked "
                  "body, or a header line longer than ",
                  CPPHTTPLIB_HEADER_MAX_LENGTH, " bytes")
        : res.status == 404
            ? absl::StrCat("no such path: ", req.method.substr(0, 16), " ",
                           common::QuoteForLog(req.path, 128),
                           "; this router serves GET /v2, /v2/health/live, "
                           "/v2/health/ready, "
                           "/v2/models/{model}[/versions/{version}][/ready|"
                           "/config], "
                           "/v2/models[/{model}[/versions/{version}]]/stats "
                           "and POST "
                           "/v2/models/{model}[/versions/{version}]/infer, "
                           "/v2/repository/index")
            : "bad request";
    res.set_content(ErrorJson(message), kJson);
  });
  if (port == 0) {
    server->port_ = http.bind_to_any_port(host);
  } else if (http.bind_to_port(host, port)) {
    server->port_ = port;
  }
  if (server->port_ <= 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen for REST on ", host, ":", port,
                     " (--http_port): address in use?"));
  }
  ConnectionDeadlines::Options deadlines;
  deadlines.max_head_bytes = kMaxHeadBytes;
  deadlines.head = options.keep_alive + options.request_timeout;
  deadlines.body = options.request_timeout;
  deadlines.on_cut = [metrics,
                      seconds = absl::ToInt64Seconds(options.request_timeout)](
                         const ConnectionDeadlines::Cut& cut) {
    metrics->RecordRestConnectionCut(cut);
    static common::LogRateLimiter* logs = new common::LogRateLimiter(10);
    if (int64_t skipped = 0; logs->Allow(&skipped)) {
      MOE_LOG(WARNING)
          << "REST: closed the connection from " << cut.peer << ": " << cut.why
          << (cut.head_bytes > 0 ? ""
              : cut.stage == ConnectionDeadlines::Stage::kBody
                  ? absl::StrCat(" (--http_request_timeout_s=", seconds,
                                 " plus 1 s per MiB of the body received)")
                  : absl::StrCat(" (--http_request_timeout_s=", seconds,
                                 " plus the keep-alive)"))
          << common::SuppressedNote(skipped);
    }
  };
  MOE_ASSIGN_OR_RETURN(server->deadlines_,
                       ConnectionDeadlines::Start(server->port_, deadlines));
  server->thread_ = std::thread([&http] { http.listen_after_bind(); });
  return server;
}

InferenceHttpServer::~InferenceHttpServer() {
  if (deadlines_) deadlines_->StopLingering();
  if (http_) http_->stop();
  // httplib ends a keep-alive connection between requests only when its
  // keep-alive runs out (5 s): the idle ones are ended now.
  if (deadlines_) {
    if (const int idle = deadlines_->CloseIdle(); idle > 0) {
      MOE_LOG(INFO) << "REST: stopped; closed " << idle
                    << " idle keep-alive connection(s)";
    }
  }
  if (thread_.joinable()) thread_.join();
}

}  // namespace moe::router
