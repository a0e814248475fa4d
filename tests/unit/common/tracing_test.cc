// Tracer (common/tracing.h): which calls it records and where their spans
// hang; and the OTLP/JSON body of server/otlp_exporter.h.
#include "common/tracing.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "server/otlp_exporter.h"

namespace moe {
namespace {

using common::Span;
using common::Tracer;

const std::string kTrace = "0af7651916cd43dd8448eb211c80319c";
const std::string kParent = "b7ad6b7169203331";

bool Hex(const std::string& s, size_t digits) {
  return s.size() == digits &&
         s.find_first_not_of("0123456789abcdef") == std::string::npos &&
         s.find_first_not_of('0') != std::string::npos;
}

TEST(TracingTest, TraceparentGivesTraceCallerAndSampledFlag) {
  auto p = common::ParseTraceparent("00-" + kTrace + "-" + kParent + "-01");
  ASSERT_TRUE(p.has_value());
  EXPECT_EQ(p->trace_id, kTrace);
  EXPECT_EQ(p->span_id, kParent);
  EXPECT_TRUE(p->sampled);
  p = common::ParseTraceparent("00-" + kTrace + "-" + kParent + "-02");
  ASSERT_TRUE(p.has_value());
  EXPECT_FALSE(p->sampled);
  // A later version's value with more fields; flags 03 has the bit.
  p = common::ParseTraceparent("01-" + kTrace + "-" + kParent + "-03-x");
  ASSERT_TRUE(p.has_value());
  EXPECT_TRUE(p->sampled);
  for (const std::string& bad :
       {std::string(), "00-" + kTrace + "-" + kParent,
        "00-" + std::string(32, '0') + "-" + kParent + "-01",
        "00-" + kTrace + "-" + kParent + "-0g"}) {
    EXPECT_FALSE(common::ParseTraceparent(bad).has_value()) << bad;
  }
}

TEST(TracingTest, SampledCallersGetChildSpansUnsampledOnesNone) {
  Tracer tracer(/*root_ratio=*/0, [](Span) {});
  const absl::Time start = absl::FromUnixSeconds(1700000000);
  auto span = tracer.Start("moe.v1.Router/Forward",
                           "00-" + kTrace + "-" + kParent + "-01", start);
  ASSERT_TRUE(span.has_value());
  EXPECT_EQ(span->name, "moe.v1.Router/Forward");
  EXPECT_EQ(span->trace_id, kTrace);
  EXPECT_EQ(span->parent_span_id, kParent);
  EXPECT_TRUE(Hex(span->span_id, 16)) << span->span_id;
  EXPECT_EQ(span->start, start);
  EXPECT_FALSE(
      tracer.Start("f", "00-" + kTrace + "-" + kParent + "-00", start));
  EXPECT_FALSE(tracer.Start("f", "", start));
  EXPECT_FALSE(tracer.Start("f", "not a traceparent", start));
}

TEST(TracingTest, TheRootRatioStartsTracesForCallsWithoutAContext) {
  Tracer all(1, [](Span) {});
  std::set<std::string> traces, spans;
  for (int i = 0; i < 100; ++i) {
    auto span = all.Start("f", "", absl::Now());
    ASSERT_TRUE(span.has_value());
    EXPECT_TRUE(Hex(span->trace_id, 32)) << span->trace_id;
    EXPECT_TRUE(span->parent_span_id.empty());
    traces.insert(span->trace_id);
    spans.insert(span->span_id);
  }
  EXPECT_EQ(traces.size(), 100u);
  EXPECT_EQ(spans.size(), 100u);
  // A caller's unsampled context is followed even so.
  EXPECT_FALSE(
      all.Start("f", "00-" + kTrace + "-" + kParent + "-00", absl::Now()));
  Tracer some(0.25, [](Span) {});
  int recorded = 0;
  for (int i = 0; i < 4000; ++i)
    recorded += some.Start("f", "", absl::Now()) ? 1 : 0;
  EXPECT_GT(recorded, 800);  // 1000 expected; 6 standard deviations off
  EXPECT_LT(recorded, 1200);
}

TEST(TracingTest, EndHandsTheSpanToTheSink) {
  std::vector<Span> got;
  Tracer tracer(1, [&](Span s) { got.push_back(std::move(s)); });
  auto span = tracer.Start("f", "", absl::Now());
  ASSERT_TRUE(span.has_value());
  span->attributes.emplace_back("moe.tokens", int64_t{32});
  tracer.End(*std::move(span));
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].attributes.size(), 1u);
}

TEST(OtlpJsonTest, SpansBecomeAnExportTraceServiceRequest) {
  Span ok;
  ok.name = "moe.v1.Router/Forward";
  ok.trace_id = kTrace;
  ok.span_id = "00f067aa0ba902b7";
  ok.parent_span_id = kParent;
  ok.start = absl::FromUnixNanos(1700000000123456789);
  ok.end = ok.start + absl::Microseconds(250);
  ok.attributes = {{"moe.layer", std::string("layers.0.ff\xff")},
                   {"moe.tokens", int64_t{1} << 40},
                   {"moe.degraded", false}};
  Span failed = ok;
  failed.parent_span_id.clear();
  failed.error = true;
  failed.status_message = "NOT_FOUND: no layer \"x\"";
  const nlohmann::json body =
      nlohmann::json::parse(server::OtlpTracesJson({ok, failed}, "moe-router"));
  const nlohmann::json& rs = body["resourceSpans"].at(0);
  EXPECT_EQ(rs["resource"]["attributes"][0],
            nlohmann::json({{"key", "service.name"},
                            {"value", {{"stringValue", "moe-router"}}}}));
  const nlohmann::json& scope = rs["scopeSpans"].at(0);
  EXPECT_EQ(scope["scope"]["name"], "moe-serve");
  const nlohmann::json& a = scope["spans"].at(0);
  EXPECT_EQ(a["traceId"], kTrace);
  EXPECT_EQ(a["spanId"], "00f067aa0ba902b7");
  EXPECT_EQ(a["parentSpanId"], kParent);
  EXPECT_EQ(a["kind"], 2);
  EXPECT_EQ(a["startTimeUnixNano"], "1700000000123456789");
  EXPECT_EQ(a["endTimeUnixNano"], "1700000000123706789");
  EXPECT_EQ(a["attributes"][0]["value"]["stringValue"],
            "layers.0.ff\xef\xbf\xbd");  // U+FFFD for the byte
  EXPECT_EQ(a["attributes"][1]["value"]["intValue"], "1099511627776");
  EXPECT_EQ(a["attributes"][2]["value"]["boolValue"], false);
  EXPECT_FALSE(a.contains("status"));
  const nlohmann::json& b = scope["spans"].at(1);
  EXPECT_FALSE(b.contains("parentSpanId"));
  EXPECT_EQ(b["status"]["code"], 2);
  EXPECT_EQ(b["status"]["message"], "NOT_FOUND: no layer \"x\"");
}

// Nothing listens on port 1 of 127.0.0.1: a collector that refuses.
TEST(OtlpExporterTest, AFullQueueDropsAndARefusingCollectorHoldsNoExit) {
  server::OtlpExporter::Options o;
  o.endpoint = "http://127.0.0.1:1/v1/traces";
  o.service_name = "test";
  o.interval = absl::Hours(1);
  o.max_batch = 1000;
  o.max_queued = 4;
  auto exporter = server::OtlpExporter::Create(o);
  ASSERT_TRUE(exporter.ok()) << exporter.status();
  Tracer tracer(1, [&](Span s) { (*exporter)->Export(std::move(s)); });
  for (int i = 0; i < 10; ++i) {
    auto span = tracer.Start("f", "", absl::Now());
    span->end = absl::Now();
    tracer.End(*std::move(span));
  }
  EXPECT_EQ((*exporter)->dropped(), 6);  // past the 4 that may wait
  EXPECT_EQ((*exporter)->exported(), 0);
  const absl::Time start = absl::Now();
  exporter->reset();  // one refused POST, then nothing more to wait for
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

TEST(OtlpExporterTest, EndpointsThatAreNotHttpUrlsAreRefused) {
  for (const char* bad :
       {"", "collector:4318", "grpc://collector:4317", "http://"}) {
    server::OtlpExporter::Options o;
    o.endpoint = bad;
    auto exporter = server::OtlpExporter::Create(o);
    EXPECT_EQ(exporter.status().code(), absl::StatusCode::kInvalidArgument)
        << bad;
  }
}

}  // namespace
}  // namespace moe
