// The OTLP messages of spans (common/tracing.h): the
// ExportTraceServiceRequest an OTLP/gRPC or OTLP/HTTP (protobuf) collector
// takes (proto/otlp/traces.proto), and its OTLP/JSON form.
#pragma once

#include <string>
#include <vector>

#include "common/tracing.h"
#include "otlp/traces.pb.h"
#include "server/otel_environment.h"

namespace moe::server {

// The ExportTraceServiceRequest of `spans` of one service: one resource
// (service.name, service.version and `resource_attributes`), one scope
// ("moe-serve" and the version), IDs as bytes, times as Unix nanoseconds,
// the span's kind and links, status ERROR with its message where the span
// failed. Text that is not UTF-8 (a layer name a client sent) has its bad
// bytes replaced by U+FFFD: a receiver refuses a message with any.
otlp::ExportTraceServiceRequest OtlpTracesRequest(
    const std::vector<common::Span>& spans, const std::string& service_name,
    const KeyValues& resource_attributes = {});

// `request` in OTLP/JSON: proto3's JSON form with OTLP's two exceptions
// (IDs as hex, not base64; enums as integers).
std::string OtlpJson(const otlp::ExportTraceServiceRequest& request);

// OtlpJson(OtlpTracesRequest(...)).
std::string OtlpTracesJson(const std::vector<common::Span>& spans,
                           const std::string& service_name,
                           const KeyValues& resource_attributes = {});

}  // namespace moe::server
