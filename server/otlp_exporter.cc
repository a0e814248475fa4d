#include "server/otlp_exporter.h"

#include <httplib.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "moe_version.h"

namespace moe::server {
namespace {

std::string UnixNanos(absl::Time t) {
  return std::to_string(absl::ToUnixNanos(t));
}

nlohmann::json Attribute(const std::string& key,
                         const common::SpanAttribute& value) {
  nlohmann::json v;
  if (const auto* s = std::get_if<std::string>(&value)) {
    v["stringValue"] = *s;
  } else if (const auto* i = std::get_if<int64_t>(&value)) {
    v["intValue"] = std::to_string(*i);  // int64 as a string, as proto3 JSON
  } else {
    v["boolValue"] = std::get<bool>(value);
  }
  return {{"key", key}, {"value", v}};
}

// OTLP's SpanKind values.
int Kind(common::SpanKind kind) {
  switch (kind) {
    case common::SpanKind::kServer:
      return 2;  // SPAN_KIND_SERVER
    case common::SpanKind::kClient:
      return 3;  // SPAN_KIND_CLIENT
  }
  return 0;  // SPAN_KIND_UNSPECIFIED
}

}  // namespace

std::string OtlpTracesJson(const std::vector<common::Span>& spans,
                           const std::string& service_name,
                           const KeyValues& resource_attributes) {
  nlohmann::json out_spans = nlohmann::json::array();
  for (const common::Span& s : spans) {
    nlohmann::json span = {{"traceId", s.trace_id},
                           {"spanId", s.span_id},
                           {"name", s.name},
                           {"kind", Kind(s.kind)},
                           {"startTimeUnixNano", UnixNanos(s.start)},
                           {"endTimeUnixNano", UnixNanos(s.end)}};
    if (!s.parent_span_id.empty()) span["parentSpanId"] = s.parent_span_id;
    nlohmann::json attributes = nlohmann::json::array();
    for (const auto& [key, value] : s.attributes) {
      attributes.push_back(Attribute(key, value));
    }
    span["attributes"] = std::move(attributes);
    if (!s.links.empty()) {
      nlohmann::json links = nlohmann::json::array();
      for (const common::SpanLink& l : s.links) {
        links.push_back({{"traceId", l.trace_id}, {"spanId", l.span_id}});
      }
      span["links"] = std::move(links);
    }
    if (s.error) {
      span["status"] = {{"code", 2}, {"message", s.status_message}};
    }
    out_spans.push_back(std::move(span));
  }
  nlohmann::json resource = {
      Attribute("service.name", service_name),
      Attribute("service.version", std::string(kVersion))};
  for (const auto& [key, value] : resource_attributes) {
    resource.push_back(Attribute(key, value));
  }
  nlohmann::json body = {
      {"resourceSpans",
       {{{"resource", {{"attributes", std::move(resource)}}},
         {"scopeSpans",
          {{{"scope", {{"name", "moe-serve"}, {"version", kVersion}}},
            {"spans", std::move(out_spans)}}}}}}}};
  // Bytes that are not UTF-8 (a layer name a client sent) become U+FFFD.
  return body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

absl::StatusOr<std::unique_ptr<OtlpExporter>> OtlpExporter::Create(
    const Options& options) {
  const std::string& e = options.endpoint;
  const size_t scheme = absl::StartsWith(e, "http://")    ? 7
                        : absl::StartsWith(e, "https://") ? 8
                                                          : std::string::npos;
  if (scheme == std::string::npos || e.size() == scheme) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", e,
                     "\": not an http:// or https:// URL (e.g. "
                     "http://otel-collector:4318/v1/traces)"));
  }
  if (options.max_batch < 1 || options.max_queued < 1) {
    return absl::InvalidArgumentError(
        "OTLP: batch and queue sizes must be >= 1");
  }
  auto exporter = std::unique_ptr<OtlpExporter>(new OtlpExporter(options));
  const size_t slash = e.find('/', scheme);
  exporter->scheme_host_port_ = e.substr(0, slash);
  exporter->path_ = slash == std::string::npos ? "/v1/traces" : e.substr(slash);
  OtlpExporter* self = exporter.get();
  exporter->thread_ = std::thread([self] { self->Loop(); });
  return exporter;
}

OtlpExporter::OtlpExporter(const Options& options) : options_(options) {}

OtlpExporter::~OtlpExporter() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void OtlpExporter::Export(common::Span span) {
  absl::MutexLock lock(&mu_);
  if (stopping_ || static_cast<int>(queue_.size()) >= options_.max_queued) {
    ++dropped_;
    return;
  }
  queue_.push_back(std::move(span));
}

int64_t OtlpExporter::exported() const {
  absl::MutexLock lock(&mu_);
  return exported_;
}

int64_t OtlpExporter::dropped() const {
  absl::MutexLock lock(&mu_);
  return dropped_;
}

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
    if (!batch.empty()) {
      const bool ok = Send(batch);
      absl::MutexLock lock(&mu_);
      (ok ? exported_ : dropped_) += static_cast<int64_t>(batch.size());
      // Stopping, a collector that failed once gets no more tries: the
      // process's exit waits for no more timeouts.
      if (!ok && stopping_) {
        dropped_ += static_cast<int64_t>(queue_.size());
        queue_.clear();
        last = true;
      }
    }
    if (last) return;
  }
}

bool OtlpExporter::Send(const std::vector<common::Span>& batch) {
  httplib::Client client(scheme_host_port_);
  const int64_t ms = absl::ToInt64Milliseconds(options_.timeout);
  client.set_connection_timeout(ms / 1000, (ms % 1000) * 1000);
  client.set_read_timeout(ms / 1000, (ms % 1000) * 1000);
  client.set_write_timeout(ms / 1000, (ms % 1000) * 1000);
  if (!options_.ca_file.empty()) client.set_ca_cert_path(options_.ca_file);
  client.enable_server_certificate_verification(true);
  httplib::Headers headers(options_.headers.begin(), options_.headers.end());
  httplib::Result res =
      client.Post(path_, headers,
                  OtlpTracesJson(batch, options_.service_name,
                                 options_.resource_attributes),
                  "application/json");
  if (res && res->status >= 200 && res->status < 300) return true;
  const absl::Time now = absl::Now();
  if (now - last_complaint_ >= absl::Minutes(1)) {
    last_complaint_ = now;
    MOE_LOG(WARNING) << "tracing: the collector at " << options_.endpoint
                     << " did not take " << batch.size() << " span(s): "
                     << (res ? absl::StrCat("HTTP ", res->status, " ",
                                            res->body.substr(0, 200))
                             : httplib::to_string(res.error()))
                     << " (dropped; said once a minute at most)";
  }
  return false;
}

}  // namespace moe::server
