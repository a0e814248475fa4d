// Tracing with real processes: moe-router and two workers on a two-layer
// model, the router's --otlp_traces_endpoint pointing at an OTLP/HTTP
// receiver in this test (an HTTP server that keeps what is POSTed to
// /v1/traces), and the spans it gets checked: a call whose caller's W3C
// traceparent is sampled gets a child span of the caller's (Forward,
// ModelInfer and REST infer, a failed call with an error status), a caller's
// unsampled context and a call without one get none (--trace_sample_ratio
// 0), and with a ratio of 1 a call without a context starts a trace.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <httplib.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/random_input.h"
#include "common/torch/demo_model.h"
#include "inference/open_inference_grpc.grpc.pb.h"
#include "moe/v1/router.grpc.pb.h"
#include "proto/tensor_codec.h"
#include "testing/deployment.h"
#include "testing/golden.h"

namespace moe {
namespace {

using nlohmann::json;

// An OTLP/HTTP receiver on 127.0.0.1: keeps every body POSTed to /v1/traces.
class Collector {
 public:
  Collector() {
    server_.Post("/v1/traces",
                 [this](const httplib::Request& req, httplib::Response& res) {
                   absl::MutexLock lock(&mu_);
                   bodies_.push_back(req.body);
                   res.set_content("{}", "application/json");
                 });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
  }
  ~Collector() {
    server_.stop();
    thread_.join();
  }
  std::string endpoint() const {
    return absl::StrCat("http://127.0.0.1:", port_, "/v1/traces");
  }

  // Every span received, each with its resource's service.name added as
  // "service", once at least `n` came (or after 20 s).
  std::vector<json> Spans(size_t n) {
    std::vector<json> spans;
    for (const absl::Time until = absl::Now() + absl::Seconds(20);;) {
      spans.clear();
      {
        absl::MutexLock lock(&mu_);
        for (const std::string& body : bodies_) {
          const json b = json::parse(body);
          for (const json& rs : b["resourceSpans"]) {
            std::string service;
            for (const json& a : rs["resource"]["attributes"]) {
              if (a["key"] == "service.name")
                service = a["value"]["stringValue"];
            }
            for (const json& ss : rs["scopeSpans"]) {
              for (json span : ss["spans"]) {
                span["service"] = service;
                spans.push_back(std::move(span));
              }
            }
          }
        }
      }
      if (spans.size() >= n || absl::Now() >= until) return spans;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }

 private:
  httplib::Server server_;
  std::thread thread_;
  int port_ = 0;
  absl::Mutex mu_;
  std::vector<std::string> bodies_ ABSL_GUARDED_BY(mu_);
};

// A span's attribute `key` as a JSON value ("stringValue", "intValue"
// (a string) or "boolValue"), null when absent.
json Attribute(const json& span, const std::string& key) {
  for (const json& a : span["attributes"]) {
    if (a["key"] == key) return a["value"].begin().value();
  }
  return nullptr;
}

// The span whose moe.request_id is `id`; null when none.
json SpanOf(const std::vector<json>& spans, const std::string& id) {
  for (const json& s : spans) {
    if (Attribute(s, "moe.request_id") == id) return s;
  }
  return nullptr;
}

bool Hex(const json& v, size_t digits) {
  if (!v.is_string()) return false;
  const std::string s = v;
  return s.size() == digits &&
         s.find_first_not_of("0123456789abcdef") == std::string::npos &&
         s.find_first_not_of('0') != std::string::npos;
}

class TracingIntegrationTest : public ::testing::Test {
 protected:
  // A router recording sampled callers' calls, and with `root_ratio` of
  // the others.
  void Start(double root_ratio) {
    common::LayerConfig config = common::DefaultDemoConfig();
    config.dim = 64;
    config.num_experts = 8;
    const std::string checkpoint = testing::TempDir() + "/trace.safetensors";
    ASSERT_TRUE(
        common::WriteDemoCheckpoint(checkpoint, config, 2, /*seed=*/3).ok());
    http_port_file_ = testing::TempDir() + "/trace-http.port";
    deployment_ = std::make_unique<testing::Deployment>(
        checkpoint, std::vector<std::string>{"0-3", "4-7"},
        std::vector<std::string>{
            "--otlp_traces_endpoint=" + collector_.endpoint(),
            absl::StrCat("--trace_sample_ratio=", root_ratio), "--http_port=0",
            "--http_port_file=" + http_port_file_});
    ASSERT_TRUE(deployment_->StartWorker(0).ok());
    ASSERT_TRUE(deployment_->StartWorker(1).ok());
    ASSERT_TRUE(deployment_->StartRouter().ok()) << deployment_->router().Log();
  }

  // A Forward of layer `layer` with these request ID and traceparent.
  grpc::Status Forward(const std::string& layer, const std::string& request_id,
                       const std::string& traceparent) {
    auto stub = moe::v1::Router::NewStub(grpc::CreateChannel(
        deployment_->router_address(), grpc::InsecureChannelCredentials()));
    grpc::ClientContext context;
    context.AddMetadata("x-request-id", request_id);
    if (!traceparent.empty()) context.AddMetadata("traceparent", traceparent);
    moe::v1::ForwardRequest request;
    request.set_layer(layer);
    EXPECT_TRUE(proto::EncodeTensor(common::RandomNormalTensor({2, 3, 64}, 11),
                                    request.mutable_x())
                    .ok());
    moe::v1::ForwardResponse response;
    return stub->Forward(&context, request, &response);
  }

  Collector collector_;
  std::unique_ptr<testing::Deployment> deployment_;
  std::string http_port_file_;
};

const std::string kTrace = "4bf92f3577b34da6a3ce929d0e0e4736";
const std::string kCaller = "00f067aa0ba902b7";

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

  std::vector<json> spans = collector_.Spans(4);
  ASSERT_EQ(spans.size(), 4u) << json(spans).dump(1);
  // Past another export interval: nothing more comes.
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  spans = collector_.Spans(4);
  EXPECT_EQ(spans.size(), 4u) << json(spans).dump(1);
  EXPECT_TRUE(SpanOf(spans, "unsampled").is_null());
  EXPECT_TRUE(SpanOf(spans, "no-context").is_null());

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

TEST_F(TracingIntegrationTest,
       WithARatioOfOneACallWithoutAContextStartsATrace) {
  Start(/*root_ratio=*/1);
  ASSERT_TRUE(Forward("layers.0.ff", "root-1", "").ok());
  ASSERT_TRUE(Forward("layers.0.ff", "root-2", "").ok());
  // A caller's unsampled context is still followed: not recorded.
  ASSERT_TRUE(Forward("layers.0.ff", "unsampled",
                      "00-" + kTrace + "-" + kCaller + "-00")
                  .ok());
  std::vector<json> spans = collector_.Spans(2);
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  spans = collector_.Spans(2);
  ASSERT_EQ(spans.size(), 2u) << json(spans).dump(1);
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

TEST(TracingFlagsTest, BadValuesStopTheRouterNamingTheFlag) {
  const std::string checkpoint = testing::GoldenPath("A_moe_eval_nodrop");
  for (const auto& [flag, says] :
       std::vector<std::pair<std::string, std::string>>{
           {"--trace_sample_ratio=1.5", "--trace_sample_ratio must be 0 to 1"},
           {"--otlp_traces_endpoint=collector:4318",
            "--otlp_traces_endpoint \"collector:4318\": not an http:// or "
            "https:// URL"}}) {
    std::string log;
    EXPECT_EQ(
        testing::RunProcess(
            {testing::BinaryPath("moe-router"), "--checkpoint=" + checkpoint,
             "--workers=127.0.0.1:1", "--port=0", "--metrics_port=-1", flag},
            &log),
        1)
        << log;
    EXPECT_NE(log.find(says), std::string::npos) << log;
  }
}

}  // namespace
}  // namespace moe
