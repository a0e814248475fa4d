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
// Across processes: a recorded span's context travels on as a traceparent
// (TraceparentOf) in the calls it makes, so the callee's span is its child:
// the router sends each worker call's span to the worker. A call made on
// behalf of several traced calls (a batched worker call) is the child of
// one of them and links the others (Span::links).
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

// OpenTelemetry's span kinds that moe-serve makes.
enum class SpanKind {
  kServer,    // a call served
  kClient,    // a call made (the router's worker calls)
  kInternal,  // a part of a call's work (a forward's or a worker call's phases)
};

// Another span a span relates to without being its child.
struct SpanLink {
  std::string trace_id;
  std::string span_id;
};

struct Span {
  std::string name;
  std::string trace_id;        // 32 lowercase hex digits
  std::string span_id;         // 16 lowercase hex digits
  std::string parent_span_id;  // the caller's span; empty: a trace's root
  SpanKind kind = SpanKind::kServer;
  absl::Time start;
  absl::Time end;
  std::vector<std::pair<std::string, SpanAttribute>> attributes;
  std::vector<SpanLink> links;
  bool error = false;
  std::string status_message;  // why, when error
};

// The gRPC metadata key of the other spans a call's span links, one
// traceparent value each (the router's batched worker calls), and the most
// a call's span keeps.
inline constexpr char kTraceLinkKey[] = "moe-trace-link";
inline constexpr size_t kMaxSpanLinks = 16;

// The W3C traceparent that makes a callee's span a child of `span`
// (sampled: `span` is recorded).
std::string TraceparentOf(const Span& span);

class Tracer;

// A part of a recorded span's work, from `start` to `end`.
struct SpanPhase {
  const char* name;
  absl::Time start;
  absl::Time end;
  std::vector<std::pair<std::string, SpanAttribute>> attributes = {};
};
// Ends `phases` as INTERNAL spans, children of `parent` (a recorded span),
// each from its start to its end (no earlier than its start).
void EndPhaseSpans(const Tracer& tracer, const Span& parent,
                   const std::vector<SpanPhase>& phases);

class Tracer {
 public:
  // `root_ratio`: the share of calls without a usable caller context that
  // start a trace (0 to 1).
  Tracer(double root_ratio, std::function<void(Span)> sink);

  // A span named `name` for a call that started at `start` with the
  // caller's `traceparent` (may be empty), or nullopt when the call is not
  // recorded.
  std::optional<Span> Start(absl::string_view name,
                            absl::string_view traceparent, absl::Time start,
                            SpanKind kind = SpanKind::kServer) const;
  // Hands a finished span to the sink.
  void End(Span span) const { sink_(std::move(span)); }

  double root_ratio() const { return root_ratio_; }

 private:
  const double root_ratio_;
  const std::function<void(Span)> sink_;
};

}  // namespace moe::common
