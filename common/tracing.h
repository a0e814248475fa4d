// Distributed tracing of served calls: a span per call, placed in the
// caller's trace by the W3C trace context it sends ("traceparent",
// request_id.h), handed to a sink as the call ends (the OTLP exporter of
// server/otlp_exporter.h sends them to a collector).
//
// Which calls are recorded (OpenTelemetry's parent-based sampling): a call
// whose caller's context is sampled (flags 01) is recorded, as a child of
// the caller's span; one whose caller's context is not sampled is not; one
// without a usable context starts a new trace with probability
// `root_ratio`.
//
// Example:
//   Tracer tracer(0.01, [&](Span s) { exporter->Export(std::move(s)); });
//   std::optional<Span> span = tracer.Start("moe.v1.Router/Forward",
//                                           traceparent, start);
//   ... serve ...
//   if (span) { span->end = Now(); span->attributes.push_back(...);
//               tracer.End(*std::move(span)); }
//
// Thread-safety: a Tracer may be used from any thread; its sink is called on
// the thread that ends a span and must not block.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace moe::common {

// A caller's trace context, from a usable traceparent value.
struct TraceParent {
  std::string trace_id;  // 32 lowercase hex digits
  std::string span_id;   // the caller's span: 16 lowercase hex digits
  bool sampled = false;  // the caller records this trace (flags bit 0)
};
// nullopt when `value` is not a usable traceparent (as TraceIdOf decides).
std::optional<TraceParent> ParseTraceparent(absl::string_view value);

using SpanAttribute = std::variant<std::string, int64_t, bool>;

struct Span {
  std::string name;
  std::string trace_id;        // 32 lowercase hex digits
  std::string span_id;         // 16 lowercase hex digits
  std::string parent_span_id;  // the caller's span; empty: a trace's root
  absl::Time start;
  absl::Time end;
  std::vector<std::pair<std::string, SpanAttribute>> attributes;
  bool error = false;
  std::string status_message;  // why, when error
};

class Tracer {
 public:
  // `root_ratio`: the share of calls without a usable caller context that
  // start a trace (0 to 1).
  Tracer(double root_ratio, std::function<void(Span)> sink);

  // A span named `name` for a call that started at `start` with the
  // caller's `traceparent` (may be empty), or nullopt when the call is not
  // recorded.
  std::optional<Span> Start(absl::string_view name,
                            absl::string_view traceparent,
                            absl::Time start) const;
  // Hands a finished span to the sink.
  void End(Span span) const { sink_(std::move(span)); }

  double root_ratio() const { return root_ratio_; }

 private:
  const double root_ratio_;
  const std::function<void(Span)> sink_;
};

}  // namespace moe::common
