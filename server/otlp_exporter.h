// OtlpExporter: spans (common/tracing.h) to an OpenTelemetry collector, over
// OTLP/HTTP with JSON bodies: POST to the endpoint (for example
// http://otel-collector:4318/v1/traces; an https:// one through
// cpp-httplib's TLS client, the collector's certificate checked against
// `ca_file` or the system's CAs), with `headers`, in batches sent from a
// thread of its own at most every `interval`, or as soon as `max_batch`
// spans wait. Export() never blocks the call it records: past `max_queued`
// waiting spans it drops the new one. A POST that fails (no answer, or not
// a 2xx) drops its batch and is logged, once a minute at most; the counts
// are in exported() and dropped().
//
// Thread-safety: Export may be called from any thread.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/tracing.h"
#include "server/otel_environment.h"

namespace moe::server {

class OtlpExporter {
 public:
  struct Options {
    std::string endpoint;           // http(s)://host:port/path
    std::string service_name;       // the resource's service.name
    KeyValues resource_attributes;  // and its other attributes
    KeyValues headers;              // sent with every POST
    std::string ca_file;            // https: the CA file; "" the system's
    absl::Duration interval = absl::Seconds(1);
    int max_batch = 512;
    int max_queued = 4096;
    absl::Duration timeout = absl::Seconds(5);  // per POST
  };

  // INVALID_ARGUMENT quoting the endpoint when it is not http(s)://host...
  static absl::StatusOr<std::unique_ptr<OtlpExporter>> Create(
      const Options& options);
  // Sends what still waits and stops; once a POST fails while stopping,
  // the rest is dropped (an unreachable collector delays the exit by one
  // timeout at most).
  ~OtlpExporter();

  void Export(common::Span span);

  int64_t exported() const;  // spans a collector accepted
  int64_t dropped() const;   // spans dropped: queue full or POST failed

 private:
  explicit OtlpExporter(const Options& options);
  void Loop();
  // POSTs `batch`; false when it was not accepted.
  bool Send(const std::vector<common::Span>& batch);

  const Options options_;
  std::string scheme_host_port_, path_;
  mutable absl::Mutex mu_;
  std::deque<common::Span> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  int64_t exported_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t dropped_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time last_complaint_ = absl::InfinitePast();  // Loop()'s thread only
  std::thread thread_;
};

// The OTLP/JSON body (ExportTraceServiceRequest) of `spans` of one
// service: one resource (service.name, service.version and
// `resource_attributes`), one scope ("moe-serve" and the version), IDs as
// hex, times as Unix nanoseconds in strings, the span's kind and links,
// status ERROR with its message where the span failed.
std::string OtlpTracesJson(const std::vector<common::Span>& spans,
                           const std::string& service_name,
                           const KeyValues& resource_attributes = {});

}  // namespace moe::server
