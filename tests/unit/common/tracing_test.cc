// Tracer (common/tracing.h): which calls it records and where their spans
// hang; the OTLP bodies of server/otlp_traces.h and the transports of
// server/otlp_exporter.h.
#include "common/tracing.h"

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <prometheus/registry.h>

#include <deque>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "otlp/rpc_status.pb.h"
#include "otlp/trace_service.grpc.pb.h"
#include "server/otel_environment.h"
#include "server/otlp_exporter.h"
#include "server/otlp_traces.h"

namespace moe {
namespace {

using common::Span;
using common::Tracer;

const std::string kTrace = "0af7651916cd43dd8448eb211c80319c";
const std::string kParent = "b7ad6b7169203331";

// moe_trace_spans_total{outcome} in `registry`; -1 when absent.
double SpansOf(prometheus::Registry& registry, const std::string& outcome) {
  for (const prometheus::MetricFamily& f : registry.Collect()) {
    if (f.name != "moe_trace_spans_total") continue;
    for (const prometheus::ClientMetric& m : f.metric) {
      if (m.label.size() == 1 && m.label[0].value == outcome) {
        return m.counter.value;
      }
    }
  }
  return -1;
}

// Records `n` spans named `name` (root spans: a ratio of 1) into
// `exporter`.
void RecordSpans(server::OtlpExporter& exporter, int n,
                 const std::string& name = "f") {
  Tracer tracer(1, [&](Span s) { exporter.Export(std::move(s)); });
  for (int i = 0; i < n; ++i) {
    auto span = tracer.Start(name, "", absl::Now());
    span->end = absl::Now();
    tracer.End(*std::move(span));
  }
}

// A router's Forward span of 250 us, child of kParent, with no attributes.
Span AForwardSpan() {
  Span s;
  s.name = "moe.v1.Router/Forward";
  s.trace_id = kTrace;
  s.span_id = "00f067aa0ba902b7";
  s.parent_span_id = kParent;
  s.start = absl::FromUnixNanos(1700000000123456789);
  s.end = s.start + absl::Microseconds(250);
  return s;
}

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

TEST(TracingTest, ASpansTraceparentMakesItsCalleesChildren) {
  Tracer tracer(/*root_ratio=*/0, [](Span) {});
  const absl::Time start = absl::FromUnixSeconds(1700000000);
  auto call = tracer.Start("moe.v1.ExpertWorker/RunExperts",
                           "00-" + kTrace + "-" + kParent + "-01", start,
                           common::SpanKind::kClient);
  ASSERT_TRUE(call.has_value());
  EXPECT_EQ(call->kind, common::SpanKind::kClient);
  const std::string context = common::TraceparentOf(*call);
  EXPECT_EQ(context, "00-" + kTrace + "-" + call->span_id + "-01");
  auto served = tracer.Start("moe.v1.ExpertWorker/RunExperts", context, start);
  ASSERT_TRUE(served.has_value());
  EXPECT_EQ(served->kind, common::SpanKind::kServer);
  EXPECT_EQ(served->trace_id, kTrace);
  EXPECT_EQ(served->parent_span_id, call->span_id);
  EXPECT_NE(served->span_id, call->span_id);
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
  Span ok = AForwardSpan();
  ok.attributes = {{"moe.layer", std::string("layers.0.ff\xff")},
                   {"moe.tokens", int64_t{1} << 40},
                   {"moe.degraded", false}};
  Span failed = ok;
  failed.parent_span_id.clear();
  failed.kind = common::SpanKind::kClient;
  failed.links = {{kTrace, "1111111111111111"}, {kTrace, "2222222222222222"}};
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
  EXPECT_FALSE(a.contains("links"));
  const nlohmann::json& b = scope["spans"].at(1);
  EXPECT_FALSE(b.contains("parentSpanId"));
  EXPECT_EQ(b["kind"], 3);  // SPAN_KIND_CLIENT
  EXPECT_EQ(b["links"], nlohmann::json::parse(
                            R"([{"traceId":")" + kTrace +
                            R"(","spanId":"1111111111111111"},{"traceId":")" +
                            kTrace + R"(","spanId":"2222222222222222"}])"));
  EXPECT_EQ(b["status"]["code"], 2);
  EXPECT_EQ(b["status"]["message"], "NOT_FOUND: no layer \"x\"");
}

// Nothing listens on port 1 of 127.0.0.1: a collector that refuses.
TEST(OtlpExporterTest, AFullQueueDropsAndARefusingCollectorHoldsNoExit) {
  prometheus::Registry registry;
  server::OtlpExporter::Options o;
  o.registry = &registry;
  o.endpoint = "http://127.0.0.1:1/v1/traces";
  o.service_name = "test";
  o.interval = absl::Hours(1);
  o.max_batch = 1000;
  o.max_queued = 4;
  auto exporter = server::OtlpExporter::Create(o);
  ASSERT_TRUE(exporter.ok()) << exporter.status();
  RecordSpans(**exporter, 10);
  EXPECT_EQ((*exporter)->dropped(), 6);  // past the 4 that may wait
  EXPECT_EQ((*exporter)->exported(), 0);
  EXPECT_EQ(SpansOf(registry, "not_queued"), 6);
  EXPECT_EQ(SpansOf(registry, "failed"), 0);
  const absl::Time start = absl::Now();
  exporter->reset();  // one refused POST, then nothing more to wait for
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_EQ(SpansOf(registry, "failed"), 4);
  EXPECT_EQ(SpansOf(registry, "exported"), 0);
  EXPECT_EQ(SpansOf(registry, "rejected"), 0);
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

TEST(OtlpProtobufTest, TheRequestCarriesTheSpansAsOtlpBytes) {
  Span s = AForwardSpan();
  s.kind = common::SpanKind::kClient;
  s.attributes = {{"moe.tokens", int64_t{1} << 40}, {"moe.inline", true}};
  s.links = {{kTrace, "1111111111111111"}};
  s.error = true;
  s.status_message = "UNAVAILABLE";
  const otlp::ExportTraceServiceRequest sent = server::OtlpTracesRequest(
      {s}, "moe-router", {{"k8s.pod.name", "router-0"}});
  otlp::ExportTraceServiceRequest request;
  ASSERT_TRUE(request.ParseFromString(sent.SerializeAsString()));
  ASSERT_EQ(request.resource_spans_size(), 1);
  const otlp::Resource& resource = request.resource_spans(0).resource();
  ASSERT_EQ(resource.attributes_size(), 3);
  EXPECT_EQ(resource.attributes(0).key(), "service.name");
  EXPECT_EQ(resource.attributes(0).value().string_value(), "moe-router");
  EXPECT_EQ(resource.attributes(2).value().string_value(), "router-0");
  const otlp::ScopeSpans& scope = request.resource_spans(0).scope_spans(0);
  EXPECT_EQ(scope.scope().name(), "moe-serve");
  ASSERT_EQ(scope.spans_size(), 1);
  const otlp::Span& span = scope.spans(0);
  EXPECT_EQ(absl::BytesToHexString(span.trace_id()), kTrace);
  EXPECT_EQ(span.trace_id().size(), 16u);
  EXPECT_EQ(absl::BytesToHexString(span.span_id()), "00f067aa0ba902b7");
  EXPECT_EQ(absl::BytesToHexString(span.parent_span_id()), kParent);
  EXPECT_EQ(span.kind(), otlp::Span::SPAN_KIND_CLIENT);
  EXPECT_EQ(span.start_time_unix_nano(), 1700000000123456789u);
  EXPECT_EQ(span.end_time_unix_nano(), 1700000000123706789u);
  ASSERT_EQ(span.attributes_size(), 2);
  EXPECT_EQ(span.attributes(0).value().int_value(), int64_t{1} << 40);
  EXPECT_TRUE(span.attributes(1).value().bool_value());
  ASSERT_EQ(span.links_size(), 1);
  EXPECT_EQ(absl::BytesToHexString(span.links(0).span_id()),
            "1111111111111111");
  EXPECT_EQ(span.status().code(), otlp::Status::STATUS_CODE_ERROR);
  EXPECT_EQ(span.status().message(), "UNAVAILABLE");
}

// A receiver refuses a protobuf message with a string that is not UTF-8:
// every bad byte becomes U+FFFD, well-formed text stays as it is.
TEST(OtlpProtobufTest, TextThatIsNotUtf8HasItsBadBytesReplaced) {
  const std::string fffd = "\xef\xbf\xbd";
  for (const auto& [text, sent] :
       std::vector<std::pair<std::string, std::string>>{
           {"layers.0.ff", "layers.0.ff"},
           {"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80",
            "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"},
           {"x\xff", "x" + fffd},
           {"\xe2\x82", fffd + fffd},                        // cut short
           {"\xc0\xaf", fffd + fffd},                        // overlong '/'
           {"\xed\xa0\x80", fffd + fffd + fffd},             // a surrogate
           {"\xf4\x90\x80\x80", fffd + fffd + fffd + fffd},  // > U+10FFFF
           {"\x80"
            "a",
            fffd + "a"}}) {
    Span s;
    s.name = text;
    s.trace_id = kTrace;
    s.span_id = kParent;
    s.attributes = {{text, text}};
    s.error = true;
    s.status_message = text;
    otlp::ExportTraceServiceRequest request;
    ASSERT_TRUE(request.ParseFromString(
        server::OtlpTracesRequest({s}, text).SerializeAsString()))
        << absl::CHexEscape(text);
    const otlp::Span& span = request.resource_spans(0).scope_spans(0).spans(0);
    EXPECT_EQ(span.name(), sent) << absl::CHexEscape(text);
    EXPECT_EQ(span.attributes(0).key(), sent);
    EXPECT_EQ(span.attributes(0).value().string_value(), sent);
    EXPECT_EQ(span.status().message(), sent);
    EXPECT_EQ(request.resource_spans(0)
                  .resource()
                  .attributes(0)
                  .value()
                  .string_value(),
              sent);
  }
}

TEST(OtlpProtocolTest, CompressionIsGzipOrNone) {
  EXPECT_EQ(server::ParseOtlpGzip("gzip").value_or(false), true);
  EXPECT_EQ(server::ParseOtlpGzip("none").value_or(true), false);
  for (const char* bad : {"", "GZIP", "zstd", "deflate"}) {
    auto g = server::ParseOtlpGzip(bad);
    EXPECT_EQ(g.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(g.status().message().find("gzip or none"), std::string::npos);
  }
}

TEST(OtlpProtocolTest, TheThreeNamesOfTheSpecAndNoOther) {
  for (const char* name : {"http/json", "http/protobuf", "grpc"}) {
    auto p = server::ParseOtlpProtocol(name);
    ASSERT_TRUE(p.ok()) << name;
    EXPECT_EQ(server::OtlpProtocolName(*p), name);
  }
  for (const char* bad : {"", "http", "HTTP/JSON", "grpc/protobuf"}) {
    auto p = server::ParseOtlpProtocol(bad);
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(p.status().message().find("http/json, http/protobuf or grpc"),
              std::string::npos);
  }
}

// An OTLP/gRPC receiver in this process: keeps each Export's request and
// metadata, and rejects `reject` spans of each in a partial success.
class GrpcCollector final
    : public opentelemetry::proto::collector::trace::v1::TraceService::Service {
 public:
  explicit GrpcCollector(int64_t reject) : reject_(reject) {
    grpc::ServerBuilder builder;
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port_);
    builder.RegisterService(this);
    server_ = builder.BuildAndStart();
  }
  ~GrpcCollector() override { server_->Shutdown(); }
  grpc::Status Export(grpc::ServerContext* context,
                      const otlp::ExportTraceServiceRequest* request,
                      otlp::ExportTraceServiceResponse* response) override {
    absl::MutexLock lock(&mu_);
    requests_.push_back(*request);
    for (const auto& [key, value] : context->client_metadata()) {
      metadata_.emplace(std::string(key.data(), key.size()),
                        std::string(value.data(), value.size()));
    }
    if (!failures_.empty()) {
      grpc::Status failure = failures_.front();
      failures_.pop_front();
      return failure;
    }
    if (reject_ > 0) {
      response->mutable_partial_success()->set_rejected_spans(reject_);
      response->mutable_partial_success()->set_error_message("too old");
    }
    return grpc::Status::OK;
  }
  int port() const { return port_; }
  // The next calls fail with `failures`, one each, in order.
  void FailFirst(std::vector<grpc::Status> failures) {
    absl::MutexLock lock(&mu_);
    failures_.assign(failures.begin(), failures.end());
  }
  std::vector<otlp::ExportTraceServiceRequest> requests() {
    absl::MutexLock lock(&mu_);
    return requests_;
  }
  std::multimap<std::string, std::string> metadata() {
    absl::MutexLock lock(&mu_);
    return metadata_;
  }

 private:
  const int64_t reject_;
  int port_ = 0;
  std::unique_ptr<grpc::Server> server_;
  absl::Mutex mu_;
  std::vector<otlp::ExportTraceServiceRequest> requests_ ABSL_GUARDED_BY(mu_);
  std::multimap<std::string, std::string> metadata_ ABSL_GUARDED_BY(mu_);
  std::deque<grpc::Status> failures_ ABSL_GUARDED_BY(mu_);
};

// (gzip-compressed: the receiver inflates it.)
TEST(OtlpExporterTest, GrpcExportsCarryTheResourceAndTheHeaders) {
  GrpcCollector collector(/*reject=*/0);
  server::OtlpExporter::Options o;
  o.gzip = true;
  o.endpoint = absl::StrCat("http://127.0.0.1:", collector.port());
  o.protocol = server::OtlpProtocol::kGrpc;
  o.service_name = "moe-expert";
  o.headers = {{"Authorization", "Bearer k"}, {"x-tenant", "moe"}};
  o.interval = absl::Hours(1);  // sent when stopping
  auto exporter = server::OtlpExporter::Create(o);
  ASSERT_TRUE(exporter.ok()) << exporter.status();
  EXPECT_EQ((*exporter)->destination(),
            absl::StrCat("127.0.0.1:", collector.port()));
  RecordSpans(**exporter, 3, "moe.v1.ExpertWorker/RunExperts");
  EXPECT_EQ((*exporter)->exported(), 0);
  exporter->reset();  // stopping sends what waits, in one call
  const auto requests = collector.requests();
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0].resource_spans(0).scope_spans(0).spans_size(), 3);
  EXPECT_EQ(requests[0]
                .resource_spans(0)
                .resource()
                .attributes(0)
                .value()
                .string_value(),
            "moe-expert");
  const auto metadata = collector.metadata();
  auto value = [&metadata](const std::string& key) {
    auto it = metadata.find(key);
    return it == metadata.end() ? std::string("<none>") : it->second;
  };
  EXPECT_EQ(value("authorization"), "Bearer k");  // names in lower case
  EXPECT_EQ(value("x-tenant"), "moe");
}

TEST(OtlpExporterTest, PartialSuccessesCountAsDropped) {
  GrpcCollector collector(/*reject=*/1);
  prometheus::Registry registry;
  server::OtlpExporter::Options o;
  o.registry = &registry;
  o.endpoint = absl::StrCat("http://127.0.0.1:", collector.port(), "/ignored");
  o.protocol = server::OtlpProtocol::kGrpc;
  o.service_name = "moe-router";
  o.interval = absl::Milliseconds(10);
  auto exporter = server::OtlpExporter::Create(o);
  ASSERT_TRUE(exporter.ok()) << exporter.status();
  RecordSpans(**exporter, 2);
  const absl::Time until = absl::Now() + absl::Seconds(20);
  while ((*exporter)->exported() + (*exporter)->dropped() < 2 &&
         absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  // One export of two spans, or two of one: a span rejected in each.
  const size_t calls = collector.requests().size();
  ASSERT_GE(calls, 1u);
  EXPECT_EQ((*exporter)->dropped(), static_cast<int64_t>(calls));
  EXPECT_EQ((*exporter)->exported(), 2 - static_cast<int64_t>(calls));
  EXPECT_EQ(SpansOf(registry, "rejected"), static_cast<double>(calls));
  EXPECT_EQ(SpansOf(registry, "exported"), 2.0 - static_cast<double>(calls));
  EXPECT_EQ(SpansOf(registry, "failed"), 0);
}

// OTLP/HTTP exports share one connection (one TLS handshake for an
// https:// collector, not one a second), in either body form, gzipped when
// asked (the receiver reads the body it inflated).
TEST(OtlpExporterTest, HttpExportsKeepTheirConnection) {
  for (const auto& form : std::vector<std::pair<server::OtlpProtocol, bool>>{
           {server::OtlpProtocol::kHttpJson, false},
           {server::OtlpProtocol::kHttpProtobuf, false},
           {server::OtlpProtocol::kHttpJson, true},
           {server::OtlpProtocol::kHttpProtobuf, true}}) {
    const server::OtlpProtocol protocol = form.first;
    const bool gzip = form.second;
    SCOPED_TRACE(
        absl::StrCat(server::OtlpProtocolName(protocol), " gzip ", gzip));
    httplib::Server collector;
    absl::Mutex mu;
    std::vector<int> ports;
    std::vector<std::string> types, encodings;
    int parsed = 0;
    collector.Post(
        "/v1/traces", [&](const httplib::Request& req, httplib::Response& res) {
          absl::MutexLock lock(&mu);
          ports.push_back(req.remote_port);
          types.push_back(req.get_header_value("Content-Type"));
          encodings.push_back(req.get_header_value("Content-Encoding"));
          otlp::ExportTraceServiceRequest request;
          parsed += protocol == server::OtlpProtocol::kHttpJson
                        ? nlohmann::json::parse(req.body, nullptr, false)
                              .contains("resourceSpans")
                        : request.ParseFromString(req.body) &&
                              request.resource_spans_size() == 1;
          res.set_content("{}", "application/json");
        });
    const int port = collector.bind_to_any_port("127.0.0.1");
    std::thread serving([&] { collector.listen_after_bind(); });
    server::OtlpExporter::Options o;
    o.endpoint = absl::StrCat("http://127.0.0.1:", port, "/v1/traces");
    o.protocol = protocol;
    o.gzip = gzip;
    o.interval = absl::Milliseconds(10);
    auto exporter = server::OtlpExporter::Create(o);
    ASSERT_TRUE(exporter.ok()) << exporter.status();
    for (int i = 1; i <= 3; ++i) {
      RecordSpans(**exporter, 1);
      const absl::Time until = absl::Now() + absl::Seconds(20);
      while ((*exporter)->exported() < i && absl::Now() < until) {
        absl::SleepFor(absl::Milliseconds(5));
      }
    }
    exporter->reset();
    collector.stop();
    serving.join();
    ASSERT_EQ(ports.size(), 3u);
    EXPECT_EQ(ports[1], ports[0]);
    EXPECT_EQ(ports[2], ports[0]);
    EXPECT_EQ(types[0], protocol == server::OtlpProtocol::kHttpJson
                            ? "application/json"
                            : "application/x-protobuf");
    EXPECT_EQ(encodings[0], gzip ? "gzip" : "");
    EXPECT_EQ(parsed, 3);
  }
}

TEST(OtlpExporterTest, AGrpcCollectorThatIsNotThereHoldsNoExit) {
  server::OtlpExporter::Options o;
  o.endpoint = "http://127.0.0.1:1";
  o.protocol = server::OtlpProtocol::kGrpc;
  o.interval = absl::Hours(1);
  auto exporter = server::OtlpExporter::Create(o);
  ASSERT_TRUE(exporter.ok()) << exporter.status();
  RecordSpans(**exporter, 1);
  const absl::Time start = absl::Now();
  exporter->reset();  // one refused call, then nothing more to wait for
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

// An OTLP/HTTP collector that answers its first POSTs as `script` says
// (status and Retry-After, "" for none), then 200; it keeps when each POST
// came.
class ScriptedHttpCollector {
 public:
  explicit ScriptedHttpCollector(
      std::vector<std::pair<int, std::string>> script)
      : script_(script.begin(), script.end()) {
    server_.Post("/v1/traces",
                 [this](const httplib::Request&, httplib::Response& res) {
                   absl::MutexLock lock(&mu_);
                   posts_.push_back(absl::Now());
                   if (script_.empty()) {
                     res.set_content("{}", "application/json");
                     return;
                   }
                   auto [status, retry_after] = script_.front();
                   script_.pop_front();
                   res.status = status;
                   if (!retry_after.empty()) {
                     res.set_header("Retry-After", retry_after);
                   }
                   res.set_content("not now", "text/plain");
                 });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
  }
  ~ScriptedHttpCollector() {
    server_.stop();
    thread_.join();
  }
  std::string endpoint() const {
    return absl::StrCat("http://127.0.0.1:", port_, "/v1/traces");
  }
  std::vector<absl::Time> posts() {
    absl::MutexLock lock(&mu_);
    return posts_;
  }

 private:
  httplib::Server server_;
  int port_ = 0;
  std::thread thread_;
  absl::Mutex mu_;
  std::deque<std::pair<int, std::string>> script_ ABSL_GUARDED_BY(mu_);
  std::vector<absl::Time> posts_ ABSL_GUARDED_BY(mu_);
};

// moe_trace_export_retries_total in `registry`; -1 when absent.
double RetriesOf(prometheus::Registry& registry) {
  for (const prometheus::MetricFamily& f : registry.Collect()) {
    if (f.name == "moe_trace_export_retries_total" && f.metric.size() == 1) {
      return f.metric[0].counter.value;
    }
  }
  return -1;
}

// Options for one span's export to `endpoint`, counted in `registry`,
// retried after backoffs of `backoff` (then twice that).
server::OtlpExporter::Options RetryOptions(
    const std::string& endpoint, prometheus::Registry* registry,
    absl::Duration backoff = absl::Milliseconds(10)) {
  server::OtlpExporter::Options o;
  o.endpoint = endpoint;
  o.registry = registry;
  o.interval = absl::Milliseconds(10);
  o.initial_backoff = backoff;
  o.max_backoff = 2 * backoff;
  return o;
}

// Waits (20 s at most) until `exporter` has exported or dropped `n` spans.
void AwaitOutcomes(const server::OtlpExporter& exporter, int64_t n) {
  const absl::Time until = absl::Now() + absl::Seconds(20);
  while (exporter.exported() + exporter.dropped() < n && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(5));
  }
}

// HTTP 503, 502, 504 and 429 are a collector that will recover: the batch
// is sent again, after the Retry-After it gave (a number of seconds or an
// HTTP date) or else after the backoff.
TEST(OtlpRetryTest, HttpCollectorsThatRecoverGetTheBatchAgain) {
  ScriptedHttpCollector collector(
      {{503, "0"},
       {502, ""},
       {504, ""},
       {429, "Thu, 01 Jan 2015 00:00:00 GMT"}});  // a date past: now
  prometheus::Registry registry;
  auto exporter = server::OtlpExporter::Create(
      RetryOptions(collector.endpoint(), &registry));
  ASSERT_TRUE(exporter.ok()) << exporter.status();
  RecordSpans(**exporter, 1);
  AwaitOutcomes(**exporter, 1);
  EXPECT_EQ((*exporter)->exported(), 1);
  EXPECT_EQ((*exporter)->dropped(), 0);
  EXPECT_EQ(collector.posts().size(), 5u);
  EXPECT_EQ(RetriesOf(registry), 4);
  EXPECT_EQ(SpansOf(registry, "failed"), 0);
}

// The collector's Retry-After is waited for, not the backoff: with a
// backoff of an hour the batch still arrives a second after it was refused
// ("1"), and at once after a date past.
TEST(OtlpRetryTest, RetryAfterSetsTheDelay) {
  ScriptedHttpCollector collector(
      {{503, "1"}, {429, "Wed, 21 Oct 2015 07:28:00 GMT"}});
  prometheus::Registry registry;
  auto exporter = server::OtlpExporter::Create(
      RetryOptions(collector.endpoint(), &registry, absl::Hours(1)));
  ASSERT_TRUE(exporter.ok()) << exporter.status();
  RecordSpans(**exporter, 1);
  AwaitOutcomes(**exporter, 1);
  EXPECT_EQ((*exporter)->exported(), 1);
  const std::vector<absl::Time> posts = collector.posts();
  ASSERT_EQ(posts.size(), 3u);
  EXPECT_GE(posts[1] - posts[0], absl::Milliseconds(950));
  EXPECT_LT(posts[2] - posts[0], absl::Seconds(10));
}

// Other refusals are for good: one send, the batch dropped as failed; so
// is a batch the collector asks to hold longer than max_retry_delay, and
// one refused max_attempts times.
TEST(OtlpRetryTest, RefusalsForGoodAndEndlessOnesDropTheBatch) {
  struct Case {
    std::vector<std::pair<int, std::string>> script;
    size_t posts;
  };
  for (const Case& c : std::vector<Case>{
           {{{400, ""}}, 1},
           {{{401, ""}}, 1},
           {{{404, ""}}, 1},
           {{{413, ""}}, 1},
           {{{500, ""}}, 1},
           {{{503, "120"}}, 1},  // past max_retry_delay (30 s)
           {{{503, ""}, {503, ""}, {503, ""}, {503, ""}, {503, ""}}, 3}}) {
    SCOPED_TRACE(c.script[0].first);
    ScriptedHttpCollector collector(c.script);
    prometheus::Registry registry;
    server::OtlpExporter::Options o =
        RetryOptions(collector.endpoint(), &registry);
    o.max_attempts = 3;
    auto exporter = server::OtlpExporter::Create(o);
    ASSERT_TRUE(exporter.ok()) << exporter.status();
    RecordSpans(**exporter, 1);
    AwaitOutcomes(**exporter, 1);
    EXPECT_EQ(SpansOf(registry, "failed"), 1);
    EXPECT_EQ(SpansOf(registry, "exported"), 0);
    EXPECT_EQ(RetriesOf(registry), static_cast<double>(c.posts - 1));
    exporter->reset();
    EXPECT_EQ(collector.posts().size(), c.posts);
  }
}

// Stopping ends a backoff at once: one more send, then nothing waits.
TEST(OtlpRetryTest, StoppingCutsABackoffShort) {
  ScriptedHttpCollector collector({{503, ""}, {503, ""}, {503, ""}});
  prometheus::Registry registry;
  server::OtlpExporter::Options o =
      RetryOptions(collector.endpoint(), &registry, absl::Hours(1));
  o.export_timeout = absl::Hours(2);  // else the wait would not begin
  auto exporter = server::OtlpExporter::Create(o);
  ASSERT_TRUE(exporter.ok()) << exporter.status();
  RecordSpans(**exporter, 1);
  // Stop only once the exporter waits: the retry is counted as the wait
  // begins (a stop while the first send is under way sends nothing more).
  const absl::Time until = absl::Now() + absl::Seconds(20);
  while (RetriesOf(registry) < 1 && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  ASSERT_EQ(RetriesOf(registry), 1);
  const absl::Time start = absl::Now();
  exporter->reset();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_EQ(collector.posts().size(), 2u);
  EXPECT_EQ(SpansOf(registry, "failed"), 1);
}

// The export timeout bounds a batch's sends and the waits between them:
// with the collector asking for a second each time and 2.5 s, the batch is
// sent at 0 s, 1 s and 2 s at most, then dropped at once (not after five
// sends), saying why.
TEST(OtlpRetryTest, TheExportTimeoutEndsTheRetries) {
  ScriptedHttpCollector collector(
      {{503, "1"}, {503, "1"}, {503, "1"}, {503, "1"}, {503, "1"}});
  prometheus::Registry registry;
  server::OtlpExporter::Options o =
      RetryOptions(collector.endpoint(), &registry);
  o.export_timeout = absl::Milliseconds(2500);
  ::testing::internal::CaptureStderr();
  auto exporter = server::OtlpExporter::Create(o);
  ASSERT_TRUE(exporter.ok()) << exporter.status();
  RecordSpans(**exporter, 1);
  AwaitOutcomes(**exporter, 1);
  exporter->reset();  // the drop is logged after it is counted
  const std::string log = ::testing::internal::GetCapturedStderr();
  EXPECT_NE(log.find("(dropped: the export timeout of 2.5s would pass before "
                     "the next send)"),
            std::string::npos)
      << log;
  EXPECT_EQ(SpansOf(registry, "failed"), 1);
  const std::vector<absl::Time> posts = collector.posts();
  // Three when the first two sends take less than half a second, else two.
  EXPECT_GE(posts.size(), 2u);
  EXPECT_LE(posts.size(), 3u);
  // A send starts within the timeout; it may arrive a little after it.
  EXPECT_LT(posts.back() - posts.front(), absl::Milliseconds(3500));
  EXPECT_EQ(RetriesOf(registry), static_cast<double>(posts.size() - 1));
}

// A google.rpc.Status whose details hold a RetryInfo of `delay`.
std::string RetryInfoDetails(absl::Duration delay) {
  otlp::RetryInfo info;
  info.mutable_retry_delay()->set_seconds(absl::ToInt64Seconds(delay));
  info.mutable_retry_delay()->set_nanos(
      static_cast<int32_t>(absl::ToInt64Nanoseconds(delay % absl::Seconds(1))));
  otlp::RpcStatus status;
  status.set_code(grpc::StatusCode::RESOURCE_EXHAUSTED);
  otlp::RpcAny* any = status.add_details();
  any->set_type_url("type.googleapis.com/google.rpc.RetryInfo");
  any->set_value(info.SerializeAsString());
  return status.SerializeAsString();
}

// Over gRPC the codes OTLP lists are sent again, RESOURCE_EXHAUSTED only
// when the collector's RetryInfo says when (and then after that delay);
// the others are refusals for good.
TEST(OtlpRetryTest, GrpcRetriesTheCodesOtlpLists) {
  struct Case {
    std::vector<grpc::Status> failures;
    size_t calls;
    bool exported;
  };
  const grpc::Status exhausted_for_now(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                       "busy",
                                       RetryInfoDetails(absl::Seconds(1)));
  for (const Case& c : std::vector<Case>{
           {{grpc::Status(grpc::StatusCode::UNAVAILABLE, "restarting"),
             grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "slow"),
             grpc::Status(grpc::StatusCode::ABORTED, "a"),
             grpc::Status(grpc::StatusCode::CANCELLED, "c")},
            5,
            true},
           {{exhausted_for_now}, 2, true},
           {{grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "full")},
            1,
            false},
           {{grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "bad")},
            1,
            false},
           {{grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "who")}, 1, false},
           {{grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "no")}, 1, false}}) {
    SCOPED_TRACE(c.failures[0].error_message());
    GrpcCollector collector(/*reject=*/0);
    collector.FailFirst(c.failures);
    prometheus::Registry registry;
    server::OtlpExporter::Options o = RetryOptions(
        absl::StrCat("http://127.0.0.1:", collector.port()), &registry);
    o.protocol = server::OtlpProtocol::kGrpc;
    auto exporter = server::OtlpExporter::Create(o);
    ASSERT_TRUE(exporter.ok()) << exporter.status();
    const absl::Time start = absl::Now();
    RecordSpans(**exporter, 1);
    AwaitOutcomes(**exporter, 1);
    EXPECT_EQ((*exporter)->exported(), c.exported ? 1 : 0);
    EXPECT_EQ(SpansOf(registry, "failed"), c.exported ? 0 : 1);
    EXPECT_EQ(collector.requests().size(), c.calls);
    if (c.failures[0].error_details().size() > 0) {
      EXPECT_GE(absl::Now() - start, absl::Milliseconds(950));  // RetryInfo's
    }
  }
}

TEST(OtlpExporterTest, AClientCertificateNeedsItsKeyAndOpenSslsYes) {
  server::OtlpExporter::Options o;
  o.endpoint = "https://127.0.0.1:1/v1/traces";
  o.client_cert_file = "/some.crt";
  auto half = server::OtlpExporter::Create(o);
  EXPECT_EQ(half.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(half.status().message().find("needs its key"), std::string::npos);
  // Files that are not a certificate and key: refused at once, not at
  // every export.
  const std::string not_pem = ::testing::TempDir() + "/not_a_certificate";
  std::ofstream(not_pem) << "not PEM";
  o.client_cert_file = o.client_key_file = not_pem;
  auto bad = server::OtlpExporter::Create(o);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("OpenSSL did not take"),
            std::string::npos)
      << bad.status();
  // Over gRPC the files are read at Create: one missing, one empty (gRPC
  // would take empty root certificates for the system's) are refused.
  const std::string empty = ::testing::TempDir() + "/empty_ca";
  std::ofstream(empty).flush();
  server::OtlpExporter::Options g;
  g.endpoint = "https://127.0.0.1:1";
  g.protocol = server::OtlpProtocol::kGrpc;
  for (const auto& [ca, says] :
       std::vector<std::pair<std::string, std::string>>{
           {"/nonexistent/ca.pem",
            "OTLP CA file: cannot read /nonexistent/ca.pem"},
           {empty, "OTLP CA file: " + empty + " is empty"}}) {
    g.ca_file = ca;
    auto refused = server::OtlpExporter::Create(g);
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(refused.status().message().find(says), std::string::npos)
        << refused.status();
  }
}

// OTLP/gRPC's endpoint without a scheme ("host:port", or with the path
// OTEL_EXPORTER_OTLP_ENDPOINT adds) is TLS unless insecure: a plaintext
// collector gets the spans only when insecure.
TEST(OtlpExporterTest, GrpcEndpointsWithoutASchemeAreTlsUnlessInsecure) {
  for (const bool insecure : {true, false}) {
    SCOPED_TRACE(insecure);
    GrpcCollector collector(/*reject=*/0);
    prometheus::Registry registry;
    server::OtlpExporter::Options o = RetryOptions(
        absl::StrCat("127.0.0.1:", collector.port(), "/v1/traces"), &registry);
    o.protocol = server::OtlpProtocol::kGrpc;
    o.insecure = insecure;
    o.max_attempts = 1;
    auto exporter = server::OtlpExporter::Create(o);
    ASSERT_TRUE(exporter.ok()) << exporter.status();
    EXPECT_EQ((*exporter)->tls(), !insecure);
    EXPECT_EQ((*exporter)->destination(),
              absl::StrCat("127.0.0.1:", collector.port()));
    RecordSpans(**exporter, 1);
    AwaitOutcomes(**exporter, 1);
    EXPECT_EQ((*exporter)->exported(), insecure ? 1 : 0);
    EXPECT_EQ(SpansOf(registry, "failed"), insecure ? 0 : 1);
    EXPECT_EQ(collector.requests().size(), insecure ? 1u : 0u);
  }
  // Over HTTP a scheme is still needed.
  server::OtlpExporter::Options o;
  o.endpoint = "127.0.0.1:4318/v1/traces";
  o.insecure = true;
  EXPECT_EQ(server::OtlpExporter::Create(o).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(OtlpRetryTest, RetrySettingsOutOfRangeAreRefused) {
  for (auto set : std::vector<void (*)(server::OtlpExporter::Options*)>{
           [](server::OtlpExporter::Options* o) { o->max_attempts = 0; },
           [](server::OtlpExporter::Options* o) {
             o->initial_backoff = absl::Seconds(-1);
           },
           [](server::OtlpExporter::Options* o) {
             o->max_backoff = absl::Milliseconds(1);  // below initial
           },
           [](server::OtlpExporter::Options* o) {
             o->max_retry_delay = absl::Seconds(-1);
           },
           [](server::OtlpExporter::Options* o) {
             o->export_timeout = absl::ZeroDuration();
           }}) {
    server::OtlpExporter::Options o;
    o.endpoint = "http://127.0.0.1:1/v1/traces";
    set(&o);
    auto exporter = server::OtlpExporter::Create(o);
    EXPECT_EQ(exporter.status().code(), absl::StatusCode::kInvalidArgument);
  }
}

// An environment of its own for ReadOtelEnvironment.
struct Env {
  std::map<std::string, std::string> vars;
  // `endpoint_given`: as when --otlp_traces_endpoint is set.
  absl::StatusOr<server::OtelEnvironment> Read(
      bool endpoint_given = true) const {
    return server::ReadOtelEnvironment(
        [this](const char* name) -> const char* {
          auto it = vars.find(name);
          return it == vars.end() ? nullptr : it->second.c_str();
        },
        endpoint_given);
  }
};

TEST(OtelEnvironmentTest, TheTracesFormOfCompressionWins) {
  Env e{{{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"},
         {"OTEL_EXPORTER_OTLP_COMPRESSION", "none"},
         {"OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip"}}};
  auto env = e.Read();
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->compression, "gzip");  // the _TRACES_ form wins
  EXPECT_EQ(env->compression_variable, "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION");
}

TEST(OtelEnvironmentTest, NothingSetMeansNothingToDo) {
  auto env = Env().Read(/*endpoint_given=*/false);
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->traces_endpoint, "");
  EXPECT_TRUE(env->headers.empty());
  EXPECT_FALSE(env->sample_ratio.has_value());
  EXPECT_TRUE(env->warnings.empty());
}

// Without an endpoint there is no tracing: variables meant for other
// programs of the pod, even bad ones, are not read; with one they are.
TEST(OtelEnvironmentTest, WithoutAnEndpointNothingElseIsRead) {
  Env e{{{"OTEL_EXPORTER_OTLP_HEADERS", "not a list"},
         {"OTEL_TRACES_SAMPLER", "parentbased_always_on"}}};
  auto env = e.Read(/*endpoint_given=*/false);
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->traces_endpoint, "");
  EXPECT_FALSE(env->sample_ratio.has_value());
  EXPECT_FALSE(e.Read(/*endpoint_given=*/true).ok());
  e.vars["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://c:4318";
  EXPECT_FALSE(e.Read(/*endpoint_given=*/false).ok());
  e.vars["OTEL_SDK_DISABLED"] = "true";
  EXPECT_TRUE(e.Read(/*endpoint_given=*/false).ok());
}

TEST(OtelEnvironmentTest, EndpointsAsTheSpecBuildsThem) {
  for (const auto& [base, want] :
       std::vector<std::pair<std::string, std::string>>{
           {"http://c:4318", "http://c:4318/v1/traces"},
           {"https://c:4318/", "https://c:4318/v1/traces"},
           {"http://c:4318/otlp", "http://c:4318/otlp/v1/traces"}}) {
    auto env = Env{{{"OTEL_EXPORTER_OTLP_ENDPOINT", base}}}.Read();
    ASSERT_TRUE(env.ok());
    EXPECT_EQ(env->traces_endpoint, want);
    EXPECT_EQ(env->endpoint_variable, "OTEL_EXPORTER_OTLP_ENDPOINT");
  }
  // The signal's own variable is used as it is, and wins.
  auto env = Env{{{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"},
                  {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:9/x"}}}
                 .Read();
  ASSERT_TRUE(env.ok());
  EXPECT_EQ(env->traces_endpoint, "http://b:9/x");
  EXPECT_EQ(env->endpoint_variable, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
  env = Env{{{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"},
             {"OTEL_SDK_DISABLED", "TRUE"}}}
            .Read();
  ASSERT_TRUE(env.ok());
  EXPECT_EQ(env->traces_endpoint, "");
}

TEST(OtelEnvironmentTest, HeadersAndResourceAttributesAreDecodedLists) {
  auto env = Env{{{"OTEL_EXPORTER_OTLP_HEADERS",
                   " authorization = Bearer%20abc%3D%3D , x-tenant=moe,,"},
                  {"OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "/etc/ca.pem"},
                  {"OTEL_EXPORTER_OTLP_CERTIFICATE", "/other.pem"},
                  {"OTEL_RESOURCE_ATTRIBUTES",
                   "service.name=from-attributes,k8s.pod.name=moe-router-0"}}}
                 .Read();
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->headers, (server::KeyValues{{"authorization", "Bearer abc=="},
                                             {"x-tenant", "moe"}}));
  EXPECT_EQ(env->certificate, "/etc/ca.pem");
  EXPECT_EQ(env->certificate_variable, "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE");
  EXPECT_EQ(env->service_name, "from-attributes");
  EXPECT_EQ(env->resource_attributes,
            (server::KeyValues{{"k8s.pod.name", "moe-router-0"}}));
  // OTEL_SERVICE_NAME wins; the traces' own headers replace the general.
  env = Env{{{"OTEL_RESOURCE_ATTRIBUTES", "service.name=a"},
             {"OTEL_SERVICE_NAME", "b"},
             {"OTEL_EXPORTER_OTLP_HEADERS", "x=1"},
             {"OTEL_EXPORTER_OTLP_TRACES_HEADERS", "y=2"}}}
            .Read();
  ASSERT_TRUE(env.ok());
  EXPECT_EQ(env->service_name, "b");
  EXPECT_EQ(env->headers, (server::KeyValues{{"y", "2"}}));
}

TEST(OtelEnvironmentTest, BadListsAreRefusedNamingTheVariableNotTheSecret) {
  for (const auto& [var, value, says] :
       std::vector<std::tuple<std::string, std::string, std::string>>{
           {"OTEL_EXPORTER_OTLP_HEADERS", "api-key-s3cret",
            "OTEL_EXPORTER_OTLP_HEADERS: entry 1 is not key=value"},
           {"OTEL_EXPORTER_OTLP_HEADERS", "ok=1,bad key=s3cret",
            "entry 2 is not key=value"},
           {"OTEL_EXPORTER_OTLP_TRACES_HEADERS", "k=s3cret%zz",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS: entry 1 (k): a % that"},
           {"OTEL_EXPORTER_OTLP_HEADERS", "k=s3cret%0Aevil: 1",
            "may not hold a line break"},
           {"OTEL_RESOURCE_ATTRIBUTES", "=s3cret",
            "OTEL_RESOURCE_ATTRIBUTES: entry 1 is not key=value"}}) {
    auto env = Env{{{var, value}}}.Read();
    ASSERT_FALSE(env.ok()) << value;
    EXPECT_EQ(env.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(env.status().message().find(says), std::string::npos)
        << env.status();
    EXPECT_EQ(env.status().message().find("s3cret"), std::string::npos)
        << env.status();
  }
}

TEST(OtelEnvironmentTest, ClientCertificatesTimeoutsAndBatchSizesAreRead) {
  Env e{{{"OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318"},
         {"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/general.crt"},
         {"OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", "/traces.crt"},
         {"OTEL_EXPORTER_OTLP_CLIENT_KEY", "/general.key"},
         {"OTEL_EXPORTER_OTLP_TIMEOUT", "10000"},
         {"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "2500"},
         {"OTEL_BSP_SCHEDULE_DELAY", "5000"},
         {"OTEL_BSP_MAX_QUEUE_SIZE", "2048"},
         {"OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "2048"},
         {"OTEL_BSP_EXPORT_TIMEOUT", "60000"}}};
  auto env = e.Read();
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->client_certificate, "/traces.crt");
  EXPECT_EQ(env->client_certificate_variable,
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE");
  EXPECT_EQ(env->client_key, "/general.key");
  EXPECT_EQ(env->timeout_ms, 2500);
  EXPECT_EQ(env->schedule_delay_ms, 5000);
  EXPECT_EQ(env->max_queue_size, 2048);
  EXPECT_EQ(env->max_export_batch_size, 2048);
  EXPECT_EQ(env->export_timeout_ms, 60000);
  auto unset = Env{{{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"}}}.Read();
  ASSERT_TRUE(unset.ok());
  EXPECT_FALSE(unset->timeout_ms.has_value());
  EXPECT_FALSE(unset->schedule_delay_ms.has_value());
  EXPECT_FALSE(unset->max_queue_size.has_value());
  EXPECT_FALSE(unset->max_export_batch_size.has_value());
  EXPECT_FALSE(unset->export_timeout_ms.has_value());
}

TEST(OtelEnvironmentTest, InsecureIsTrueOrFalse) {
  for (const auto& [vars, want] : std::vector<
           std::pair<std::map<std::string, std::string>, std::optional<bool>>>{
           {{}, std::nullopt},
           {{{"OTEL_EXPORTER_OTLP_INSECURE", "TRUE"}}, true},
           {{{"OTEL_EXPORTER_OTLP_INSECURE", "true"},
             {"OTEL_EXPORTER_OTLP_TRACES_INSECURE", "False"}},
            false}}) {
    Env e{vars};
    e.vars["OTEL_EXPORTER_OTLP_ENDPOINT"] = "c:4317";
    auto env = e.Read();
    ASSERT_TRUE(env.ok()) << env.status();
    EXPECT_EQ(env->insecure, want);
  }
  Env bad{{{"OTEL_EXPORTER_OTLP_ENDPOINT", "c:4317"},
           {"OTEL_EXPORTER_OTLP_TRACES_INSECURE", "yes"}}};
  EXPECT_NE(bad.Read().status().message().find(
                "OTEL_EXPORTER_OTLP_TRACES_INSECURE \"yes\": must be true or "
                "false"),
            std::string::npos);
}

TEST(OtelEnvironmentTest, BadNumbersAreRefusedNamingTheVariable) {
  for (const auto& [name, value, says] :
       std::vector<std::tuple<std::string, std::string, std::string>>{
           {"OTEL_EXPORTER_OTLP_TIMEOUT", "10s",
            "OTEL_EXPORTER_OTLP_TIMEOUT \"10s\": must be a whole number "
            "from 1 to 600000"},
           {"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "0",
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT \"0\""},
           {"OTEL_BSP_SCHEDULE_DELAY", "-5", "OTEL_BSP_SCHEDULE_DELAY \"-5\""},
           {"OTEL_BSP_MAX_QUEUE_SIZE", "1e9", "OTEL_BSP_MAX_QUEUE_SIZE"},
           {"OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1000001",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"},
           {"OTEL_BSP_EXPORT_TIMEOUT", "30s",
            "OTEL_BSP_EXPORT_TIMEOUT \"30s\": must be a whole number from 1 "
            "to 600000"}}) {
    Env e{{{"OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318"}, {name, value}}};
    auto env = e.Read();
    EXPECT_EQ(env.status().code(), absl::StatusCode::kInvalidArgument) << name;
    EXPECT_NE(env.status().message().find(says), std::string::npos)
        << env.status();
  }
  // A batch larger than the queue it comes from.
  Env e{{{"OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318"},
         {"OTEL_BSP_MAX_QUEUE_SIZE", "100"},
         {"OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "101"}}};
  EXPECT_NE(e.Read().status().message().find(
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE \"101\": must be a whole "
                "number from 1 to 100"),
            std::string::npos);
}

TEST(OtelEnvironmentTest, SamplersGiveTheRootRatio) {
  for (const auto& [sampler, arg, ratio, warns] :
       std::vector<std::tuple<std::string, std::string, double, bool>>{
           {"parentbased_always_on", "", 1.0, false},
           {"parentbased_always_off", "", 0.0, false},
           {"parentbased_traceidratio", "0.25", 0.25, false},
           {"parentbased_traceidratio", "", 1.0, false},
           {"always_on", "", 1.0, true},
           {"TraceIdRatio", "0.5", 0.5, true}}) {
    Env e{{{"OTEL_TRACES_SAMPLER", sampler}}};
    if (!arg.empty()) e.vars["OTEL_TRACES_SAMPLER_ARG"] = arg;
    auto env = e.Read();
    ASSERT_TRUE(env.ok()) << sampler << env.status();
    ASSERT_TRUE(env->sample_ratio.has_value()) << sampler;
    EXPECT_EQ(*env->sample_ratio, ratio) << sampler;
    EXPECT_EQ(env->warnings.size(), warns ? 1u : 0u) << sampler;
  }
  auto env = Env{{{"OTEL_TRACES_SAMPLER", "jaeger_remote"}}}.Read();
  ASSERT_TRUE(env.ok());
  EXPECT_FALSE(env->sample_ratio.has_value());
  ASSERT_EQ(env->warnings.size(), 1u);
  EXPECT_NE(env->warnings[0].find("not one moe-serve knows"),
            std::string::npos);
  env = Env{{{"OTEL_TRACES_SAMPLER", "parentbased_traceidratio"},
             {"OTEL_TRACES_SAMPLER_ARG", "1.5"}}}
            .Read();
  EXPECT_EQ(env.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(env.status().message().find("OTEL_TRACES_SAMPLER_ARG \"1.5\""),
            std::string::npos);
}

TEST(OtlpJsonTest, TheResourceCarriesItsAttributes) {
  const nlohmann::json body = nlohmann::json::parse(server::OtlpTracesJson(
      {}, "moe-expert", {{"k8s.pod.name", "moe-expert-3"}}));
  const nlohmann::json& attributes =
      body["resourceSpans"][0]["resource"]["attributes"];
  ASSERT_EQ(attributes.size(), 3u);
  EXPECT_EQ(attributes[2],
            nlohmann::json({{"key", "k8s.pod.name"},
                            {"value", {{"stringValue", "moe-expert-3"}}}}));
}

}  // namespace
}  // namespace moe
