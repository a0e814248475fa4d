#include "common/tracing.h"

#include <algorithm>

#include "absl/random/random.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/request_id.h"

namespace moe::common {
namespace {

// `words` random 64-bit words as lowercase hex, never all zeros.
std::string RandomHex(int words) {
  thread_local absl::BitGen gen;
  std::string out;
  for (int i = 0; i < words; ++i) {
    uint64_t v = absl::Uniform<uint64_t>(gen);
    if (v == 0) v = 1;
    absl::StrAppendFormat(&out, "%016x", v);
  }
  return out;
}

}  // namespace

std::optional<TraceParent> ParseTraceparent(absl::string_view value) {
  const absl::string_view trace = TraceIdOf(value);
  if (trace.empty()) return std::nullopt;
  uint32_t flags = 0;
  if (!absl::SimpleHexAtoi(value.substr(53, 2), &flags)) return std::nullopt;
  return TraceParent{std::string(trace), std::string(value.substr(36, 16)),
                     (flags & 1) != 0};
}

std::string TraceparentOf(const Span& span) {
  return absl::StrCat("00-", span.trace_id, "-", span.span_id, "-01");
}

Tracer::Tracer(double root_ratio, std::function<void(Span)> sink)
    : root_ratio_(root_ratio), sink_(std::move(sink)) {}

std::optional<Span> Tracer::Start(absl::string_view name,
                                  absl::string_view traceparent,
                                  absl::Time start, SpanKind kind) const {
  Span span;
  span.kind = kind;
  if (std::optional<TraceParent> parent = ParseTraceparent(traceparent)) {
    if (!parent->sampled) return std::nullopt;
    span.trace_id = std::move(parent->trace_id);
    span.parent_span_id = std::move(parent->span_id);
  } else {
    thread_local absl::BitGen gen;
    if (root_ratio_ <= 0 ||
        (root_ratio_ < 1 && !absl::Bernoulli(gen, root_ratio_))) {
      return std::nullopt;
    }
    span.trace_id = RandomHex(2);
  }
  span.name = std::string(name);
  span.span_id = RandomHex(1);
  span.start = start;
  return span;
}

void EndPhaseSpans(const Tracer& tracer, const Span& parent,
                   const std::vector<SpanPhase>& phases) {
  const std::string traceparent = TraceparentOf(parent);
  for (const SpanPhase& phase : phases) {
    std::optional<Span> span =
        tracer.Start(phase.name, traceparent, phase.start, SpanKind::kInternal);
    if (!span) continue;
    span->end = std::max(phase.start, phase.end);
    span->attributes = phase.attributes;
    tracer.End(*std::move(span));
  }
}

}  // namespace moe::common
