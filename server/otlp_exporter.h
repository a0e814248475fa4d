// OtlpExporter: spans (common/tracing.h) to an OpenTelemetry collector in
// one of OTLP's three forms (`protocol`):
//   http/json      POST to the endpoint (e.g.
//                  http://otel-collector:4318/v1/traces), JSON bodies, on
//                  one kept-alive connection;
//   http/protobuf  the same POST with a protobuf body
//                  (application/x-protobuf);
//   grpc           TraceService/Export calls on one channel to the
//                  endpoint's host and port (e.g. http://otel-collector:4317;
//                  4317 when it names none; its path is not used; without
//                  a scheme, otel-collector:4317, over TLS unless
//                  `insecure`).
// An https:// endpoint is reached over TLS, the collector's certificate
// checked against `ca_file` or the system's CAs, showing it
// `client_cert_file` when given; `headers` go with every
// POST (as metadata, names in lower case, over gRPC); with `gzip` the
// bodies are compressed. Spans leave in
// batches sent from a thread of its own at most every `interval`, or as
// soon as `max_batch` spans wait. Export() never blocks the call it
// records: past `max_queued` waiting spans it drops the new one. A send
// that fails (no answer, not a 2xx, a gRPC error) drops its batch, and
// spans a collector rejects in a partial success are dropped; both are
// logged, once a minute at most; the counts are in exported() and
// dropped(), and, with a `registry`, in
//   moe_trace_spans_total{outcome}   exported, not_queued (the queue was
//                                    full, or the exporter stopping),
//                                    failed (the export failed), rejected
//                                    (refused in a partial success)
//
// Thread-safety: Export may be called from any thread.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/registry.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/tracing.h"
#include "server/otel_environment.h"
#include "server/otlp_traces.h"

namespace moe::server {

// OTLP's transports, by the names OTEL_EXPORTER_OTLP_PROTOCOL gives them.
enum class OtlpProtocol { kHttpJson, kHttpProtobuf, kGrpc };
// INVALID_ARGUMENT listing the three for any other name.
absl::StatusOr<OtlpProtocol> ParseOtlpProtocol(absl::string_view name);
absl::string_view OtlpProtocolName(OtlpProtocol protocol);
// OTEL_EXPORTER_OTLP_COMPRESSION's values: true for gzip, false for none;
// INVALID_ARGUMENT for any other.
absl::StatusOr<bool> ParseOtlpGzip(absl::string_view compression);

class OtlpExporter {
 public:
  struct Options {
    std::string endpoint;  // http(s)://host:port/path
    OtlpProtocol protocol = OtlpProtocol::kHttpJson;
    std::string service_name;       // the resource's service.name
    KeyValues resource_attributes;  // and its other attributes
    KeyValues headers;              // sent with every export
    std::string ca_file;            // https: the CA file; "" the system's
    // grpc with an endpoint without a scheme: plaintext rather than TLS.
    bool insecure = false;
    // https: the certificate and key shown to a collector that asks for
    // one (mutual TLS); both or neither.
    std::string client_cert_file;
    std::string client_key_file;
    bool gzip = false;  // bodies gzip-compressed (Content-Encoding, or
                        // gRPC's message compression)
    absl::Duration interval = absl::Seconds(1);
    int max_batch = 512;
    int max_queued = 4096;
    absl::Duration timeout = absl::Seconds(5);  // per send
    // Sending again after a failure a collector recovers from (above).
    int max_attempts = 5;
    absl::Duration initial_backoff = absl::Seconds(1);
    absl::Duration max_backoff = absl::Seconds(5);
    absl::Duration max_retry_delay = absl::Seconds(30);
    // A batch's sends and the waits between them (OTEL_BSP_EXPORT_TIMEOUT):
    // it is not sent again when that send would start later than this
    // after its first.
    absl::Duration export_timeout = absl::Seconds(30);
    // Where moe_trace_spans_total goes (none when null); it must outlive
    // the exporter.
    prometheus::Registry* registry = nullptr;
  };

  // INVALID_ARGUMENT quoting the endpoint when it is not http(s)://host...,
  // naming the CA or client certificate file when it cannot be read (gRPC
  // over TLS), or saying which size or retry setting is out of range, or
  // that a client certificate came without its key.
  static absl::StatusOr<std::unique_ptr<OtlpExporter>> Create(
      const Options& options);
  // Sends what still waits and stops; once a send fails while stopping,
  // the rest is dropped and nothing is sent again (an unreachable collector
  // delays the exit by one timeout at most).
  ~OtlpExporter();

  void Export(common::Span span);

  int64_t exported() const;  // spans a collector accepted
  int64_t dropped() const;   // dropped: queue full, failed, or rejected

  // Where exports go, for the logs: the URL, or for gRPC "host:port".
  const std::string& destination() const { return destination_; }
  // Whether exports go over TLS.
  bool tls() const { return tls_; }

 private:
  struct Attempt;
  class Transport;
  class HttpTransport;
  class GrpcTransport;

  // The spans of each outcome, kept here and in the metric.
  class Outcomes {
   public:
    explicit Outcomes(prometheus::Registry* registry);
    void Add(int64_t exported, int64_t not_queued, int64_t failed,
             int64_t rejected);
    void AddRetry();
    int64_t exported() const;
    int64_t dropped() const;

   private:
    mutable absl::Mutex mu_;
    int64_t exported_ ABSL_GUARDED_BY(mu_) = 0;
    int64_t dropped_ ABSL_GUARDED_BY(mu_) = 0;
    // Null without a registry.
    prometheus::Counter* exported_counter_ = nullptr;
    prometheus::Counter* not_queued_counter_ = nullptr;
    prometheus::Counter* failed_counter_ = nullptr;
    prometheus::Counter* rejected_counter_ = nullptr;
    prometheus::Counter* retries_counter_ = nullptr;
  };

  explicit OtlpExporter(const Options& options);
  void Loop();
  // Sends `batch`, again while it fails in a way worth retrying, and
  // counts what became of its spans; false when the collector took none.
  bool Send(const std::vector<common::Span>& batch);
  // How long to wait before sending again after `attempt` failed, the
  // backoff of this try being `backoff` and the batch's export timeout
  // ending at `deadline`; an error saying why not when it is not worth it.
  absl::StatusOr<absl::Duration> RetryDelay(const Attempt& attempt,
                                            absl::Duration backoff,
                                            absl::Time deadline);
  // Logs `what`, unless `*last` (a time something of its kind was logged)
  // is less than a minute ago.
  void Complain(absl::Time* last, const std::string& what);
  bool stopping() const;

  const Options options_;
  std::string destination_;
  bool tls_ = false;
  std::unique_ptr<Transport> transport_;
  mutable absl::Mutex mu_;
  std::deque<common::Span> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  Outcomes outcomes_;
  // When a drop and a retry were last logged (Loop()'s thread only).
  absl::Time last_drop_note_ = absl::InfinitePast();
  absl::Time last_retry_note_ = absl::InfinitePast();
  std::mt19937 jitter_;  // Loop()'s thread only
  std::thread thread_;
};

}  // namespace moe::server
