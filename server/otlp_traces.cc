#include "server/otlp_traces.h"

#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "absl/strings/escaping.h"
#include "moe_version.h"

namespace moe::server {
namespace {

// `s` with each byte that is not part of a well-formed UTF-8 sequence
// replaced by U+FFFD.
std::string Utf8(absl::string_view s) {
  if (std::all_of(s.begin(), s.end(), [](char c) {
        return static_cast<unsigned char>(c) < 0x80;
      })) {
    return std::string(s);
  }
  std::string out;
  out.reserve(s.size() + 8);
  for (size_t i = 0; i < s.size();) {
    const unsigned char b = static_cast<unsigned char>(s[i]);
    size_t n = 0;  // the sequence's length; 0: b starts none
    unsigned char lo = 0x80, hi = 0xBF;  // its second byte's range
    if (b < 0x80) {
      n = 1;
    } else if (b >= 0xC2 && b <= 0xDF) {
      n = 2;
    } else if (b >= 0xE0 && b <= 0xEF) {
      n = 3;
      if (b == 0xE0) lo = 0xA0;  // no overlong forms
      if (b == 0xED) hi = 0x9F;  // no surrogates
    } else if (b >= 0xF0 && b <= 0xF4) {
      n = 4;
      if (b == 0xF0) lo = 0x90;
      if (b == 0xF4) hi = 0x8F;  // nothing past U+10FFFF
    }
    bool ok = n > 0 && i + n <= s.size();
    for (size_t k = 1; ok && k < n; ++k) {
      const unsigned char c = static_cast<unsigned char>(s[i + k]);
      ok = k == 1 ? c >= lo && c <= hi : c >= 0x80 && c <= 0xBF;
    }
    if (ok) {
      out.append(s.data() + i, n);
      i += n;
    } else {
      out.append("\xEF\xBF\xBD");
      ++i;
    }
  }
  return out;
}

void SetAttribute(const std::string& key, const common::SpanAttribute& value,
                  otlp::KeyValue* out) {
  out->set_key(Utf8(key));
  otlp::AnyValue* v = out->mutable_value();
  if (const auto* s = std::get_if<std::string>(&value)) {
    v->set_string_value(Utf8(*s));
  } else if (const auto* i = std::get_if<int64_t>(&value)) {
    v->set_int_value(*i);
  } else {
    v->set_bool_value(std::get<bool>(value));
  }
}

otlp::Span::SpanKind Kind(common::SpanKind kind) {
  switch (kind) {
    case common::SpanKind::kServer:
      return otlp::Span::SPAN_KIND_SERVER;
    case common::SpanKind::kClient:
      return otlp::Span::SPAN_KIND_CLIENT;
    case common::SpanKind::kInternal:
      return otlp::Span::SPAN_KIND_INTERNAL;
  }
  return otlp::Span::SPAN_KIND_UNSPECIFIED;
}

uint64_t UnixNanos(absl::Time t) {
  return static_cast<uint64_t>(absl::ToUnixNanos(t));
}

// OTLP/JSON's IDs are hex, where proto3's JSON writes bytes as base64.
void IdsToHex(nlohmann::json& object) {
  for (const char* key : {"traceId", "spanId", "parentSpanId"}) {
    auto it = object.find(key);
    if (it == object.end()) continue;
    std::string bytes;
    absl::Base64Unescape(it->get<std::string>(), &bytes);
    *it = absl::BytesToHexString(bytes);
  }
}

}  // namespace

std::string OtlpJson(const otlp::ExportTraceServiceRequest& request) {
  google::protobuf::util::JsonPrintOptions options;
  options.always_print_enums_as_ints = true;
  std::string text;
  (void)google::protobuf::util::MessageToJsonString(request, &text, options);
  nlohmann::json body = nlohmann::json::parse(text);
  for (nlohmann::json& rs : body["resourceSpans"]) {
    for (nlohmann::json& ss : rs["scopeSpans"]) {
      for (nlohmann::json& span : ss["spans"]) {
        IdsToHex(span);
        if (span.contains("links")) {
          for (nlohmann::json& link : span["links"]) IdsToHex(link);
        }
      }
    }
  }
  return body.dump();
}

otlp::ExportTraceServiceRequest OtlpTracesRequest(
    const std::vector<common::Span>& spans, const std::string& service_name,
    const KeyValues& resource_attributes) {
  otlp::ExportTraceServiceRequest request;
  otlp::ResourceSpans* rs = request.add_resource_spans();
  otlp::Resource* resource = rs->mutable_resource();
  SetAttribute("service.name", service_name, resource->add_attributes());
  SetAttribute("service.version", std::string(kVersion),
               resource->add_attributes());
  for (const auto& [key, value] : resource_attributes) {
    SetAttribute(key, value, resource->add_attributes());
  }
  otlp::ScopeSpans* ss = rs->add_scope_spans();
  ss->mutable_scope()->set_name("moe-serve");
  ss->mutable_scope()->set_version(kVersion);
  for (const common::Span& s : spans) {
    otlp::Span* span = ss->add_spans();
    span->set_trace_id(absl::HexStringToBytes(s.trace_id));
    span->set_span_id(absl::HexStringToBytes(s.span_id));
    if (!s.parent_span_id.empty()) {
      span->set_parent_span_id(absl::HexStringToBytes(s.parent_span_id));
    }
    span->set_name(Utf8(s.name));
    span->set_kind(Kind(s.kind));
    span->set_start_time_unix_nano(UnixNanos(s.start));
    span->set_end_time_unix_nano(UnixNanos(s.end));
    for (const auto& [key, value] : s.attributes) {
      SetAttribute(key, value, span->add_attributes());
    }
    for (const common::SpanLink& l : s.links) {
      otlp::Span::Link* link = span->add_links();
      link->set_trace_id(absl::HexStringToBytes(l.trace_id));
      link->set_span_id(absl::HexStringToBytes(l.span_id));
    }
    if (s.error) {
      span->mutable_status()->set_code(otlp::Status::STATUS_CODE_ERROR);
      span->mutable_status()->set_message(Utf8(s.status_message));
    }
  }
  return request;
}

std::string OtlpTracesJson(const std::vector<common::Span>& spans,
                           const std::string& service_name,
                           const KeyValues& resource_attributes) {
  return OtlpJson(OtlpTracesRequest(spans, service_name, resource_attributes));
}

}  // namespace moe::server
