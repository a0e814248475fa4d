// Tracing with real processes: moe-router and two workers (moe-expert and
// moe-expert-gpu --device=host) on a two-layer model, every
// --otlp_traces_endpoint pointing at an OTLP/HTTP receiver in this test (an
// HTTP server that keeps what is POSTed to /v1/traces), and the spans it
// gets checked: a call whose caller's W3C traceparent is sampled gets a
// child span of the caller's (Forward, ModelInfer and REST infer, a failed
// call with an error status), its worker calls a client span each on the
// router and a server span on the worker, children in turn; a caller's
// unsampled context and a call without one get none anywhere
// (--trace_sample_ratio 0), and with a ratio of 1 a call without a context
// starts a trace.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <httplib.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/router_client.h"
#include "common/random_input.h"
#include "common/torch/demo_model.h"
#include "inference/open_inference_grpc.grpc.pb.h"
#include "moe/v1/router.grpc.pb.h"
#include "otlp/trace_service.grpc.pb.h"
#include "proto/tensor_codec.h"
#include "testing/deployment.h"
#include "testing/golden.h"

namespace moe {
namespace {

using nlohmann::json;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A received OTLP protobuf request as the OTLP/JSON a collector would log
// (hex IDs, int64s as strings, enums as integers): the fields these tests
// read, so that the checks read every protocol's spans alike.
json JsonOf(const otlp::ExportTraceServiceRequest& request) {
  auto attributes = [](const auto& list) {
    json out = json::array();
    for (const otlp::KeyValue& kv : list) {
      json v;
      const otlp::AnyValue& a = kv.value();
      if (a.has_string_value()) v["stringValue"] = a.string_value();
      if (a.has_int_value()) v["intValue"] = std::to_string(a.int_value());
      if (a.has_bool_value()) v["boolValue"] = a.bool_value();
      out.push_back({{"key", kv.key()}, {"value", v}});
    }
    return out;
  };
  auto hex = [](const std::string& bytes) {
    return absl::BytesToHexString(bytes);
  };
  json resource_spans = json::array();
  for (const otlp::ResourceSpans& rs : request.resource_spans()) {
    json scope_spans = json::array();
    for (const otlp::ScopeSpans& ss : rs.scope_spans()) {
      json spans = json::array();
      for (const otlp::Span& s : ss.spans()) {
        json span = {
            {"traceId", hex(s.trace_id())},
            {"spanId", hex(s.span_id())},
            {"name", s.name()},
            {"kind", static_cast<int>(s.kind())},
            {"startTimeUnixNano", std::to_string(s.start_time_unix_nano())},
            {"endTimeUnixNano", std::to_string(s.end_time_unix_nano())},
            {"attributes", attributes(s.attributes())}};
        if (!s.parent_span_id().empty()) {
          span["parentSpanId"] = hex(s.parent_span_id());
        }
        for (const otlp::Span::Link& l : s.links()) {
          span["links"].push_back(
              {{"traceId", hex(l.trace_id())}, {"spanId", hex(l.span_id())}});
        }
        if (s.has_status()) {
          span["status"] = {{"code", static_cast<int>(s.status().code())},
                            {"message", s.status().message()}};
        }
        spans.push_back(std::move(span));
      }
      scope_spans.push_back({{"scope", {{"name", ss.scope().name()}}},
                             {"spans", std::move(spans)}});
    }
    resource_spans.push_back(
        {{"resource", {{"attributes", attributes(rs.resource().attributes())}}},
         {"scopeSpans", std::move(scope_spans)}});
  }
  return {{"resourceSpans", std::move(resource_spans)}};
}

// An OTLP receiver on 127.0.0.1 that keeps every export's body (as
// OTLP/JSON) and its headers: OTLP/HTTP (POSTs to /v1/traces with JSON or
// protobuf bodies) or OTLP/gRPC (TraceService/Export; the call's metadata
// as its headers); plaintext, or TLS with a certificate.
class Collector final
    : public opentelemetry::proto::collector::trace::v1::TraceService::Service {
 public:
  enum class Kind { kHttp, kGrpc };
  // `client_ca`: over TLS, a client certificate of this CA is required.
  explicit Collector(Kind kind = Kind::kHttp, const std::string& cert = "",
                     const std::string& key = "",
                     const std::string& client_ca = "")
      : tls_(!cert.empty()) {
    if (kind == Kind::kGrpc) {
      std::shared_ptr<grpc::ServerCredentials> credentials =
          grpc::InsecureServerCredentials();
      if (tls_) {
        grpc::SslServerCredentialsOptions ssl;
        ssl.pem_key_cert_pairs.push_back({ReadAll(key), ReadAll(cert)});
        if (!client_ca.empty()) {
          ssl.pem_root_certs = ReadAll(client_ca);
          ssl.client_certificate_request =
              GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
        }
        credentials = grpc::SslServerCredentials(ssl);
      }
      grpc::ServerBuilder builder;
      builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
      builder.AddListeningPort("127.0.0.1:0", credentials, &port_);
      builder.RegisterService(this);
      grpc_ = builder.BuildAndStart();
      return;
    }
    if (tls_) {
      http_ = std::make_unique<httplib::SSLServer>(
          cert.c_str(), key.c_str(),
          client_ca.empty() ? nullptr : client_ca.c_str());
    } else {
      http_ = std::make_unique<httplib::Server>();
    }
    http_->Post("/v1/traces", [this](const httplib::Request& req,
                                     httplib::Response& res) {
      std::string body = req.body;
      if (req.get_header_value("Content-Type") == "application/x-protobuf") {
        otlp::ExportTraceServiceRequest request;
        if (!request.ParseFromString(req.body)) {
          res.status = 400;
          return;
        }
        body = JsonOf(request).dump();
      }
      absl::MutexLock lock(&mu_);
      bodies_.push_back(std::move(body));
      headers_.push_back(req.headers);
      res.set_content("{}", "application/json");
    });
    port_ = http_->bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { http_->listen_after_bind(); });
  }
  ~Collector() override {
    if (grpc_ != nullptr) grpc_->Shutdown();
    if (http_ != nullptr) {
      http_->stop();
      thread_.join();
    }
  }
  grpc::Status Export(grpc::ServerContext* context,
                      const otlp::ExportTraceServiceRequest* request,
                      otlp::ExportTraceServiceResponse*) override {
    httplib::Headers headers;
    for (const auto& [key, value] : context->client_metadata()) {
      headers.emplace(std::string(key.data(), key.size()),
                      std::string(value.data(), value.size()));
    }
    absl::MutexLock lock(&mu_);
    bodies_.push_back(JsonOf(*request).dump());
    headers_.push_back(std::move(headers));
    return grpc::Status::OK;
  }
  // The base URL, as OTEL_EXPORTER_OTLP_ENDPOINT gives it.
  std::string base() const {
    return absl::StrCat(tls_ ? "https" : "http", "://127.0.0.1:", port_);
  }
  std::string endpoint() const { return base() + "/v1/traces"; }
  // The headers of each export so far.
  std::vector<httplib::Headers> headers() {
    absl::MutexLock lock(&mu_);
    return headers_;
  }

  // Every span received, each with its resource's service.name added as
  // "service" and its resource's attributes as "resource", once `done`
  // says they are all there (or after 20 s).
  std::vector<json> Spans(
      const std::function<bool(const std::vector<json>&)>& done) {
    std::vector<json> spans;
    for (const absl::Time until = absl::Now() + absl::Seconds(20);;) {
      spans.clear();
      {
        absl::MutexLock lock(&mu_);
        for (const std::string& body : bodies_) {
          const json b = json::parse(body);
          for (const json& rs : b["resourceSpans"]) {
            std::string service;
            json resource = json::object();
            for (const json& a : rs["resource"]["attributes"]) {
              if (a["key"] == "service.name")
                service = a["value"]["stringValue"];
              resource[a["key"].get<std::string>()] = a["value"];
            }
            for (const json& ss : rs["scopeSpans"]) {
              for (json span : ss["spans"]) {
                span["service"] = service;
                span["resource"] = resource;
                spans.push_back(std::move(span));
              }
            }
          }
        }
      }
      if (done(spans) || absl::Now() >= until) return spans;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }

 private:
  const bool tls_;
  std::unique_ptr<httplib::Server> http_;
  std::unique_ptr<grpc::Server> grpc_;
  std::thread thread_;
  int port_ = 0;
  absl::Mutex mu_;
  std::vector<std::string> bodies_ ABSL_GUARDED_BY(mu_);
  std::vector<httplib::Headers> headers_ ABSL_GUARDED_BY(mu_);
};

// Header `key` of `h`, or "<none>".
std::string HeaderOf(const httplib::Headers& h, const std::string& key) {
  auto it = h.find(key);
  return it == h.end() ? std::string("<none>") : it->second;
}

// A span's attribute `key` as a JSON value ("stringValue", "intValue"
// (a string) or "boolValue"), null when absent.
json Attribute(const json& span, const std::string& key) {
  for (const json& a : span.value("attributes", json::array())) {
    if (a["key"] == key) return a["value"].begin().value();
  }
  return nullptr;
}

// The router's spans of the calls it served (not its worker calls).
std::vector<json> Served(const std::vector<json>& spans) {
  std::vector<json> served;
  for (const json& s : spans) {
    if (s["service"] == "moe-router" && s["kind"] == 2) served.push_back(s);
  }
  return served;
}

// The router's span of the call whose moe.request_id is `id`; null when
// none.
json SpanOf(const std::vector<json>& spans, const std::string& id) {
  for (const json& s : Served(spans)) {
    if (Attribute(s, "moe.request_id") == id) return s;
  }
  return nullptr;
}

// Every span of any process that names request `id` (the router's
// moe.request_id, a worker's moe.request_ids).
std::vector<json> AllSpansOf(const std::vector<json>& spans,
                             const std::string& id) {
  std::vector<json> of;
  for (const json& s : spans) {
    const json ids = Attribute(s, "moe.request_ids");
    if (Attribute(s, "moe.request_id") == id ||
        (ids.is_string() &&
         ids.get<std::string>().find(id) != std::string::npos)) {
      of.push_back(s);
    }
  }
  return of;
}

// Whether every router span of a worker call has the worker's span (the
// router's spans name the service `router`).
bool WorkerSpansCame(const std::vector<json>& spans,
                     const std::string& router = "moe-router") {
  for (const json& call : spans) {
    if (call["service"] != router || call["kind"] != 3) continue;
    bool found = false;
    for (const json& s : spans) {
      found |= s["service"] != router &&
               s.value("parentSpanId", "") == call["spanId"];
    }
    if (!found) return false;
  }
  return true;
}

bool Hex(const json& v, size_t digits) {
  if (!v.is_string()) return false;
  const std::string s = v;
  return s.size() == digits &&
         s.find_first_not_of("0123456789abcdef") == std::string::npos &&
         s.find_first_not_of('0') != std::string::npos;
}

// A Forward of layer `layer` to the router at `address`, with these
// request ID and traceparent.
grpc::Status ForwardTo(const std::string& address, const std::string& layer,
                       const std::string& request_id,
                       const std::string& traceparent,
                       std::vector<int64_t> shape = {2, 3, 64}) {
  auto stub = moe::v1::Router::NewStub(
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() +
                       std::chrono::seconds(30));
  context.AddMetadata("x-request-id", request_id);
  if (!traceparent.empty()) context.AddMetadata("traceparent", traceparent);
  moe::v1::ForwardRequest request;
  request.set_layer(layer);
  EXPECT_TRUE(proto::EncodeTensor(common::RandomNormalTensor(shape, 11),
                                  request.mutable_x())
                  .ok());
  moe::v1::ForwardResponse response;
  return stub->Forward(&context, request, &response);
}

// The two-layer model of these tests (dim 64, 8 experts).
std::string Checkpoint() {
  static const std::string path = [] {
    common::LayerConfig config = common::DefaultDemoConfig();
    config.dim = 64;
    config.num_experts = 8;
    const std::string p = testing::TempDir() + "/trace.safetensors";
    EXPECT_TRUE(common::WriteDemoCheckpoint(p, config, 2, /*seed=*/3).ok());
    return p;
  }();
  return path;
}

class TracingIntegrationTest : public ::testing::Test {
 protected:
  // A router recording sampled callers' calls, and with `root_ratio` of
  // the others.
  void Start(double root_ratio) {
    const std::string checkpoint = Checkpoint();
    http_port_file_ = testing::TempDir() + "/trace-http.port";
    deployment_ = std::make_unique<testing::Deployment>(
        checkpoint, std::vector<std::string>{"0-3", "4-7"},
        std::vector<std::string>{
            "--otlp_traces_endpoint=" + collector_.endpoint(),
            absl::StrCat("--trace_sample_ratio=", root_ratio), "--http_port=0",
            "--http_port_file=" + http_port_file_});
    // Workers follow the router's decision: no ratio of their own.
    deployment_->SetWorkerFlags(
        {"--otlp_traces_endpoint=" + collector_.endpoint()});
    ASSERT_TRUE(deployment_->StartWorker(0).ok());
    deployment_->SetWorkerBinary("moe-expert-gpu");
    deployment_->SetWorkerFlags(
        {"--otlp_traces_endpoint=" + collector_.endpoint(), "--device=host"});
    ASSERT_TRUE(deployment_->StartWorker(1).ok());
    ASSERT_TRUE(deployment_->StartRouter().ok()) << deployment_->router().Log();
  }

  grpc::Status Forward(const std::string& layer, const std::string& request_id,
                       const std::string& traceparent,
                       std::vector<int64_t> shape = {2, 3, 64}) {
    return ForwardTo(deployment_->router_address(), layer, request_id,
                     traceparent, std::move(shape));
  }

  Collector collector_;
  std::unique_ptr<testing::Deployment> deployment_;
  std::string http_port_file_;
};

const std::string kTrace = "4bf92f3577b34da6a3ce929d0e0e4736";
const std::string kCaller = "00f067aa0ba902b7";

// Every span of a sampled forward of 64 tokens ("followed": both workers'
// experts are chosen) to the router at `address`, once the router's span
// and each worker call's worker span have come to `collector`.
std::vector<json> FollowedForwardsSpans(const std::string& address,
                                        Collector& collector) {
  EXPECT_TRUE(ForwardTo(address, "layers.0.ff", "followed",
                        "00-" + kTrace + "-" + kCaller + "-01", {4, 16, 64})
                  .ok());
  return collector.Spans([](const std::vector<json>& spans) {
    return Served(spans).size() == 1 && WorkerSpansCame(spans);
  });
}

TEST_F(TracingIntegrationTest, SampledCallersGetChildSpansAndTheOthersNone) {
  Start(/*root_ratio=*/0);
  const std::string sampled = "00-" + kTrace + "-" + kCaller + "-01";
  ASSERT_TRUE(Forward("layers.0.ff", "traced-forward", sampled).ok());
  ASSERT_TRUE(Forward("layers.1.ff", "unsampled",
                      "00-" + kTrace + "-" + kCaller + "-00")
                  .ok());
  ASSERT_TRUE(Forward("layers.1.ff", "no-context", "").ok());
  EXPECT_EQ(Forward("layers.9.ff", "traced-failure", sampled).error_code(),
            grpc::StatusCode::NOT_FOUND);
  // The Open Inference Protocol, over gRPC and REST.
  {
    auto stub = inference::GRPCInferenceService::NewStub(grpc::CreateChannel(
        deployment_->router_address(), grpc::InsecureChannelCredentials()));
    grpc::ClientContext context;
    context.AddMetadata("x-request-id", "traced-infer");
    context.AddMetadata("traceparent", sampled);
    inference::ModelInferRequest r;
    r.set_model_name("layers.0.ff");
    const common::HostTensor x = common::RandomNormalTensor({2, 3, 64}, 11);
    auto* in = r.add_inputs();
    in->set_name("x");
    in->set_datatype("FP32");
    for (int64_t d : x.shape) in->add_shape(d);
    r.add_raw_input_contents(std::string(x.data.begin(), x.data.end()));
    inference::ModelInferResponse response;
    const grpc::Status s = stub->ModelInfer(&context, r, &response);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  int http_port = 0;
  std::ifstream(http_port_file_) >> http_port;
  ASSERT_GT(http_port, 0);
  httplib::Client http("127.0.0.1", http_port);
  const json body = {{"inputs",
                      {{{"name", "x"},
                        {"shape", {1, 2, 64}},
                        {"datatype", "FP32"},
                        {"data", std::vector<float>(128, 0.25f)}}}}};
  auto rest =
      http.Post("/v2/models/layers.1.ff/infer",
                {{"X-Request-Id", "traced-rest"}, {"traceparent", sampled}},
                body.dump(), "application/json");
  ASSERT_TRUE(rest);
  ASSERT_EQ(rest->status, 200) << rest->body;

  auto all_came = [](const std::vector<json>& spans) {
    return Served(spans).size() >= 4 && WorkerSpansCame(spans);
  };
  std::vector<json> spans = collector_.Spans(all_came);
  ASSERT_EQ(Served(spans).size(), 4u) << json(spans).dump(1);
  // Past another export interval: nothing more comes.
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  const size_t count = spans.size();
  spans = collector_.Spans(all_came);
  EXPECT_EQ(spans.size(), count) << json(spans).dump(1);
  EXPECT_EQ(Served(spans).size(), 4u) << json(spans).dump(1);
  // Nothing of the unsampled calls anywhere: router or workers.
  EXPECT_TRUE(AllSpansOf(spans, "unsampled").empty()) << json(spans).dump(1);
  EXPECT_TRUE(AllSpansOf(spans, "no-context").empty()) << json(spans).dump(1);
  for (const json& s : spans) EXPECT_EQ(s["traceId"], kTrace) << s.dump(1);

  const json forward = SpanOf(spans, "traced-forward");
  ASSERT_FALSE(forward.is_null()) << json(spans).dump(1);
  EXPECT_EQ(forward["name"], "moe.v1.Router/Forward");
  EXPECT_EQ(forward["service"], "moe-router");
  EXPECT_EQ(forward["traceId"], kTrace);
  EXPECT_EQ(forward["parentSpanId"], kCaller);
  EXPECT_TRUE(Hex(forward["spanId"], 16)) << forward["spanId"];
  EXPECT_NE(forward["spanId"], kCaller);
  EXPECT_EQ(forward["kind"], 2);
  const int64_t start =
      std::stoll(forward["startTimeUnixNano"].get<std::string>());
  const int64_t end = std::stoll(forward["endTimeUnixNano"].get<std::string>());
  EXPECT_GT(start, absl::ToUnixNanos(absl::Now() - absl::Minutes(5)));
  EXPECT_GE(end, start);
  EXPECT_EQ(Attribute(forward, "moe.layer"), "layers.0.ff");
  EXPECT_EQ(Attribute(forward, "moe.tokens"), "6");
  EXPECT_EQ(Attribute(forward, "moe.degraded"), false);
  EXPECT_EQ(Attribute(forward, "rpc.grpc.status_code"), "0");
  EXPECT_FALSE(forward.contains("status")) << forward.dump(1);

  const json failure = SpanOf(spans, "traced-failure");
  ASSERT_FALSE(failure.is_null());
  EXPECT_EQ(failure["traceId"], kTrace);
  EXPECT_EQ(failure["status"]["code"], 2);
  EXPECT_NE(failure["status"]["message"].get<std::string>().find("NOT_FOUND"),
            std::string::npos)
      << failure.dump(1);
  EXPECT_EQ(Attribute(failure, "rpc.grpc.status_code"), "5");

  const json infer = SpanOf(spans, "traced-infer");
  ASSERT_FALSE(infer.is_null());
  EXPECT_EQ(infer["name"], "inference.GRPCInferenceService/ModelInfer");
  EXPECT_EQ(infer["parentSpanId"], kCaller);
  const json rest_span = SpanOf(spans, "traced-rest");
  ASSERT_FALSE(rest_span.is_null());
  EXPECT_EQ(rest_span["name"], "POST /v2/models/{model_name}/infer");
  EXPECT_EQ(Attribute(rest_span, "http.request.method"), "POST");
  EXPECT_EQ(Attribute(rest_span, "moe.layer"), "layers.1.ff");
  EXPECT_EQ(Attribute(rest_span, "moe.tokens"), "2");
}

// One forward's trace across the processes: the router's span, a client
// span of each worker call under it, and each worker's span of the call
// under that, within it in time, saying what it ran and where its time
// went.
TEST_F(TracingIntegrationTest, AForwardsTraceFollowsItIntoEachWorker) {
  Start(/*root_ratio=*/0);
  const std::vector<json> spans =
      FollowedForwardsSpans(deployment_->router_address(), collector_);
  const json forward = SpanOf(spans, "followed");
  ASSERT_FALSE(forward.is_null()) << json(spans).dump(1);
  for (const char* stage :
       {"moe.pre_us", "moe.gate_us", "moe.plan_us", "moe.experts_us",
        "moe.batch_wait_us", "moe.rpc_wait_us", "moe.combine_us"}) {
    EXPECT_TRUE(Attribute(forward, stage).is_string()) << stage;
  }
  std::vector<json> calls, served, worker_phases;
  std::vector<std::string> phases;
  for (const json& s : spans) {
    if (s["service"] == "moe-router" && s["kind"] == 3) calls.push_back(s);
    if (s["service"] != "moe-router" && s["kind"] == 2) served.push_back(s);
    if (s["kind"] != 1) continue;  // SPAN_KIND_INTERNAL: phases
    if (s["service"] != "moe-router") {
      worker_phases.push_back(s);
      continue;
    }
    EXPECT_EQ(s["parentSpanId"], forward["spanId"]) << s.dump(1);
    phases.push_back(s["name"]);
  }
  EXPECT_EQ(phases,
            std::vector<std::string>({"moe.queue", "moe.pre", "moe.gate",
                                      "moe.plan", "moe.experts", "moe.post"}))
      << json(spans).dump(1);
  ASSERT_EQ(calls.size(), 2u) << json(spans).dump(1);
  ASSERT_EQ(served.size(), 2u) << json(spans).dump(1);
  const std::map<std::string, std::string> service_at = {
      {deployment_->worker_address(0), "moe-expert"},
      {deployment_->worker_address(1), "moe-expert-gpu"}};
  std::set<std::string> reached;
  for (const json& call : calls) {
    EXPECT_EQ(call["name"], "moe.v1.ExpertWorker/RunExperts");
    EXPECT_EQ(call["traceId"], kTrace);
    EXPECT_EQ(call["parentSpanId"], forward["spanId"]);
    EXPECT_EQ(Attribute(call, "moe.request_id"), "followed");
    EXPECT_EQ(Attribute(call, "rpc.grpc.status_code"), "0");
    const std::string address = Attribute(call, "server.address");
    reached.insert(address);
    json worker;
    for (const json& s : served) {
      if (s["parentSpanId"] == call["spanId"]) worker = s;
    }
    ASSERT_FALSE(worker.is_null()) << call.dump(1) << json(served).dump(1);
    EXPECT_EQ(worker["service"], service_at.at(address)) << worker.dump(1);
    EXPECT_EQ(worker["name"], "moe.v1.ExpertWorker/RunExperts");
    EXPECT_EQ(worker["kind"], 2);
    EXPECT_EQ(worker["traceId"], kTrace);
    EXPECT_FALSE(worker.contains("links")) << worker.dump(1);
    EXPECT_EQ(Attribute(worker, "moe.request_ids"), "followed");
    EXPECT_EQ(Attribute(worker, "moe.rows"), Attribute(call, "moe.rows"));
    EXPECT_EQ(Attribute(worker, "rpc.grpc.status_code"), "0");
    EXPECT_TRUE(Attribute(worker, "moe.compute_us").is_string());
    auto nanos = [](const json& s, const char* key) {
      return std::stoll(s[key].get<std::string>());
    };
    // One machine's clock: the worker's span lies within the call's.
    EXPECT_LE(nanos(call, "startTimeUnixNano"),
              nanos(worker, "startTimeUnixNano"));
    EXPECT_LE(nanos(worker, "endTimeUnixNano"), nanos(call, "endTimeUnixNano"));
    // Its phases, one after the other from its start, within it.
    std::vector<std::string> names;
    int64_t at = nanos(worker, "startTimeUnixNano");
    for (const json& p : worker_phases) {
      if (p["parentSpanId"] != worker["spanId"]) continue;
      names.push_back(p["name"]);
      EXPECT_EQ(p["service"], worker["service"]);
      EXPECT_EQ(nanos(p, "startTimeUnixNano"), at) << p.dump(1);
      at = nanos(p, "endTimeUnixNano");
      if (p["name"] == "moe.run") {
        EXPECT_TRUE(Attribute(p, "moe.compute_us").is_string()) << p.dump(1);
      }
    }
    EXPECT_LE(at, nanos(worker, "endTimeUnixNano"));
    EXPECT_EQ(names, std::vector<std::string>({"moe.queue", "moe.parse",
                                               "moe.run", "moe.serialize"}))
        << json(worker_phases).dump(1);
  }
  EXPECT_EQ(reached.size(), 2u);
  EXPECT_EQ(worker_phases.size(), 8u) << json(worker_phases).dump(1);
}

// The C++ client and moe-client forward send a caller's context too: their
// calls' spans are children of the caller's span; a value that is not a
// traceparent is refused before anything is sent.
TEST_F(TracingIntegrationTest, TheCppClientAndMoeClientSendTheCallersTrace) {
  Start(/*root_ratio=*/0);
  const std::string sampled = "00-" + kTrace + "-" + kCaller + "-01";
  auto client = client::RouterClient::Create(deployment_->router_address());
  client::ForwardOptions options;
  options.layer = "layers.0.ff";
  options.request_id = "cpp-client";
  options.traceparent = sampled;
  ASSERT_TRUE(
      client->Forward(common::RandomNormalTensor({1, 4, 64}, 5), options).ok());
  options.traceparent = "00-not-a-trace";
  EXPECT_EQ(client->Forward(common::RandomNormalTensor({1, 4, 64}, 5), options)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  std::string out;
  ASSERT_EQ(testing::RunProcess(
                {testing::BinaryPath("moe-client"), "forward",
                 "--target=" + deployment_->router_address(),
                 "--layer=layers.1.ff", "--random_input=1x4",
                 "--request_id=moe-client-cli", "--traceparent=" + sampled},
                &out),
            0)
      << out;
  EXPECT_EQ(testing::RunProcess({testing::BinaryPath("moe-client"), "forward",
                                 "--target=" + deployment_->router_address(),
                                 "--layer=layers.1.ff", "--random_input=1x4",
                                 "--traceparent=00-zz"},
                                &out),
            1)
      << out;
  EXPECT_NE(out.find("--traceparent \"00-zz\": not a W3C traceparent"),
            std::string::npos)
      << out;
  const std::vector<json> spans =
      collector_.Spans([](const std::vector<json>& spans) {
        return Served(spans).size() >= 2 && WorkerSpansCame(spans);
      });
  ASSERT_EQ(Served(spans).size(), 2u) << json(spans).dump(1);
  for (const char* id : {"cpp-client", "moe-client-cli"}) {
    const json s = SpanOf(spans, id);
    ASSERT_FALSE(s.is_null()) << id << json(spans).dump(1);
    EXPECT_EQ(s["traceId"], kTrace);
    EXPECT_EQ(s["parentSpanId"], kCaller);
  }
}

TEST_F(TracingIntegrationTest,
       WithARatioOfOneACallWithoutAContextStartsATrace) {
  Start(/*root_ratio=*/1);
  ASSERT_TRUE(Forward("layers.0.ff", "root-1", "").ok());
  ASSERT_TRUE(Forward("layers.0.ff", "root-2", "").ok());
  // A caller's unsampled context is still followed: not recorded.
  ASSERT_TRUE(Forward("layers.0.ff", "unsampled",
                      "00-" + kTrace + "-" + kCaller + "-00")
                  .ok());
  auto two = [](const std::vector<json>& spans) {
    return Served(spans).size() >= 2 && WorkerSpansCame(spans);
  };
  std::vector<json> spans = collector_.Spans(two);
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  spans = collector_.Spans(two);
  ASSERT_EQ(Served(spans).size(), 2u) << json(spans).dump(1);
  // The workers' spans are in the routers' traces: none starts its own.
  for (const json& s : spans) {
    EXPECT_TRUE(s.contains("parentSpanId") ||
                (s["service"] == "moe-router" && s["kind"] == 2))
        << s.dump(1);
  }
  const json a = SpanOf(spans, "root-1"), b = SpanOf(spans, "root-2");
  ASSERT_FALSE(a.is_null());
  ASSERT_FALSE(b.is_null());
  for (const json& s : {a, b}) {
    EXPECT_TRUE(Hex(s["traceId"], 32)) << s.dump(1);
    EXPECT_TRUE(Hex(s["spanId"], 16)) << s.dump(1);
    EXPECT_FALSE(s.contains("parentSpanId")) << s.dump(1);
  }
  EXPECT_NE(a["traceId"], b["traceId"]);
}

// The test PKI (tests/testing/make_test_pki.sh): ca signs server.crt (for
// 127.0.0.1); other_ca signs nothing the collector shows.
std::string PkiFile(const std::string& name) {
  return testing::TestPkiFile(name);
}

// A moe-router with no worker (its forwards are refused as not ready, and
// recorded all the same), `env` in its environment; its address once it
// listens.
struct LoneRouter {
  explicit LoneRouter(
      const std::vector<std::pair<std::string, std::string>>& env,
      const std::string& name) {
    const std::string port_file = testing::TempDir() + "/" + name + ".port";
    std::filesystem::remove(port_file);
    process = testing::StartProcess(
        {testing::BinaryPath("moe-router"), "--checkpoint=" + Checkpoint(),
         "--workers=127.0.0.1:1", "--host=127.0.0.1", "--port=0",
         "--port_file=" + port_file, "--metrics_port=-1"},
        testing::TempDir() + "/" + name + ".log", env);
    auto port =
        testing::WaitForPortFile(port_file, absl::Seconds(60), process.get());
    EXPECT_TRUE(port.ok()) << port.status() << Log();
    if (port.ok()) address = absl::StrCat("127.0.0.1:", *port);
  }
  std::string Log() const { return ReadAll(process->log_path()); }
  // Until the log says `text` (20 s at most).
  void AwaitLog(const std::string& text) const {
    const absl::Time until = absl::Now() + absl::Seconds(20);
    while (Log().find(text) == std::string::npos && absl::Now() < until) {
      absl::SleepFor(absl::Milliseconds(100));
    }
  }
  std::unique_ptr<testing::Process> process;
  std::string address;
};

// OpenTelemetry's standard variables alone, as the OpenTelemetry Operator
// or a hosted backend's instructions set them: an https:// collector whose
// certificate is checked against the CA given, headers on every POST, the
// resource's name and attributes, the sampler; the headers' values in no
// log.
TEST(OtelEnvironmentIntegrationTest, StandardVariablesReachAnHttpsCollector) {
  Collector collector(Collector::Kind::kHttp, PkiFile("server.crt"),
                      PkiFile("server.key"));
  std::vector<std::pair<std::string, std::string>> env = {
      {"OTEL_EXPORTER_OTLP_ENDPOINT", collector.base()},
      {"OTEL_EXPORTER_OTLP_HEADERS",
       "authorization=Bearer%20s3cret-key,x-tenant=moe"},
      {"OTEL_EXPORTER_OTLP_CERTIFICATE", PkiFile("ca.crt")},
      {"OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test"},
      {"OTEL_TRACES_SAMPLER", "parentbased_always_on"}};
  testing::Deployment d(Checkpoint(), {"0-3", "4-7"});
  d.SetEnv(env);
  ASSERT_TRUE(d.StartWorker(0).ok());
  ASSERT_TRUE(d.StartWorker(1).ok());
  env.emplace_back("OTEL_SERVICE_NAME", "moe-router-canary");
  d.SetEnv(env);
  ASSERT_TRUE(d.StartRouter().ok()) << d.router().Log();
  // No traceparent: the sampler starts a trace.
  ASSERT_TRUE(
      ForwardTo(d.router_address(), "layers.0.ff", "env-root", "", {4, 16, 64})
          .ok());
  const std::vector<json> spans =
      collector.Spans([](const std::vector<json>& spans) {
        int served = 0;
        for (const json& s : spans) {
          served += s["service"] == "moe-router-canary" && s["kind"] == 2;
        }
        return served == 1 && WorkerSpansCame(spans, "moe-router-canary");
      });
  json root;
  int workers = 0;
  for (const json& s : spans) {
    EXPECT_EQ(s["resource"]["deployment.environment"]["stringValue"], "test")
        << s.dump(1);
    if (s["service"] == "moe-router-canary" && s["kind"] == 2) root = s;
    workers += s["service"] == "moe-expert" && s["kind"] == 2;
  }
  ASSERT_FALSE(root.is_null()) << json(spans).dump(1);
  EXPECT_FALSE(root.contains("parentSpanId"));
  EXPECT_EQ(Attribute(root, "moe.request_id"), "env-root");
  EXPECT_EQ(workers, 2) << json(spans).dump(1);
  const std::vector<httplib::Headers> posts = collector.headers();
  ASSERT_FALSE(posts.empty());
  for (const httplib::Headers& h : posts) {
    EXPECT_EQ(HeaderOf(h, "authorization"), "Bearer s3cret-key");
    EXPECT_EQ(HeaderOf(h, "x-tenant"), "moe");
  }
  const std::string log = d.router().Log();
  EXPECT_NE(log.find("tracing: spans of service moe-router-canary to " +
                     collector.endpoint() +
                     " over OTLP http/json (OTEL_EXPORTER_OTLP_ENDPOINT"),
            std::string::npos)
      << log;
  for (const std::string& l : {log, d.worker(0).Log(), d.worker(1).Log()}) {
    EXPECT_EQ(l.find("s3cret"), std::string::npos) << l;
  }
}

// A collector whose certificate the CA given does not sign gets nothing
// (and the router says why), over OTLP/HTTP and OTLP/gRPC.
TEST(OtelEnvironmentIntegrationTest, UntrustedCollectorsGetNothing) {
  const std::string sampled = "00-" + kTrace + "-" + kCaller + "-01";
  for (const auto& [kind, protocol, why] :
       std::vector<std::tuple<Collector::Kind, std::string, std::string>>{
           {Collector::Kind::kHttp, "http/json", "SSLServerVerification"},
           {Collector::Kind::kGrpc, "grpc", "gRPC UNAVAILABLE"}}) {
    Collector collector(kind, PkiFile("server.crt"), PkiFile("server.key"));
    const std::string endpoint = kind == Collector::Kind::kGrpc
                                     ? collector.base()
                                     : collector.endpoint();
    const std::string destination = kind == Collector::Kind::kGrpc
                                        ? endpoint.substr(strlen("https://"))
                                        : endpoint;
    {
      LoneRouter router(
          {{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint},
           {"OTEL_EXPORTER_OTLP_PROTOCOL", protocol},
           {"OTEL_EXPORTER_OTLP_CERTIFICATE", PkiFile("other_ca.crt")}},
          "untrusting-router");
      ASSERT_FALSE(router.address.empty());
      EXPECT_EQ(ForwardTo(router.address, "layers.0.ff", "untrusted", sampled)
                    .error_code(),
                grpc::StatusCode::UNAVAILABLE);
      router.AwaitLog("did not take");
      EXPECT_NE(router.Log().find("tracing: the collector at " + destination +
                                  " did not take 1 span(s): " + why),
                std::string::npos)
          << router.Log();
      // A certificate the collector does not pass is no reason to send
      // again, over HTTP or gRPC (whose channel says UNAVAILABLE, as for a
      // collector that is down, with the handshake's error).
      EXPECT_EQ(router.Log().find("sending them again"), std::string::npos)
          << router.Log();
      EXPECT_NE(router.Log().find("(dropped: not retryable)"),
                std::string::npos)
          << router.Log();
    }
    absl::SleepFor(absl::Milliseconds(1500));  // past an export interval
    EXPECT_TRUE(collector.headers().empty()) << protocol;
  }
}

// A collector that asks for a client certificate (mutual TLS) gets the
// one of OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and _CLIENT_KEY, over HTTP
// and gRPC, and nothing from a router without one; OTEL_BSP_SCHEDULE_DELAY
// and OTEL_EXPORTER_OTLP_TIMEOUT are taken too.
TEST(OtelEnvironmentIntegrationTest, CollectorsThatAskGetAClientCertificate) {
  const std::string sampled = "00-" + kTrace + "-" + kCaller + "-01";
  for (const auto& [kind, protocol] :
       std::vector<std::pair<Collector::Kind, std::string>>{
           {Collector::Kind::kHttp, "http/protobuf"},
           {Collector::Kind::kGrpc, "grpc"}}) {
    SCOPED_TRACE(protocol);
    Collector collector(kind, PkiFile("server.crt"), PkiFile("server.key"),
                        PkiFile("ca.crt"));
    const std::vector<std::pair<std::string, std::string>> env = {
        {"OTEL_EXPORTER_OTLP_ENDPOINT", collector.base()},
        {"OTEL_EXPORTER_OTLP_PROTOCOL", protocol},
        {"OTEL_EXPORTER_OTLP_CERTIFICATE", PkiFile("ca.crt")},
        {"OTEL_EXPORTER_OTLP_TIMEOUT", "3000"},
        {"OTEL_BSP_SCHEDULE_DELAY", "100"}};
    {
      std::vector<std::pair<std::string, std::string>> with_certificate = env;
      with_certificate.push_back(
          {"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", PkiFile("client.crt")});
      with_certificate.push_back(
          {"OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", PkiFile("client.key")});
      LoneRouter router(with_certificate, "mtls-router");
      ASSERT_FALSE(router.address.empty());
      EXPECT_EQ(ForwardTo(router.address, "layers.0.ff", "mtls", sampled)
                    .error_code(),
                grpc::StatusCode::UNAVAILABLE);  // no worker: still a span
      const std::vector<json> spans =
          collector.Spans([](const std::vector<json>& spans) {
            return !SpanOf(spans, "mtls").is_null();
          });
      EXPECT_FALSE(SpanOf(spans, "mtls").is_null()) << router.Log();
      EXPECT_NE(
          router.Log().find("; client certificate " + PkiFile("client.crt")),
          std::string::npos)
          << router.Log();
    }
    const size_t exports = collector.headers().size();
    EXPECT_GE(exports, 1u);
    {
      LoneRouter router(env, "no-certificate-router");
      ASSERT_FALSE(router.address.empty());
      EXPECT_EQ(
          ForwardTo(router.address, "layers.0.ff", "no-certificate", sampled)
              .error_code(),
          grpc::StatusCode::UNAVAILABLE);
      router.AwaitLog("did not take");
      EXPECT_NE(router.Log().find("did not take 1 span(s)"), std::string::npos)
          << router.Log();
    }
    EXPECT_EQ(collector.headers().size(), exports);
  }
}

// OTLP/gRPC's endpoint without a scheme, as some collectors' instructions
// give it: plaintext with OTEL_EXPORTER_OTLP_INSECURE=true (the log says
// which), else TLS (the plaintext receiver gets nothing).
TEST(OtelEnvironmentIntegrationTest, SchemeLessGrpcEndpointsFollowInsecure) {
  const std::string sampled = "00-" + kTrace + "-" + kCaller + "-01";
  Collector collector(Collector::Kind::kGrpc);
  const std::string endpoint =
      collector.base().substr(strlen("http://"));  // 127.0.0.1:port
  for (const bool insecure : {true, false}) {
    SCOPED_TRACE(insecure);
    const std::string id = insecure ? "insecure" : "secure";
    LoneRouter router(
        {{"OTEL_EXPORTER_OTLP_ENDPOINT", endpoint},
         {"OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"},
         {"OTEL_EXPORTER_OTLP_INSECURE", insecure ? "true" : "false"}},
        id + "-router");
    ASSERT_FALSE(router.address.empty());
    EXPECT_NE(router.Log().find("to " + endpoint + " over OTLP grpc"),
              std::string::npos)
        << router.Log();
    EXPECT_NE(router.Log().find(insecure ? "; plaintext" : "; TLS"),
              std::string::npos)
        << router.Log();
    EXPECT_EQ(
        ForwardTo(router.address, "layers.0.ff", id, sampled).error_code(),
        grpc::StatusCode::UNAVAILABLE);
    if (insecure) {
      const std::vector<json> spans =
          collector.Spans([&id](const std::vector<json>& spans) {
            return !SpanOf(spans, id).is_null();
          });
      EXPECT_FALSE(SpanOf(spans, id).is_null()) << router.Log();
    } else {
      router.AwaitLog("did not take");
      EXPECT_TRUE(
          SpanOf(collector.Spans([](const std::vector<json>&) { return true; }),
                 id)
              .is_null());
    }
  }
}

// OTLP's other two forms carry the same trace: a forward's span, its
// worker calls' and the workers' (moe-expert and moe-expert-gpu), from
// flags (--otlp_traces_protocol, given to router and workers as moe-up
// does) to a protobuf-reading OTLP/HTTP receiver, and from the standard
// variables alone to an OTLP/gRPC one over TLS, gzip-compressed, headers
// as metadata.
TEST(OtlpProtocolsIntegrationTest, ProtobufAndGrpcCarryAForwardsWholeTrace) {
  for (const std::string protocol : {"http/protobuf", "grpc"}) {
    SCOPED_TRACE(protocol);
    const bool grpc = protocol == "grpc";
    Collector collector(grpc ? Collector::Kind::kGrpc : Collector::Kind::kHttp,
                        grpc ? PkiFile("server.crt") : "",
                        grpc ? PkiFile("server.key") : "");
    std::vector<std::string> flags;
    std::vector<std::pair<std::string, std::string>> env;
    if (grpc) {
      env = {{"OTEL_EXPORTER_OTLP_ENDPOINT", collector.base()},
             {"OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"},
             {"OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"},
             {"OTEL_EXPORTER_OTLP_CERTIFICATE", PkiFile("ca.crt")},
             {"OTEL_EXPORTER_OTLP_HEADERS",
              "Authorization=Bearer%20s3cret-key,x-tenant=moe"}};
    } else {
      flags = {"--otlp_traces_endpoint=" + collector.endpoint(),
               "--otlp_traces_protocol=http/protobuf"};
    }
    std::vector<std::string> router_flags = flags;
    router_flags.push_back("--trace_sample_ratio=0");
    testing::Deployment d(Checkpoint(), {"0-3", "4-7"}, router_flags);
    d.SetEnv(env);
    d.SetWorkerFlags(flags);
    ASSERT_TRUE(d.StartWorker(0).ok());
    d.SetWorkerBinary("moe-expert-gpu");
    std::vector<std::string> gpu_flags = flags;
    gpu_flags.push_back("--device=host");
    d.SetWorkerFlags(gpu_flags);
    ASSERT_TRUE(d.StartWorker(1).ok());
    ASSERT_TRUE(d.StartRouter().ok()) << d.router().Log();
    const std::vector<json> spans =
        FollowedForwardsSpans(d.router_address(), collector);
    const json forward = SpanOf(spans, "followed");
    ASSERT_FALSE(forward.is_null()) << json(spans).dump(1);
    EXPECT_EQ(forward["parentSpanId"], kCaller);
    EXPECT_TRUE(Hex(forward["spanId"], 16)) << forward["spanId"];
    EXPECT_EQ(Attribute(forward, "moe.layer"), "layers.0.ff");
    EXPECT_EQ(Attribute(forward, "moe.tokens"), "64");
    EXPECT_EQ(Attribute(forward, "moe.degraded"), false);
    int calls = 0, workers = 0;
    for (const json& s : spans) {
      EXPECT_EQ(s["traceId"], kTrace) << s.dump(1);
      if (s["service"] == "moe-router" && s["kind"] == 3) {
        ++calls;
        EXPECT_EQ(s["parentSpanId"], forward["spanId"]) << s.dump(1);
      }
      if (s["service"] != "moe-router" && s["kind"] == 2) {
        ++workers;
        EXPECT_EQ(Attribute(s, "moe.request_ids"), "followed");
      }
    }
    EXPECT_EQ(calls, 2) << json(spans).dump(1);
    EXPECT_EQ(workers, 2) << json(spans).dump(1);
    const std::vector<httplib::Headers> exports = collector.headers();
    ASSERT_FALSE(exports.empty());
    for (const httplib::Headers& h : exports) {
      if (grpc) {
        EXPECT_EQ(HeaderOf(h, "authorization"), "Bearer s3cret-key");
        EXPECT_EQ(HeaderOf(h, "x-tenant"), "moe");
      } else {
        EXPECT_EQ(HeaderOf(h, "Content-Type"), "application/x-protobuf");
      }
    }
    const std::string says =
        grpc ? "to " + collector.base().substr(strlen("https://")) +
                   " over OTLP grpc (OTEL_EXPORTER_OTLP_ENDPOINT"
             : "to " + collector.endpoint() +
                   " over OTLP http/protobuf (--otlp_traces_endpoint";
    for (const std::string& log :
         {d.router().Log(), d.worker(0).Log(), d.worker(1).Log()}) {
      EXPECT_NE(log.find(says), std::string::npos) << log;
      EXPECT_EQ(log.find("s3cret"), std::string::npos) << log;
      EXPECT_EQ(log.find("; gzip)") != std::string::npos, grpc) << log;
    }
  }
}

// Variables that cannot be followed stop the server at start, naming the
// variable and never a header's value.
TEST(OtelEnvironmentIntegrationTest, BadVariablesStopTheServerNamingThem) {
  for (const auto& [env, says] :
       std::vector<std::pair<std::vector<std::pair<std::string, std::string>>,
                             std::string>>{
           {{{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1"},
             {"OTEL_EXPORTER_OTLP_HEADERS", "api-key-s3cret"}},
            "OTEL_EXPORTER_OTLP_HEADERS: entry 1 is not key=value"},
           {{{"OTEL_EXPORTER_OTLP_ENDPOINT", "https://127.0.0.1:1"},
             {"OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem"}},
            "OTEL_EXPORTER_OTLP_CERTIFICATE: cannot read /nonexistent/ca.pem"},
           {{{"OTEL_EXPORTER_OTLP_ENDPOINT", "https://127.0.0.1:1"},
             {"OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"},
             {"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", PkiFile("client.crt")},
             {"OTEL_EXPORTER_OTLP_CLIENT_KEY", PkiFile("server.key")}},
            "OTEL_EXPORTER_OTLP_CLIENT_KEY: " + PkiFile("server.key") +
                " is not the key of OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"},
           {{{"OTEL_EXPORTER_OTLP_ENDPOINT", "https://127.0.0.1:1"},
             {"OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", PkiFile("client.key")}},
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and "
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY go together"},
           {{{"OTEL_EXPORTER_OTLP_ENDPOINT", "127.0.0.1:1"},
             {"OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"},
             {"OTEL_EXPORTER_OTLP_INSECURE", "maybe"}},
            "OTEL_EXPORTER_OTLP_INSECURE \"maybe\": must be true or false"},
           {{{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1"},
             {"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "5s"}},
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT \"5s\": must be a whole number"},
           {{{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "collector:4318"}},
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: \"collector:4318\": not an "
            "http:// or https:// URL"},
           {{{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1"},
             {"OTEL_EXPORTER_OTLP_COMPRESSION", "zstd"}},
            "OTEL_EXPORTER_OTLP_COMPRESSION: \"zstd\": not an OTLP "
            "compression (gzip or none)"},
           {{{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1"},
             {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/xml"}},
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: \"http/xml\": not an OTLP "
            "protocol (http/json, http/protobuf or grpc)"},
           {{{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:1"},
             {"OTEL_TRACES_SAMPLER", "parentbased_traceidratio"},
             {"OTEL_TRACES_SAMPLER_ARG", "half"}},
            "OTEL_TRACES_SAMPLER_ARG \"half\": must be a ratio"}}) {
    for (const char* binary : {"moe-router", "moe-expert"}) {
      std::vector<std::string> argv = {testing::BinaryPath(binary),
                                       "--checkpoint=" + Checkpoint(),
                                       "--port=0", "--metrics_port=-1"};
      if (std::string(binary) == "moe-router") {
        argv.push_back("--workers=127.0.0.1:1");
      }
      const std::string log_path = testing::TempDir() + "/bad-otel.log";
      auto p = testing::StartProcess(argv, log_path, env);
      const absl::Time until = absl::Now() + absl::Seconds(60);
      while (p->running() && absl::Now() < until) {
        absl::SleepFor(absl::Milliseconds(50));
      }
      const std::string log = ReadAll(log_path);
      EXPECT_EQ(p->exit_code(), 1) << binary << log;
      EXPECT_NE(log.find(says), std::string::npos) << binary << log;
      EXPECT_EQ(log.find("s3cret"), std::string::npos) << binary << log;
    }
  }
}

TEST(TracingFlagsTest, BadValuesStopRouterAndWorkersNamingTheFlag) {
  const std::string checkpoint = testing::GoldenPath("A_moe_eval_nodrop");
  const std::vector<std::vector<std::string>> servers = {
      {testing::BinaryPath("moe-router"), "--checkpoint=" + checkpoint,
       "--workers=127.0.0.1:1", "--port=0", "--metrics_port=-1"},
      {testing::BinaryPath("moe-expert"), "--checkpoint=" + checkpoint,
       "--port=0", "--metrics_port=-1"},
      {testing::BinaryPath("moe-expert-gpu"), "--checkpoint=" + checkpoint,
       "--device=host", "--port=0", "--metrics_port=-1"}};
  for (const auto& [flag, says] :
       std::vector<std::pair<std::string, std::string>>{
           {"--trace_sample_ratio=1.5", "--trace_sample_ratio must be 0 to 1"},
           {"--otlp_traces_endpoint=collector:4318",
            "--otlp_traces_endpoint: \"collector:4318\": not an http:// "
            "or https:// URL"},
           {"--otlp_traces_protocol=thrift",
            "--otlp_traces_protocol: \"thrift\": not an OTLP protocol"},
           {"--otlp_traces_compression=br",
            "--otlp_traces_compression: \"br\": not an OTLP compression"}}) {
    for (std::vector<std::string> argv : servers) {
      argv.push_back(flag);
      std::string log;
      EXPECT_EQ(testing::RunProcess(argv, &log), 1) << argv[0] << log;
      EXPECT_NE(log.find(says), std::string::npos) << argv[0] << log;
    }
  }
}

}  // namespace
}  // namespace moe
