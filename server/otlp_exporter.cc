#include "server/otlp_exporter.h"

#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <httplib.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <tuple>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "otlp/rpc_status.pb.h"
#include "otlp/trace_service.grpc.pb.h"
#include "proto/grpc_status.h"
#include "proto/tls.h"

namespace moe::server {
namespace {

using TraceService = opentelemetry::proto::collector::trace::v1::TraceService;

// "http(s)://host[:port][/path]" split; false when it is not one.
bool SplitUrl(const std::string& url, bool* tls, std::string* host_port,
              std::string* path) {
  size_t scheme = 0;
  if (absl::StartsWith(url, "http://")) {
    scheme = 7;
  } else if (absl::StartsWith(url, "https://")) {
    scheme = 8;
  } else {
    return false;
  }
  const size_t slash = url.find('/', scheme);
  *tls = scheme == 8;
  *host_port = url.substr(scheme, slash - scheme);
  *path = slash == std::string::npos ? "" : url.substr(slash);
  return !host_port->empty();
}

std::string Printable(absl::string_view bytes) {
  return absl::CHexEscape(bytes.substr(0, 200));
}

// Retry-After's value, as seconds or as an HTTP date (negative for a date
// past); nullopt when it is neither.
std::optional<absl::Duration> RetryAfter(const std::string& value,
                                         absl::Time now) {
  int64_t seconds = 0;
  if (absl::SimpleAtoi(value, &seconds) && seconds >= 0) {
    return absl::Seconds(seconds);
  }
  absl::Time when;
  std::string error;
  if (absl::ParseTime("%a, %d %b %Y %H:%M:%S GMT", value, absl::UTCTimeZone(),
                      &when, &error)) {
    return when - now;
  }
  return std::nullopt;
}

// The delay a gRPC error's details (google.rpc.Status) ask for in a
// google.rpc.RetryInfo; nullopt when they ask for none.
std::optional<absl::Duration> RetryInfoDelay(const std::string& details) {
  otlp::RpcStatus status;
  if (details.empty() || !status.ParseFromString(details)) return std::nullopt;
  for (const otlp::RpcAny& detail : status.details()) {
    otlp::RetryInfo info;
    if (absl::EndsWith(detail.type_url(), "/google.rpc.RetryInfo") &&
        info.ParseFromString(detail.value()) && info.has_retry_delay()) {
      return absl::Seconds(info.retry_delay().seconds()) +
             absl::Nanoseconds(info.retry_delay().nanos());
    }
  }
  return std::nullopt;
}

// Whether a gRPC channel's error says the collector's certificate did not
// pass: "Ssl handshake failed: SSL_ERROR_SSL: ... certificate verify
// failed" (OpenSSL; BoringSSL writes CERTIFICATE_VERIFY_FAILED).
bool CertificateRefused(absl::string_view message) {
  const std::string lower = absl::AsciiStrToLower(message);
  return absl::StrContains(lower, "certificate verify failed") ||
         absl::StrContains(lower, "certificate_verify_failed");
}

}  // namespace

absl::StatusOr<OtlpProtocol> ParseOtlpProtocol(absl::string_view name) {
  if (name == "http/json") return OtlpProtocol::kHttpJson;
  if (name == "http/protobuf") return OtlpProtocol::kHttpProtobuf;
  if (name == "grpc") return OtlpProtocol::kGrpc;
  return absl::InvalidArgumentError(
      absl::StrCat("\"", name,
                   "\": not an OTLP protocol (http/json, http/protobuf or "
                   "grpc)"));
}

absl::string_view OtlpProtocolName(OtlpProtocol protocol) {
  switch (protocol) {
    case OtlpProtocol::kHttpJson:
      return "http/json";
    case OtlpProtocol::kHttpProtobuf:
      return "http/protobuf";
    case OtlpProtocol::kGrpc:
      return "grpc";
  }
  return "?";
}

absl::StatusOr<bool> ParseOtlpGzip(absl::string_view compression) {
  if (compression == "gzip") return true;
  if (compression == "none") return false;
  return absl::InvalidArgumentError(absl::StrCat(
      "\"", compression, "\": not an OTLP compression (gzip or none)"));
}

// One send of a request: the collector's answer (with its partial
// success), or why it took none and whether sending again may help.
struct OtlpExporter::Attempt {
  absl::Status status;
  otlp::ExportTracePartialSuccess partial_success;
  bool retryable = false;  // failed in a way a collector recovers from
  // When the collector asked to be sent the batch again (HTTP Retry-After,
  // gRPC RetryInfo); nullopt when it did not say.
  std::optional<absl::Duration> retry_after;
};

class OtlpExporter::Transport {
 public:
  virtual ~Transport() = default;
  virtual Attempt Send(const otlp::ExportTraceServiceRequest& request) = 0;
};

// OTLP/HTTP: a POST per export, on one kept-alive connection (opened
// again when it was closed), so that an https:// collector costs one TLS
// handshake, not one per export. Used from the exporter's thread only.
class OtlpExporter::HttpTransport final : public OtlpExporter::Transport {
 public:
  HttpTransport(const Options& options, bool tls, const std::string& host_port,
                const std::string& path)
      : client_(absl::StrCat(tls ? "https://" : "http://", host_port),
                options.client_cert_file, options.client_key_file),
        headers_(options.headers.begin(), options.headers.end()),
        path_(path.empty() ? "/v1/traces" : path),
        json_(options.protocol == OtlpProtocol::kHttpJson) {
    const int64_t ms = absl::ToInt64Milliseconds(options.timeout);
    client_.set_connection_timeout(ms / 1000, (ms % 1000) * 1000);
    client_.set_read_timeout(ms / 1000, (ms % 1000) * 1000);
    client_.set_write_timeout(ms / 1000, (ms % 1000) * 1000);
    client_.set_keep_alive(true);
    client_.set_compress(options.gzip);
    if (!options.ca_file.empty()) client_.set_ca_cert_path(options.ca_file);
    client_.enable_server_certificate_verification(true);
  }

  // False when OpenSSL did not take the CA or the client certificate.
  bool valid() const { return client_.is_valid(); }

  Attempt Send(const otlp::ExportTraceServiceRequest& request) override {
    httplib::Result res =
        json_ ? client_.Post(path_, headers_, OtlpJson(request),
                             "application/json")
              : client_.Post(path_, headers_, request.SerializeAsString(),
                             "application/x-protobuf");
    Attempt attempt;
    if (!res) {
      const httplib::Error error = res.error();
      attempt.status = absl::UnavailableError(httplib::to_string(error));
      // No connection or no answer: the collector may come back. A
      // certificate it does not pass stays so.
      attempt.retryable = error == httplib::Error::Connection ||
                          error == httplib::Error::ConnectionTimeout ||
                          error == httplib::Error::Read ||
                          error == httplib::Error::Write;
      return attempt;
    }
    if (res->status < 200 || res->status >= 300) {
      attempt.status = absl::UnavailableError(
          absl::StrCat("HTTP ", res->status, " ", Printable(res->body)));
      attempt.retryable = res->status == 429 || res->status == 502 ||
                          res->status == 503 || res->status == 504;
      if (attempt.retryable && res->has_header("Retry-After")) {
        attempt.retry_after =
            RetryAfter(res->get_header_value("Retry-After"), absl::Now());
      }
      return attempt;
    }
    otlp::ExportTraceServiceResponse response;
    if (json_) {
      const nlohmann::json body =
          nlohmann::json::parse(res->body, nullptr, /*allow_exceptions=*/false);
      if (body.is_object() && body.contains("partialSuccess")) {
        const nlohmann::json& p = body["partialSuccess"];
        (void)google::protobuf::util::JsonStringToMessage(
            p.dump(), response.mutable_partial_success());
      }
    } else {
      (void)response.ParseFromString(res->body);
    }
    attempt.partial_success = response.partial_success();
    return attempt;
  }

 private:
  httplib::Client client_;
  const httplib::Headers headers_;
  const std::string path_;
  const bool json_;
};

// OTLP/gRPC: Export calls on one channel, kept for the exporter's life.
class OtlpExporter::GrpcTransport final : public OtlpExporter::Transport {
 public:
  GrpcTransport(const Options& options,
                std::shared_ptr<grpc::ChannelCredentials> credentials,
                const std::string& target)
      : options_(options),
        stub_(TraceService::NewStub(
            grpc::CreateChannel(target, std::move(credentials)))) {
    for (const auto& [key, value] : options.headers) {
      metadata_.emplace_back(absl::AsciiStrToLower(key), value);
    }
  }

  Attempt Send(const otlp::ExportTraceServiceRequest& request) override {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + options_.timeout));
    for (const auto& [key, value] : metadata_) context.AddMetadata(key, value);
    if (options_.gzip) context.set_compression_algorithm(GRPC_COMPRESS_GZIP);
    otlp::ExportTraceServiceResponse response;
    const grpc::Status status = stub_->Export(&context, request, &response);
    Attempt attempt;
    if (!status.ok()) {
      const absl::Status s = proto::FromGrpcStatus(status);
      attempt.status = absl::Status(
          s.code(), absl::StrCat("gRPC ", absl::StatusCodeToString(s.code()),
                                 ": ", Printable(s.message())));
      attempt.retry_after = RetryInfoDelay(status.error_details());
      switch (s.code()) {
        case absl::StatusCode::kUnavailable:
          // Also what a collector certificate that does not pass reads as;
          // that is no reason to send again (as over HTTP).
          attempt.retryable = !CertificateRefused(s.message());
          break;
        case absl::StatusCode::kCancelled:
        case absl::StatusCode::kDeadlineExceeded:
        case absl::StatusCode::kAborted:
        case absl::StatusCode::kOutOfRange:
        case absl::StatusCode::kDataLoss:
          attempt.retryable = true;
          break;
        case absl::StatusCode::kResourceExhausted:
          // Only when the collector says it will recover (and when).
          attempt.retryable = attempt.retry_after.has_value();
          break;
        default:
          break;
      }
      return attempt;
    }
    attempt.partial_success = response.partial_success();
    return attempt;
  }

 private:
  const Options& options_;
  std::unique_ptr<TraceService::Stub> stub_;
  KeyValues metadata_;
};

absl::StatusOr<std::unique_ptr<OtlpExporter>> OtlpExporter::Create(
    const Options& options) {
  bool tls = false;
  std::string host_port, path;
  if (!SplitUrl(options.endpoint, &tls, &host_port, &path)) {
    const bool grpc = options.protocol == OtlpProtocol::kGrpc;
    if (grpc && !absl::StrContains(options.endpoint, "://")) {
      // OTLP/gRPC's form without a scheme, "host:port": TLS unless
      // `insecure` (OTEL_EXPORTER_OTLP_INSECURE).
      host_port = options.endpoint.substr(0, options.endpoint.find('/'));
      tls = !options.insecure;
    }
    if (host_port.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "\"", options.endpoint, "\": not an http:// or https:// URL (e.g. ",
          grpc ? "http://otel-collector:4317, or otel-collector:4317"
               : "http://otel-collector:4318/v1/traces",
          ")"));
    }
  }
  if (options.client_cert_file.empty() != options.client_key_file.empty()) {
    return absl::InvalidArgumentError(
        "OTLP: a client certificate needs its key, and a key its certificate");
  }
  if (options.max_batch < 1 || options.max_queued < 1) {
    return absl::InvalidArgumentError(
        "OTLP: batch and queue sizes must be >= 1");
  }
  if (options.max_attempts < 1 ||
      options.initial_backoff < absl::ZeroDuration() ||
      options.max_backoff < options.initial_backoff ||
      options.max_retry_delay < absl::ZeroDuration() ||
      options.export_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "OTLP: retries need max_attempts >= 1 and 0 <= initial_backoff <= "
        "max_backoff, max_retry_delay >= 0, export_timeout > 0");
  }
  auto exporter = std::unique_ptr<OtlpExporter>(new OtlpExporter(options));
  const Options& o = exporter->options_;
  if (options.protocol == OtlpProtocol::kGrpc) {
    // host:port, with OTLP/gRPC's port when the URL names none (a
    // bracketed IPv6 address's colons are not a port's).
    const size_t colon = host_port.rfind(':');
    if (colon == std::string::npos ||
        host_port.find(']', colon) != std::string::npos) {
      host_port += ":4317";
    }
    std::shared_ptr<grpc::ChannelCredentials> credentials;
    if (tls) {
      grpc::SslCredentialsOptions ssl;
      for (const auto& [file, pem, what] :
           {std::tuple(options.ca_file, &ssl.pem_root_certs, "CA file"),
            std::tuple(options.client_cert_file, &ssl.pem_cert_chain,
                       "client certificate"),
            std::tuple(options.client_key_file, &ssl.pem_private_key,
                       "client key")}) {
        if (file.empty()) continue;
        MOE_ASSIGN_OR_RETURN(*pem,
                             proto::ReadPem(absl::StrCat("OTLP ", what), file));
        if (pem->empty()) {
          // gRPC would take empty root certificates for the system's.
          return absl::InvalidArgumentError(
              absl::StrCat("OTLP ", what, ": ", file, " is empty"));
        }
      }
      credentials = grpc::SslCredentials(ssl);
    } else {
      credentials = grpc::InsecureChannelCredentials();
    }
    exporter->destination_ = host_port;
    exporter->tls_ = tls;
    exporter->transport_ =
        std::make_unique<GrpcTransport>(o, std::move(credentials), host_port);
  } else {
    exporter->destination_ = options.endpoint;
    exporter->tls_ = tls;
    auto http = std::make_unique<HttpTransport>(o, tls, host_port, path);
    if (!http->valid()) {
      return absl::InvalidArgumentError(
          absl::StrCat("OTLP: OpenSSL did not take the client certificate \"",
                       options.client_cert_file, "\" and key \"",
                       options.client_key_file, "\""));
    }
    exporter->transport_ = std::move(http);
  }
  OtlpExporter* self = exporter.get();
  exporter->thread_ = std::thread([self] { self->Loop(); });
  return exporter;
}

OtlpExporter::Outcomes::Outcomes(prometheus::Registry* registry) {
  if (registry == nullptr) return;
  auto& family =
      prometheus::BuildCounter()
          .Name("moe_trace_spans_total")
          .Help(
              "Spans this process recorded, by what became of them: "
              "exported (a collector took them), not_queued (more than "
              "the exporter's queue waited, or it was stopping), failed "
              "(their export failed: no answer, not 2xx, a gRPC error), "
              "rejected (the collector refused them in a partial success)")
          .Register(*registry);
  exported_counter_ = &family.Add({{"outcome", "exported"}});
  not_queued_counter_ = &family.Add({{"outcome", "not_queued"}});
  failed_counter_ = &family.Add({{"outcome", "failed"}});
  rejected_counter_ = &family.Add({{"outcome", "rejected"}});
  retries_counter_ =
      &prometheus::BuildCounter()
           .Name("moe_trace_export_retries_total")
           .Help(
               "Sends of a batch of spans after its first, when the export "
               "failed in a way a collector recovers from (no answer, HTTP "
               "429/502/503/504, gRPC UNAVAILABLE, ...)")
           .Register(*registry)
           .Add({});
}

void OtlpExporter::Outcomes::AddRetry() {
  if (retries_counter_ != nullptr) retries_counter_->Increment();
}

void OtlpExporter::Outcomes::Add(int64_t exported, int64_t not_queued,
                                 int64_t failed, int64_t rejected) {
  {
    absl::MutexLock lock(&mu_);
    exported_ += exported;
    dropped_ += not_queued + failed + rejected;
  }
  if (exported_counter_ == nullptr) return;
  exported_counter_->Increment(static_cast<double>(exported));
  not_queued_counter_->Increment(static_cast<double>(not_queued));
  failed_counter_->Increment(static_cast<double>(failed));
  rejected_counter_->Increment(static_cast<double>(rejected));
}

int64_t OtlpExporter::Outcomes::exported() const {
  absl::MutexLock lock(&mu_);
  return exported_;
}

int64_t OtlpExporter::Outcomes::dropped() const {
  absl::MutexLock lock(&mu_);
  return dropped_;
}

OtlpExporter::OtlpExporter(const Options& options)
    : options_(options),
      outcomes_(options.registry),
      jitter_(std::random_device{}()) {}

OtlpExporter::~OtlpExporter() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void OtlpExporter::Export(common::Span span) {
  {
    absl::MutexLock lock(&mu_);
    if (!stopping_ && static_cast<int>(queue_.size()) < options_.max_queued) {
      queue_.push_back(std::move(span));
      return;
    }
  }
  outcomes_.Add(0, /*not_queued=*/1, 0, 0);
}

int64_t OtlpExporter::exported() const { return outcomes_.exported(); }

int64_t OtlpExporter::dropped() const { return outcomes_.dropped(); }

void OtlpExporter::Loop() {
  for (;;) {
    std::vector<common::Span> batch;
    bool last = false;
    {
      absl::MutexLock lock(&mu_);
      const int max_batch = options_.max_batch;
      auto ready = [this, max_batch]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return stopping_ || static_cast<int>(queue_.size()) >= max_batch;
      };
      mu_.AwaitWithTimeout(absl::Condition(&ready), options_.interval);
      const size_t n =
          std::min(queue_.size(), static_cast<size_t>(options_.max_batch));
      batch.assign(std::make_move_iterator(queue_.begin()),
                   std::make_move_iterator(queue_.begin() + n));
      queue_.erase(queue_.begin(), queue_.begin() + n);
      last = stopping_ && queue_.empty();
    }
    if (!batch.empty() && !Send(batch)) {
      // Stopping, a collector that failed once gets no more tries: the
      // process's exit waits for no more timeouts.
      int64_t given_up = 0;
      {
        absl::MutexLock lock(&mu_);
        if (stopping_) {
          given_up = static_cast<int64_t>(queue_.size());
          queue_.clear();
          last = true;
        }
      }
      outcomes_.Add(0, 0, /*failed=*/given_up, 0);
    }
    if (last) return;
  }
}

bool OtlpExporter::stopping() const {
  absl::MutexLock lock(&mu_);
  return stopping_;
}

void OtlpExporter::Complain(absl::Time* last, const std::string& what) {
  const absl::Time now = absl::Now();
  if (now - *last < absl::Minutes(1)) return;
  *last = now;
  MOE_LOG(WARNING) << "tracing: the collector at " << destination_ << " "
                   << what << " (said once a minute at most)";
}

absl::StatusOr<absl::Duration> OtlpExporter::RetryDelay(const Attempt& attempt,
                                                        absl::Duration backoff,
                                                        absl::Time deadline) {
  if (!attempt.retryable) {
    return absl::FailedPreconditionError("not retryable");
  }
  if (stopping()) return absl::CancelledError("stopping");
  absl::Duration delay;
  if (attempt.retry_after.has_value()) {
    if (*attempt.retry_after > options_.max_retry_delay) {
      return absl::OutOfRangeError(absl::StrCat(
          "the collector asked to wait ",
          absl::FormatDuration(*attempt.retry_after), ", more than ",
          absl::FormatDuration(options_.max_retry_delay)));
    }
    delay = std::max(*attempt.retry_after, absl::ZeroDuration());
  } else {
    delay = backoff * std::uniform_real_distribution<double>(0.8, 1.2)(jitter_);
  }
  if (absl::Now() + delay > deadline) {
    return absl::DeadlineExceededError(absl::StrCat(
        "the export timeout of ", absl::FormatDuration(options_.export_timeout),
        " would pass before the next send"));
  }
  return delay;
}

bool OtlpExporter::Send(const std::vector<common::Span>& batch) {
  const int64_t size = static_cast<int64_t>(batch.size());
  const otlp::ExportTraceServiceRequest request = OtlpTracesRequest(
      batch, options_.service_name, options_.resource_attributes);
  const absl::Time deadline = absl::Now() + options_.export_timeout;
  Attempt attempt = transport_->Send(request);
  absl::Duration backoff = options_.initial_backoff;
  int sent = 1;
  std::string not_again;  // why a failed batch was not sent again
  for (; !attempt.status.ok(); ++sent) {
    if (sent >= options_.max_attempts) {
      not_again = absl::StrCat(sent, " sends");
      break;
    }
    const absl::StatusOr<absl::Duration> delay =
        RetryDelay(attempt, backoff, deadline);
    if (!delay.ok()) {
      not_again = std::string(delay.status().message());
      break;
    }
    Complain(
        &last_retry_note_,
        absl::StrCat(
            "did not take ", size, " span(s): ", attempt.status.message(),
            "; sending them again in ",
            absl::FormatDuration(absl::Trunc(*delay, absl::Milliseconds(1))),
            " (send ", sent + 1, " of ", options_.max_attempts, ")"));
    // Counted before the wait: a batch scheduled again is always sent again.
    outcomes_.AddRetry();
    {
      // Stopping cuts the wait short: one more send, then no other.
      absl::MutexLock lock(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(&stopping_), *delay);
    }
    backoff = std::min(backoff * 1.5, options_.max_backoff);
    attempt = transport_->Send(request);
  }
  const int64_t rejected =
      attempt.status.ok()
          ? std::clamp<int64_t>(attempt.partial_success.rejected_spans(), 0,
                                size)
          : size;
  outcomes_.Add(size - rejected, 0, attempt.status.ok() ? 0 : size,
                attempt.status.ok() ? rejected : 0);
  if (rejected == 0) return true;
  Complain(
      &last_drop_note_,
      attempt.status.ok()
          ? absl::StrCat("did not take ", rejected, " of ", size, " span(s): ",
                         Printable(attempt.partial_success.error_message()),
                         " (dropped)")
          : absl::StrCat("did not take ", size,
                         " span(s): ", attempt.status.message(),
                         " (dropped: ", not_again, ")"));
  return rejected < size;
}

}  // namespace moe::server
