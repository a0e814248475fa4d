// What OpenTelemetry's standard environment variables say about sending
// traces (the flags' endpoint and ratio win over theirs): the variables the
// OpenTelemetry Operator injects and hosted backends document, so that a
// pod configured for OpenTelemetry traces without flags.
//
//   OTEL_EXPORTER_OTLP_TRACES_ENDPOINT   the traces URL, as is
//   OTEL_EXPORTER_OTLP_ENDPOINT          a base URL: traces go to
//                                        BASE/v1/traces (over gRPC, to its
//                                        host and port)
//   OTEL_EXPORTER_OTLP[_TRACES]_HEADERS  key=value,... sent with each export
//                                        (values percent-decoded; an API
//                                        key, say: never logged)
//   OTEL_EXPORTER_OTLP[_TRACES]_CERTIFICATE  the CA (PEM) an https://
//                                        collector's certificate must chain to
//   OTEL_EXPORTER_OTLP[_TRACES]_CLIENT_CERTIFICATE, ..._CLIENT_KEY
//                                        the certificate and key (PEM) shown
//                                        to a collector that asks for one
//                                        (mutual TLS; both or neither)
//   OTEL_EXPORTER_OTLP[_TRACES]_TIMEOUT  milliseconds one send may take
//   OTEL_EXPORTER_OTLP[_TRACES]_INSECURE true: an OTLP/gRPC endpoint without
//                                        a scheme is plaintext (else TLS)
//   OTEL_EXPORTER_OTLP[_TRACES]_PROTOCOL http/json, http/protobuf or grpc
//   OTEL_EXPORTER_OTLP[_TRACES]_COMPRESSION  gzip or none
//   OTEL_BSP_SCHEDULE_DELAY              milliseconds between exports
//   OTEL_BSP_MAX_QUEUE_SIZE              spans that may wait to be sent
//   OTEL_BSP_MAX_EXPORT_BATCH_SIZE       spans in one export (at most the
//                                        queue's size)
//   OTEL_BSP_EXPORT_TIMEOUT              milliseconds a batch's sends and
//                                        the waits between them may take
//   OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES  the spans' resource
//   OTEL_TRACES_SAMPLER[_ARG]            the parent-based samplers
//   OTEL_SDK_DISABLED=true               the endpoint variables are not used
// The _TRACES_ form of a setting wins over the general one.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace moe::server {

using KeyValues = std::vector<std::pair<std::string, std::string>>;

struct OtelEnvironment {
  // "" when no endpoint variable is set, or OTEL_SDK_DISABLED is true.
  std::string traces_endpoint;
  // The variable it came from, for the logs.
  std::string endpoint_variable;
  KeyValues headers;
  std::string certificate;  // a CA file; "" for the system's
  std::string certificate_variable;
  std::string protocol;  // as set; "" when not
  std::string protocol_variable;
  std::string compression;  // as set; "" when not
  std::string compression_variable;
  std::string client_certificate;  // a certificate file; "" when none
  std::string client_certificate_variable;
  std::string client_key;  // its key file; "" when none
  std::string client_key_variable;
  // OTEL_EXPORTER_OTLP[_TRACES]_INSECURE; nullopt when not set.
  std::optional<bool> insecure;
  // The numbers of OTEL_EXPORTER_OTLP[_TRACES]_TIMEOUT and OTEL_BSP_*;
  // nullopt when not set.
  std::optional<int64_t> timeout_ms;
  std::optional<int64_t> schedule_delay_ms;
  std::optional<int64_t> max_queue_size;
  std::optional<int64_t> max_export_batch_size;
  std::optional<int64_t> export_timeout_ms;
  std::string service_name;       // OTEL_SERVICE_NAME, else the attributes'
  KeyValues resource_attributes;  // without service.name
  // The root ratio of OTEL_TRACES_SAMPLER; nullopt when it is not set.
  std::optional<double> sample_ratio;
  // What was set and is not followed as written (said at start).
  std::vector<std::string> warnings;
};

// Reads the variables through `getenv` (std::getenv in the servers);
// `endpoint_given`: the flag names the endpoint. When it does not and no
// endpoint variable is set, nothing else is read (no tracing: variables
// meant for other programs cannot stop the server). INVALID_ARGUMENT
// naming the variable (never a header's value) for a header or attribute
// list that is not key=value,..., a bad percent escape, a sampler
// argument that is not a ratio from 0 to 1, an INSECURE value other than
// true or false, a client certificate without
// its key (or a key without its certificate), or a number that is not a
// whole number in its range (timeouts and delays 1 ms to 10 minutes, sizes
// 1 to 1,000,000, a batch no larger than the queue).
absl::StatusOr<OtelEnvironment> ReadOtelEnvironment(
    const std::function<const char*(const char*)>& getenv, bool endpoint_given);

}  // namespace moe::server
