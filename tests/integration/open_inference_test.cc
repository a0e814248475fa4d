// The Open Inference Protocol v2 with real processes: moe-up on a two-layer
// model with tokens, a client built from the project's
// proto/inference/open_inference_grpc.proto calling every RPC, the REST
// form over HTTP, ModelInfer's and REST infer's y against Forward's bit for
// bit, and the refusals.
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/router_client.h"
#include "common/dtype.h"
#include "common/random_input.h"
#include "common/status_macros.h"
#include "common/torch/demo_model.h"
#include "inference/open_inference_grpc.grpc.pb.h"
#include "proto/tensor_codec.h"
#include "testing/deployment.h"
#include "testing/golden.h"
#include "testing/loopback.h"
#include "testing/raw_call.h"
#include "testing/scrape.h"

namespace moe {
namespace {

// A tiny model (dim 64, 8 experts) of `layers` layers written as
// TempDir()/NAME.safetensors (a one-layer model is named NAME); its path.
std::string TinyCheckpoint(const std::string& name, int layers, int seed) {
  common::LayerConfig config = common::DefaultDemoConfig();
  config.dim = 64;
  config.num_experts = 8;
  const std::string path = testing::TempDir() + "/" + name + ".safetensors";
  const absl::Status written =
      common::WriteDemoCheckpoint(path, config, layers, seed);
  EXPECT_TRUE(written.ok()) << written;
  return path;
}

constexpr char kToken[] = "oip-s3cret";

using testing::ConnectLoopback;
using testing::SendAll;

// A REST infer body of the float32 tensor `x`.
std::string InferJson(const common::HostTensor& x) {
  const float* v = reinterpret_cast<const float*>(x.data.data());
  return nlohmann::json{
      {"inputs",
       {{{"name", "x"},
         {"shape", x.shape},
         {"datatype", "FP32"},
         {"data", std::vector<float>(v, v + x.data.size() / 4)}}}}}
      .dump();
}

class OpenInferenceIntegrationTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const std::string dir = testing::TempDir();
    const std::string checkpoint =
        TinyCheckpoint("oip-two-layers", 2, /*seed=*/3);
    ASSERT_FALSE(::testing::Test::HasFailure());
    const std::string tokens = dir + "/oip-tokens";
    std::ofstream(tokens) << kToken << "\n";
    const std::string port_file = dir + "/oip-up.port";
    const std::string endpoints = dir + "/oip-up.endpoints";
    up_ = testing::StartProcess(
              {testing::BinaryPath("moe-up"), "--checkpoint=" + checkpoint,
               "--workers=2", "--port=0", "--port_file=" + port_file,
               "--auth_tokens_file=" + tokens, "--http_port=0",
               "--endpoints_file=" + endpoints},
              port_file + ".log")
              .release();
    ASSERT_NE(up_, nullptr);
    auto port = testing::WaitForPortFile(port_file, absl::Seconds(90), up_);
    ASSERT_TRUE(port.ok()) << port.status() << up_->Log();
    target_ = new std::string(absl::StrCat("127.0.0.1:", *port));
    // "router_http 127.0.0.1:PORT" among the endpoints.
    std::ifstream in(endpoints);
    std::string name, address;
    while (in >> name >> address) {
      if (name == "router_http") http_port_ = std::stoi(address.substr(10));
      if (name == "router_metrics") {
        metrics_port_ = std::stoi(address.substr(10));
      }
    }
    ASSERT_GT(http_port_, 0) << up_->Log();
  }
  static void TearDownTestSuite() {
    delete up_;
    delete target_;
  }

  void SetUp() override {
    ASSERT_NE(target_, nullptr);
    stub_ = inference::GRPCInferenceService::NewStub(
        grpc::CreateChannel(*target_, grpc::InsecureChannelCredentials()));
  }

  static void WithToken(grpc::ClientContext* context) {
    context->AddMetadata("authorization", absl::StrCat("Bearer ", kToken));
  }

  // x [2, 3, 64] of seed 11, as raw FP32.
  static common::HostTensor X() {
    return common::RandomNormalTensor({2, 3, 64}, 11);
  }
  static inference::ModelInferRequest Infer(const std::string& model) {
    const common::HostTensor x = X();
    inference::ModelInferRequest r;
    r.set_model_name(model);
    (*r.mutable_parameters())["seed"].set_int64_param(5);
    auto* in = r.add_inputs();
    in->set_name("x");
    in->set_datatype("FP32");
    for (int64_t d : x.shape) in->add_shape(d);
    r.add_raw_input_contents(x.data);
    return r;
  }
  // moe.v1 Forward of `x` on `layer` (seed 5): the y every other form
  // must give, bit for bit.
  static absl::StatusOr<moe::v1::ForwardResponse> Forward(
      const common::HostTensor& x, const std::string& layer = "layers.1.ff") {
    client::ClientOptions options;
    options.token = kToken;
    moe::v1::ForwardRequest forward;
    forward.set_layer(layer);
    forward.mutable_options()->set_seed(5);
    MOE_RETURN_IF_ERROR(proto::EncodeTensor(x, forward.mutable_x()));
    return client::RouterClient::Create(*target_, options)->Forward(forward);
  }
  // `rpc` for model `name` (version `version`), with the token unless
  // `token` is false.
  template <typename Request, typename Response>
  grpc::Status Named(grpc::Status (inference::GRPCInferenceService::Stub::*rpc)(
                         grpc::ClientContext*, const Request&, Response*),
                     const std::string& name, const std::string& version,
                     Response* out, bool token = true) {
    grpc::ClientContext context;
    if (token) WithToken(&context);
    Request request;
    request.set_name(name);
    request.set_version(version);
    return (stub_.get()->*rpc)(&context, request, out);
  }
  grpc::Status Call(const inference::ModelInferRequest& request,
                    inference::ModelInferResponse* response,
                    bool token = true) {
    grpc::ClientContext context;
    if (token) WithToken(&context);
    return stub_->ModelInfer(&context, request, response);
  }

  static testing::Process* up_;
  static std::string* target_;
  static int http_port_;
  static int metrics_port_;
  std::unique_ptr<inference::GRPCInferenceService::Stub> stub_;
};

testing::Process* OpenInferenceIntegrationTest::up_ = nullptr;
std::string* OpenInferenceIntegrationTest::target_ = nullptr;
int OpenInferenceIntegrationTest::http_port_ = 0;
int OpenInferenceIntegrationTest::metrics_port_ = 0;

TEST_F(OpenInferenceIntegrationTest,
       EveryRpcAnswersAndInferIsForwardBitForBit) {
  {
    grpc::ClientContext context;
    inference::ServerLiveResponse live;
    ASSERT_TRUE(
        stub_->ServerLive(&context, inference::ServerLiveRequest(), &live)
            .ok());
    EXPECT_TRUE(live.live());
  }
  {
    grpc::ClientContext context;
    inference::ServerReadyResponse ready;
    ASSERT_TRUE(
        stub_->ServerReady(&context, inference::ServerReadyRequest(), &ready)
            .ok());
    EXPECT_TRUE(ready.ready());
  }
  {
    grpc::ClientContext context;
    WithToken(&context);
    inference::ServerMetadataResponse metadata;
    ASSERT_TRUE(stub_
                    ->ServerMetadata(
                        &context, inference::ServerMetadataRequest(), &metadata)
                    .ok());
    EXPECT_EQ(metadata.name(), "moe-serve");
    EXPECT_EQ(std::vector<std::string>(metadata.extensions().begin(),
                                       metadata.extensions().end()),
              (std::vector<std::string>{"binary_tensor_data",
                                        "model_configuration", "statistics"}));
  }
  {
    // RepositoryIndex (Triton's, MLServer's): both layers, ready, their
    // version the fingerprint; with a token; one unnamed repository.
    grpc::ClientContext context;
    WithToken(&context);
    inference::RepositoryIndexRequest request;
    request.set_ready(true);
    inference::RepositoryIndexResponse index;
    const grpc::Status s = stub_->RepositoryIndex(&context, request, &index);
    ASSERT_TRUE(s.ok()) << s.error_message();
    ASSERT_EQ(index.models_size(), 2);
    for (int i = 0; i < 2; ++i) {
      EXPECT_EQ(index.models(i).name(), absl::StrCat("layers.", i, ".ff"));
      EXPECT_EQ(index.models(i).state(), "READY");
      EXPECT_EQ(index.models(i).reason(), "");
      EXPECT_EQ(index.models(i).version().rfind("sha256:", 0), 0u);
    }
    grpc::ClientContext without_token;
    EXPECT_EQ(
        stub_->RepositoryIndex(&without_token, request, &index).error_code(),
        grpc::StatusCode::UNAUTHENTICATED);
    grpc::ClientContext named;
    WithToken(&named);
    request.set_repository_name("models");
    EXPECT_EQ(stub_->RepositoryIndex(&named, request, &index).error_code(),
              grpc::StatusCode::NOT_FOUND);
  }
  // The extension's load and unload are not served.
  for (const char* method :
       {"/inference.GRPCInferenceService/RepositoryModelLoad",
        "/inference.GRPCInferenceService/RepositoryModelUnload"}) {
    EXPECT_EQ(
        testing::RawCall(*target_, method, std::string(), absl::Seconds(10))
            .error_code(),
        grpc::StatusCode::UNIMPLEMENTED)
        << method;
  }
  for (const char* model : {"layers.0.ff", "layers.1.ff"}) {
    SCOPED_TRACE(model);
    grpc::ClientContext ready_context;
    inference::ModelReadyRequest ready_request;
    ready_request.set_name(model);
    inference::ModelReadyResponse ready;
    ASSERT_TRUE(stub_->ModelReady(&ready_context, ready_request, &ready).ok());
    EXPECT_TRUE(ready.ready());
    grpc::ClientContext context;
    WithToken(&context);
    inference::ModelMetadataRequest request;
    request.set_name(model);
    inference::ModelMetadataResponse metadata;
    ASSERT_TRUE(stub_->ModelMetadata(&context, request, &metadata).ok());
    EXPECT_EQ(metadata.name(), model);
    EXPECT_EQ(metadata.inputs(0).shape(2), 64);

    // ModelInfer, raw and typed, against Forward with the same seed.
    auto expected = Forward(X(), model);
    ASSERT_TRUE(expected.ok()) << expected.status();
    inference::ModelInferRequest raw = Infer(model);
    inference::ModelInferRequest typed = raw;
    typed.clear_raw_input_contents();
    const std::string& bytes = raw.raw_input_contents(0);
    const float* v = reinterpret_cast<const float*>(bytes.data());
    typed.mutable_inputs(0)->mutable_contents()->mutable_fp32_contents()->Add(
        v, v + bytes.size() / sizeof(float));
    for (const auto* request : {&raw, &typed}) {
      inference::ModelInferResponse response;
      const grpc::Status s = Call(*request, &response);
      ASSERT_TRUE(s.ok()) << s.error_message();
      ASSERT_GE(response.raw_output_contents_size(), 1);
      EXPECT_EQ(response.outputs(0).name(), "y");
      EXPECT_EQ(response.raw_output_contents(0), expected->y().data());
    }
  }
  // ModelInfer goes by the caller's x-request-id, without one by the
  // request's own `id` (Triton's request ID), without that by the trace ID
  // of a W3C traceparent; the answer says which.
  const std::string trace = "4bf92f3577b34da6a3ce929d0e0e4736";
  const std::string traceparent = "00-" + trace + "-00f067aa0ba902b7-01";
  struct Case {
    std::string header, traceparent, body_id, expected;
  };
  for (const Case& c :
       {Case{"", "", "oip-body-7", "oip-body-7"},
        Case{"oip-header-8", traceparent, "oip-body-7", "oip-header-8"},
        Case{"", traceparent, "oip-body-7", "oip-body-7"},
        Case{"", traceparent, "", trace}}) {
    SCOPED_TRACE(c.header + " " + c.traceparent + " " + c.body_id);
    inference::ModelInferRequest named = Infer("layers.0.ff");
    named.set_id(c.body_id);
    grpc::ClientContext context;
    WithToken(&context);
    if (!c.header.empty()) context.AddMetadata("x-request-id", c.header);
    if (!c.traceparent.empty()) {
      context.AddMetadata("traceparent", c.traceparent);
    }
    inference::ModelInferResponse response;
    const grpc::Status s = stub_->ModelInfer(&context, named, &response);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(response.id(), c.body_id);
    auto echoed = context.GetServerInitialMetadata().find("x-request-id");
    ASSERT_NE(echoed, context.GetServerInitialMetadata().end());
    EXPECT_EQ(std::string(echoed->second.data(), echoed->second.size()),
              c.expected);
  }
}

// Triton's ModelStreamInfer: requests over one stream answered in turn,
// each y ModelInfer's bit for bit; a request that fails answered with its
// error (code and message) and id, the stream going on; the token checked
// when the stream opens.
TEST_F(OpenInferenceIntegrationTest, StreamInferAnswersEachRequestInTurn) {
  std::vector<inference::ModelInferRequest> requests;
  std::vector<std::string> expected;  // "" for an answer with y
  for (const char* model : {"layers.0.ff", "layers.1.ff"}) {
    requests.push_back(Infer(model));
    requests.back().set_id(absl::StrCat("ok-", model));
    expected.push_back("");
  }
  requests.push_back(Infer("layers.0.ff"));
  requests.back().set_id("bad-shape");
  requests.back().mutable_inputs(0)->set_shape(2, 63);
  expected.push_back("INVALID_ARGUMENT: ");
  requests.push_back(Infer("layers.9.ff"));
  requests.back().set_id("no-such-model");
  expected.push_back("NOT_FOUND: ");
  requests.push_back(Infer("layers.1.ff"));
  requests.back().set_id("after-the-errors");
  expected.push_back("");

  grpc::ClientContext context;
  WithToken(&context);
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
  auto stream = stub_->ModelStreamInfer(&context);
  for (size_t i = 0; i < requests.size(); ++i) {
    SCOPED_TRACE(requests[i].id());
    ASSERT_TRUE(stream->Write(requests[i]));
    inference::ModelStreamInferResponse answer;
    ASSERT_TRUE(stream->Read(&answer));
    EXPECT_EQ(answer.infer_response().id(), requests[i].id());
    if (!expected[i].empty()) {
      EXPECT_EQ(answer.error_message().rfind(expected[i], 0), 0u)
          << answer.error_message();
      EXPECT_EQ(answer.infer_response().outputs_size(), 0);
      continue;
    }
    EXPECT_EQ(answer.error_message(), "");
    EXPECT_EQ(answer.infer_response().model_name(), requests[i].model_name());
    inference::ModelInferResponse unary;
    ASSERT_TRUE(Call(requests[i], &unary).ok());
    ASSERT_EQ(answer.infer_response().raw_output_contents_size(),
              unary.raw_output_contents_size());
    ASSERT_GT(unary.raw_output_contents_size(), 0);
    for (int o = 0; o < unary.raw_output_contents_size(); ++o) {
      EXPECT_EQ(answer.infer_response().raw_output_contents(o),
                unary.raw_output_contents(o))
          << "output " << o;
    }
  }
  ASSERT_TRUE(stream->WritesDone());
  inference::ModelStreamInferResponse extra;
  EXPECT_FALSE(stream->Read(&extra));
  const grpc::Status status = stream->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();

  // Several requests written before any answer is read: answered in order.
  {
    grpc::ClientContext pipelined;
    WithToken(&pipelined);
    auto s = stub_->ModelStreamInfer(&pipelined);
    for (int i = 0; i < 4; ++i) {
      inference::ModelInferRequest r =
          Infer(absl::StrCat("layers.", i % 2, ".ff"));
      r.set_id(absl::StrCat("p", i));
      ASSERT_TRUE(s->Write(r));
    }
    ASSERT_TRUE(s->WritesDone());
    for (int i = 0; i < 4; ++i) {
      inference::ModelStreamInferResponse answer;
      ASSERT_TRUE(s->Read(&answer));
      EXPECT_EQ(answer.infer_response().id(), absl::StrCat("p", i));
      EXPECT_EQ(answer.error_message(), "");
    }
    EXPECT_TRUE(s->Finish().ok());
  }

  // Streams cancelled with a request in flight, or before its answer is
  // read: each ends CANCELLED (under ASan, nothing of them is touched
  // after it is freed) and the router serves on.
  for (int i = 0; i < 20; ++i) {
    grpc::ClientContext cancelled;
    WithToken(&cancelled);
    auto s = stub_->ModelStreamInfer(&cancelled);
    ASSERT_TRUE(s->Write(requests[i % 2]));
    if (i % 2 == 1) absl::SleepFor(absl::Milliseconds(5));
    cancelled.TryCancel();
    inference::ModelStreamInferResponse answer;
    while (s->Read(&answer)) {
    }
    EXPECT_EQ(s->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  {
    inference::ModelInferResponse unary;
    const grpc::Status after = Call(requests[0], &unary);
    EXPECT_TRUE(after.ok()) << after.error_message();
  }

  // Without the token the stream ends before any request is read.
  {
    grpc::ClientContext anonymous;
    auto s = stub_->ModelStreamInfer(&anonymous);
    s->Write(requests[0]);
    inference::ModelStreamInferResponse answer;
    EXPECT_FALSE(s->Read(&answer));
    EXPECT_EQ(s->Finish().error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
}

TEST_F(OpenInferenceIntegrationTest, RefusalsCarryTheRightCodes) {
  inference::ModelInferResponse response;
  inference::ModelInferRequest unknown = Infer("layers.9.ff");
  EXPECT_EQ(Call(unknown, &response).error_code(), grpc::StatusCode::NOT_FOUND);
  inference::ModelInferRequest shape = Infer("layers.0.ff");
  shape.mutable_inputs(0)->set_shape(2, 32);
  shape.mutable_inputs(0)->set_shape(1, 6);
  const grpc::Status bad_shape = Call(shape, &response);
  EXPECT_EQ(bad_shape.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(bad_shape.error_message().find("64"), std::string::npos)
      << bad_shape.error_message();
  inference::ModelInferRequest dtype = Infer("layers.0.ff");
  dtype.mutable_inputs(0)->set_datatype("FP64");
  EXPECT_EQ(Call(dtype, &response).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Call(Infer("layers.0.ff"), &response, /*token=*/false).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  // Triton's `timeout` (microseconds, tritonclient's `timeout=`) is the
  // call's deadline: one microsecond passes before the forward can run
  // (refused at admission, or at its start), on gRPC as on REST; a
  // minute is plenty.
  inference::ModelInferRequest hurried = Infer("layers.0.ff");
  (*hurried.mutable_parameters())["timeout"].set_int64_param(1);
  const grpc::Status late = Call(hurried, &response);
  EXPECT_TRUE(late.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
              late.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED)
      << late.error_code() << " " << late.error_message();
  httplib::Client http("127.0.0.1", http_port_);
  const httplib::Headers token = {
      {"Authorization", absl::StrCat("Bearer ", kToken)}};
  nlohmann::json body = nlohmann::json::parse(InferJson(X()));
  body["parameters"] = {{"timeout", 1}};
  auto rest_late = http.Post("/v2/models/layers.0.ff/infer", token, body.dump(),
                             "application/json");
  ASSERT_TRUE(rest_late);
  EXPECT_TRUE(rest_late->status == 504 || rest_late->status == 429)
      << rest_late->status << " " << rest_late->body;
  (*hurried.mutable_parameters())["timeout"].set_int64_param(60'000'000);
  EXPECT_TRUE(Call(hurried, &response).ok());
  body["parameters"] = {{"timeout", 60'000'000}};
  auto rest_in_time = http.Post("/v2/models/layers.0.ff/infer", token,
                                body.dump(), "application/json");
  ASSERT_TRUE(rest_in_time);
  EXPECT_EQ(rest_in_time->status, 200) << rest_in_time->body;
  // And it still serves.
  EXPECT_TRUE(Call(Infer("layers.0.ff"), &response).ok());
}

// The statistics extension (Triton's ModelStatistics, GET .../stats):
// each layer's answered and failed calls, sequences, forwards and where
// their time went, the same over gRPC and REST; a call refused before it
// named a layer's work (unknown model, bad shape) is no layer's.
TEST_F(OpenInferenceIntegrationTest, StatisticsCountEachLayersCalls) {
  auto stats = [&](const std::string& name, const std::string& version,
                   inference::ModelStatisticsResponse* out, bool token = true) {
    return Named(&inference::GRPCInferenceService::Stub::ModelStatistics, name,
                 version, out, token);
  };
  inference::ModelStatisticsResponse before;
  ASSERT_TRUE(stats("", "", &before).ok());
  ASSERT_EQ(before.model_stats_size(), 2);
  EXPECT_EQ(before.model_stats(0).name(), "layers.0.ff");
  EXPECT_EQ(before.model_stats(1).name(), "layers.1.ff");
  const int64_t started_ms = absl::ToUnixMillis(absl::Now());

  // Layer 0: four answered calls of x [2, 3, 64] (three gRPC, one REST),
  // one failed (a deadline of 1 us); refusals that are no layer's work.
  inference::ModelInferResponse response;
  for (int i = 0; i < 3; ++i)
    ASSERT_TRUE(Call(Infer("layers.0.ff"), &response).ok());
  httplib::Client http("127.0.0.1", http_port_);
  const httplib::Headers token = {
      {"Authorization", absl::StrCat("Bearer ", kToken)}};
  auto rest = http.Post("/v2/models/layers.0.ff/infer", token, InferJson(X()),
                        "application/json");
  ASSERT_TRUE(rest);
  ASSERT_EQ(rest->status, 200) << rest->body;
  inference::ModelInferRequest hurried = Infer("layers.0.ff");
  (*hurried.mutable_parameters())["timeout"].set_int64_param(1);
  EXPECT_FALSE(Call(hurried, &response).ok());
  EXPECT_FALSE(Call(Infer("layers.9.ff"), &response).ok());
  inference::ModelInferRequest shape = Infer("layers.0.ff");
  shape.mutable_inputs(0)->set_shape(2, 32);
  EXPECT_FALSE(Call(shape, &response).ok());
  const int64_t ended_ms = absl::ToUnixMillis(absl::Now());

  inference::ModelStatisticsResponse after;
  ASSERT_TRUE(stats("layers.0.ff", "", &after).ok());
  ASSERT_EQ(after.model_stats_size(), 1);
  const inference::ModelStatistics& a = after.model_stats(0);
  const inference::ModelStatistics& b = before.model_stats(0);
  EXPECT_EQ(a.name(), "layers.0.ff");
  EXPECT_EQ(a.version(), b.version());
  EXPECT_EQ(a.version().rfind("sha256:", 0), 0u) << a.version();
  const inference::InferStatistics& s = a.inference_stats();
  const inference::InferStatistics& t = b.inference_stats();
  EXPECT_EQ(s.success().count() - t.success().count(), 4u);
  EXPECT_EQ(s.fail().count() - t.fail().count(), 1u);
  EXPECT_EQ(a.inference_count() - b.inference_count(), 8u);  // 4 x batch 2
  EXPECT_EQ(a.execution_count() - b.execution_count(), 4u);
  for (const auto* d : {&s.queue(), &s.compute_input(), &s.compute_infer(),
                        &s.compute_output()}) {
    EXPECT_EQ(d->count(), s.success().count());
    EXPECT_GT(d->ns(), 0u);
  }
  // The stages are parts of the calls' time.
  EXPECT_GE(s.success().ns(), s.queue().ns() + s.compute_input().ns() +
                                  s.compute_infer().ns() +
                                  s.compute_output().ns());
  EXPECT_GT(s.compute_infer().ns() - t.compute_infer().ns(), 0u);
  EXPECT_EQ(s.cache_hit().count(), 0u);
  EXPECT_GE(static_cast<int64_t>(a.last_inference()), started_ms);
  EXPECT_LE(static_cast<int64_t>(a.last_inference()), ended_ms);
  ASSERT_GE(a.batch_stats_size(), 1);
  EXPECT_EQ(a.batch_stats(0).batch_size(), 2u);
  EXPECT_EQ(a.batch_stats(0).compute_infer().count(), a.execution_count());
  // Layer 1 saw none of it.
  inference::ModelStatisticsResponse other;
  ASSERT_TRUE(stats("layers.1.ff", a.version(), &other).ok());
  EXPECT_EQ(other.model_stats(0).inference_stats().success().count(),
            before.model_stats(1).inference_stats().success().count());
  EXPECT_EQ(other.model_stats(0).inference_stats().fail().count(),
            before.model_stats(1).inference_stats().fail().count());

  EXPECT_EQ(stats("", "", &other, /*token=*/false).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(stats("layers.9.ff", "", &other).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(stats("layers.0.ff", "sha256:0", &other).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(stats("", a.version(), &other).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  // REST: the same numbers, in Triton's JSON.
  EXPECT_EQ(http.Get("/v2/models/stats")->status, 401);
  auto all = http.Get("/v2/models/stats", token);
  ASSERT_TRUE(all);
  ASSERT_EQ(all->status, 200) << all->body;
  const nlohmann::json every = nlohmann::json::parse(all->body)["model_stats"];
  ASSERT_EQ(every.size(), 2u) << all->body;
  EXPECT_EQ(every[1]["name"], "layers.1.ff");
  auto one = http.Get(
      absl::StrCat("/v2/models/layers.0.ff/versions/", a.version(), "/stats"),
      token);
  ASSERT_TRUE(one);
  ASSERT_EQ(one->status, 200) << one->body;
  const nlohmann::json m = nlohmann::json::parse(one->body)["model_stats"][0];
  EXPECT_EQ(m["name"], "layers.0.ff");
  EXPECT_EQ(m["version"], a.version());
  EXPECT_EQ(m["inference_count"].get<uint64_t>(), a.inference_count());
  EXPECT_EQ(m["execution_count"].get<uint64_t>(), a.execution_count());
  EXPECT_EQ(m["last_inference"].get<uint64_t>(), a.last_inference());
  EXPECT_EQ(m["inference_stats"]["success"]["count"].get<uint64_t>(),
            s.success().count());
  EXPECT_EQ(m["inference_stats"]["fail"]["count"].get<uint64_t>(),
            s.fail().count());
  EXPECT_EQ(m["inference_stats"]["compute_infer"]["ns"].get<uint64_t>(),
            s.compute_infer().ns());
  EXPECT_EQ(m["inference_stats"]["cache_miss"]["count"].get<uint64_t>(), 0u);
  EXPECT_EQ(m["batch_stats"][0]["batch_size"].get<uint64_t>(), 2u);
  EXPECT_EQ(http.Get("/v2/models/layers.9.ff/stats", token)->status, 404);
  EXPECT_EQ(
      http.Get("/v2/models/layers.0.ff/versions/sha256:0/stats", token)->status,
      404);
}

// Triton's model configuration (ModelConfig, GET .../config), which
// perf_analyzer reads before it sends: the metadata's tensors with Triton's
// types, max_batch_size 0 (x's dims carry the batch).
TEST_F(OpenInferenceIntegrationTest,
       ModelConfigDescribesEachLayerAsTritonDoes) {
  auto config = [&](const std::string& name, const std::string& version,
                    inference::ModelConfigResponse* out, bool token = true) {
    return Named(&inference::GRPCInferenceService::Stub::ModelConfig, name,
                 version, out, token);
  };
  inference::ModelConfigResponse response;
  ASSERT_TRUE(config("layers.1.ff", "", &response).ok());
  const inference::ModelConfig& c = response.config();
  EXPECT_EQ(c.name(), "layers.1.ff");
  EXPECT_EQ(c.platform(), "moe-serve");
  EXPECT_EQ(c.backend(), "moe-serve");
  EXPECT_EQ(c.max_batch_size(), 0);
  ASSERT_EQ(c.input_size(), 2);
  EXPECT_EQ(c.input(0).name(), "x");
  EXPECT_EQ(c.input(0).data_type(), inference::TYPE_FP32);
  EXPECT_EQ(
      std::vector<int64_t>(c.input(0).dims().begin(), c.input(0).dims().end()),
      (std::vector<int64_t>{-1, -1, 64}));
  EXPECT_FALSE(c.input(0).optional());
  EXPECT_EQ(c.input(1).name(), "second_choice_uniforms");
  EXPECT_TRUE(c.input(1).optional());
  std::vector<std::string> outputs;
  for (const auto& o : c.output()) {
    outputs.push_back(
        absl::StrCat(o.name(), " ", inference::DataType_Name(o.data_type())));
  }
  EXPECT_EQ(outputs,
            (std::vector<std::string>{
                "y TYPE_FP32", "balance_loss TYPE_FP32",
                "router_z_loss TYPE_FP32", "total_aux_loss TYPE_FP32",
                "kept_per_expert TYPE_INT64", "dropped_tokens TYPE_INT64"}));
  EXPECT_EQ(c.output(4).dims(0), 8);  // an entry per expert
  EXPECT_EQ(config("layers.1.ff", "", &response, /*token=*/false).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(config("layers.9.ff", "", &response).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(config("layers.1.ff", "sha256:0", &response).error_code(),
            grpc::StatusCode::NOT_FOUND);

  httplib::Client http("127.0.0.1", http_port_);
  const httplib::Headers token = {
      {"Authorization", absl::StrCat("Bearer ", kToken)}};
  EXPECT_EQ(http.Get("/v2/models/layers.0.ff/config")->status, 401);
  auto rest = http.Get("/v2/models/layers.0.ff/config", token);
  ASSERT_TRUE(rest);
  ASSERT_EQ(rest->status, 200) << rest->body;
  const nlohmann::json j = nlohmann::json::parse(rest->body);
  EXPECT_EQ(j["name"], "layers.0.ff");
  EXPECT_EQ(j["max_batch_size"], 0);
  EXPECT_EQ(j["input"][0]["name"], "x");
  EXPECT_EQ(j["input"][0]["data_type"], "TYPE_FP32");
  EXPECT_EQ(j["input"][0]["format"], "FORMAT_NONE");
  EXPECT_EQ(j["input"][0]["dims"], nlohmann::json::array({-1, -1, 64}));
  EXPECT_EQ(j["input"][1]["optional"], true);
  EXPECT_EQ(j["output"][5]["name"], "dropped_tokens");
  EXPECT_EQ(j["output"][5]["data_type"], "TYPE_INT64");
  EXPECT_EQ(http.Get("/v2/models/layers.9.ff/config", token)->status, 404);
}

// The REST form: health without a token, metadata and infer with one, y
// (JSON numbers) bit for bit Forward's, errors as {"error": ...} with the
// protocol's HTTP codes.
TEST_F(OpenInferenceIntegrationTest, RestServesTheSameModelsAndBits) {
  httplib::Client http("127.0.0.1", http_port_);
  const httplib::Headers token = {
      {"Authorization", absl::StrCat("Bearer ", kToken)}};
  auto live = http.Get("/v2/health/live");
  ASSERT_TRUE(live);
  EXPECT_EQ(live->status, 200);
  EXPECT_EQ(http.Get("/v2/health/ready")->status, 200);
  EXPECT_EQ(http.Get("/v2/models/layers.1.ff/ready")->status, 200);
  EXPECT_EQ(http.Get("/v2/models/layers.7.ff/ready")->status, 404);
  // A path the protocol does not have is named, with those it has.
  auto no_path = http.Get("/v2/models", token);
  ASSERT_TRUE(no_path);
  EXPECT_EQ(no_path->status, 404);
  EXPECT_EQ(nlohmann::json::parse(no_path->body)["error"],
            "no such path: GET \"/v2/models\"; this router serves GET /v2, "
            "/v2/health/live, /v2/health/ready, "
            "/v2/models/{model}[/versions/{version}][/ready|/config], "
            "/v2/models[/{model}[/versions/{version}]]/stats and POST "
            "/v2/models/{model}[/versions/{version}]/infer, "
            "/v2/repository/index");

  EXPECT_EQ(http.Get("/v2/models/layers.1.ff")->status, 401);
  auto metadata = http.Get("/v2/models/layers.1.ff", token);
  ASSERT_EQ(metadata->status, 200) << metadata->body;
  const nlohmann::json m = nlohmann::json::parse(metadata->body);
  EXPECT_EQ(m["name"], "layers.1.ff");
  EXPECT_EQ(m["inputs"][0]["shape"][2], 64);

  // The repository index (Triton's, MLServer's): every layer, ready, its
  // version the fingerprint; the token is asked for; the body is checked.
  const std::string version = m["versions"][0];
  for (const std::string body : {"", "{}", R"({"ready": true})"}) {
    auto index =
        http.Post("/v2/repository/index", token, body, "application/json");
    ASSERT_TRUE(index);
    ASSERT_EQ(index->status, 200) << index->body;
    EXPECT_EQ(nlohmann::json::parse(index->body),
              nlohmann::json::parse(absl::StrCat(
                  R"([{"name":"layers.0.ff","version":")", version,
                  R"(","state":"READY"},{"name":"layers.1.ff","version":")",
                  version, R"(","state":"READY"}])")))
        << body;
  }
  EXPECT_EQ(http.Post("/v2/repository/index", "", "application/json")->status,
            401);
  for (const std::string body :
       {R"({"ready": 1})", R"({"models": []})", "[]", "{"}) {
    auto index =
        http.Post("/v2/repository/index", token, body, "application/json");
    ASSERT_TRUE(index);
    EXPECT_EQ(index->status, 400) << body << ": " << index->body;
  }
  auto large = http.Post("/v2/repository/index", token, std::string(5000, ' '),
                         "application/json");
  ASSERT_TRUE(large);
  EXPECT_EQ(large->status, 413) << large->body;

  const common::HostTensor x = X();
  const float* v = reinterpret_cast<const float*>(x.data.data());
  nlohmann::json body = {
      {"id", "rest-1"},
      {"parameters", {{"seed", 5}}},
      {"inputs",
       {{{"name", "x"},
         {"shape", x.shape},
         {"datatype", "FP32"},
         {"data", std::vector<float>(v, v + x.data.size() / 4)}}}},
      {"outputs", {{{"name", "y"}}}}};
  auto infer = http.Post("/v2/models/layers.1.ff/infer", token, body.dump(),
                         "application/json");
  ASSERT_TRUE(infer);
  ASSERT_EQ(infer->status, 200) << infer->body;
  const nlohmann::json r = nlohmann::json::parse(infer->body);
  EXPECT_EQ(r["id"], "rest-1");
  // Without an X-Request-Id header, the body's `id` names the call; with
  // one, the header does.
  EXPECT_EQ(infer->get_header_value("X-Request-Id"), "rest-1");
  httplib::Headers named = token;
  named.emplace("X-Request-Id", "rest-header-2");
  auto by_header = http.Post("/v2/models/layers.1.ff/infer", named, body.dump(),
                             "application/json");
  ASSERT_TRUE(by_header);
  ASSERT_EQ(by_header->status, 200) << by_header->body;
  EXPECT_EQ(by_header->get_header_value("X-Request-Id"), "rest-header-2");
  EXPECT_EQ(nlohmann::json::parse(by_header->body)["id"], "rest-1");
  // Without either, a W3C traceparent's trace ID names it (the body's `id`
  // still comes first).
  httplib::Headers traced = token;
  traced.emplace("traceparent",
                 "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
  nlohmann::json anonymous = body;
  anonymous.erase("id");
  for (const nlohmann::json* b : {&body, &anonymous}) {
    auto by_trace = http.Post("/v2/models/layers.1.ff/infer", traced, b->dump(),
                              "application/json");
    ASSERT_TRUE(by_trace);
    ASSERT_EQ(by_trace->status, 200) << by_trace->body;
    EXPECT_EQ(by_trace->get_header_value("X-Request-Id"),
              b == &body ? "rest-1" : "0af7651916cd43dd8448eb211c80319c");
  }
  ASSERT_EQ(r["outputs"].size(), 1u);
  std::vector<float> y = r["outputs"][0]["data"].get<std::vector<float>>();
  auto expected = Forward(x);
  ASSERT_TRUE(expected.ok()) << expected.status();
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(y.data()), y.size() * 4),
            expected->y().data());

  // A client that asks before sending its body (Expect: 100-continue) is
  // refused before it sends it when its token or its length refuse it, and
  // told to go on otherwise.
  const std::string json = body.dump();
  for (const auto& [headers, code] : std::vector<std::pair<std::string, int>>{
           {absl::StrCat("Content-Length: ", json.size(), "\r\n"), 401},
           {absl::StrCat("Authorization: Bearer ", kToken,
                         "\r\nContent-Length: 1000000000\r\n"),
            413},
           {absl::StrCat("Authorization: Bearer ", kToken,
                         "\r\nContent-Length: ", json.size(), "\r\n"),
            100}}) {
    const int fd = testing::ConnectLoopback(http_port_);
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(testing::SendAll(
        fd, absl::StrCat("POST /v2/models/layers.1.ff/infer HTTP/1.1\r\n"
                         "Host: a\r\nExpect: 100-continue\r\n",
                         headers, "\r\n")));
    std::string answer;
    if (code != 100) {
      std::string head;
      EXPECT_EQ(testing::ReadAnswer(fd, &answer, &head), code) << answer;
      EXPECT_NE(head.find("Connection: close"), std::string::npos) << head;
      close(fd);
      continue;
    }
    const std::string go_on = "HTTP/1.1 100 Continue\r\n\r\n";
    std::string first(go_on.size(), '\0');
    ASSERT_EQ(recv(fd, first.data(), first.size(), MSG_WAITALL),
              static_cast<ssize_t>(first.size()));
    EXPECT_EQ(first, go_on);
    ASSERT_TRUE(testing::SendAll(fd, json));
    EXPECT_EQ(testing::ReadAnswer(fd, &answer), 200) << answer;
    close(fd);
  }

  // Refusals: no token, bad JSON, unknown model, wrong shape.
  auto refused = [&](const std::string& path, const std::string& text,
                     const httplib::Headers& headers) {
    auto res = http.Post(path, headers, text, "application/json");
    EXPECT_TRUE(nlohmann::json::parse(res->body).contains("error"))
        << res->body;
    return res->status;
  };
  EXPECT_EQ(refused("/v2/models/layers.1.ff/infer", body.dump(), {}), 401);
  EXPECT_EQ(refused("/v2/models/layers.1.ff/infer", "{\"inputs\": [", token),
            400);
  EXPECT_EQ(refused("/v2/models/nope/infer", body.dump(), token), 404);
  body["inputs"][0]["shape"] = {2, 6, 32};
  EXPECT_EQ(refused("/v2/models/layers.1.ff/infer", body.dump(), token), 400);
  // A POST whose head gives no length (`curl -X POST` without data) is
  // answered 411 at once (httplib would read its body until the client
  // closed: the client waited for the body deadline, unanswered), and the
  // connection serves on.
  for (const char* method : {"POST", "PUT", "DELETE"}) {
    const int fd = testing::ConnectLoopback(http_port_);
    ASSERT_GE(fd, 0);
    const absl::Time start = absl::Now();
    ASSERT_TRUE(testing::SendAll(
        fd, absl::StrCat(method,
                         " /v2/models/layers.1.ff/infer HTTP/1.1\r\n"
                         "Host: a\r\n\r\n")));
    std::string answer;
    EXPECT_EQ(testing::ReadAnswer(fd, &answer), 411) << method;
    EXPECT_LT(absl::Now() - start, absl::Seconds(5)) << method;
    EXPECT_NE(answer.find(
                  absl::StrCat("a ", method, " needs a Content-Length header")),
              std::string::npos)
        << answer;
    ASSERT_TRUE(testing::SendAll(
        fd, "GET /v2/health/live HTTP/1.1\r\nHost: a\r\n\r\n"));
    EXPECT_EQ(testing::ReadAnswer(fd, &answer), 200) << method;
    close(fd);
  }

  // A head past the REST port's bounds is answered with what it passed:
  // 431 for a whole head over 64 KiB (with "Connection: close"), 414 for a
  // request line and 400 for a header line over httplib's 8192 bytes (each
  // was a bare "bad request").
  const std::string fields = [] {
    std::string f;
    for (int i = 0; i < 80; ++i) {
      absl::StrAppend(&f, "X-Field-", i, ": ", std::string(1000, 'v'), "\r\n");
    }
    return f;
  }();
  for (const auto& [head, code, says] :
       std::vector<std::tuple<std::string, int, std::string>>{
           {absl::StrCat("GET /v2/health/live HTTP/1.1\r\nHost: a\r\n", fields,
                         "\r\n"),
            431,
            "the request's head (its line and 81 header fields: 81151 "
            "bytes) is larger than this router takes (65536 bytes)"},
           {absl::StrCat("GET /v2/", std::string(9000, 'x'),
                         " HTTP/1.1\r\nHost: a\r\n\r\n"),
            414,
            "the request line (method, path and query) is longer than this "
            "router takes (8192 bytes)"},
           {absl::StrCat("GET /v2/health/live HTTP/1.1\r\nHost: a\r\nX-Big: ",
                         std::string(9000, 'v'), "\r\n\r\n"),
            400, "or a header line longer than 8192 bytes"}}) {
    const int fd = testing::ConnectLoopback(http_port_);
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(testing::SendAll(fd, head));
    std::string answer, answer_head;
    EXPECT_EQ(testing::ReadAnswer(fd, &answer, &answer_head), code) << answer;
    EXPECT_NE(answer.find(says), std::string::npos) << answer;
    if (code == 431) {
      EXPECT_NE(answer_head.find("Connection: close"), std::string::npos)
          << answer_head;
    }
    close(fd);
  }

  // Counted by protocol beside Forward's.
  httplib::Client metrics("127.0.0.1", metrics_port_);
  auto text = metrics.Get("/metrics");
  ASSERT_TRUE(text);
  for (
      const char* series :
      {R"(moe_router_requests_total{code="OK",protocol="oip_rest"} )",
       R"(moe_router_requests_total{code="INVALID_ARGUMENT",protocol="oip_rest"} )",
       R"(moe_router_requests_total{code="OK",protocol="moe.v1"} )"}) {
    const size_t at = text->body.find(series);
    ASSERT_NE(at, std::string::npos) << series;
    EXPECT_GE(std::stod(text->body.substr(at + std::strlen(series))), 1)
        << series;
  }
}

// Triton's binary tensor data extension, as tritonclient.http sends it by
// default: the JSON of Inference-Header-Content-Length bytes, then the
// tensors' bytes; the outputs asked as binary come back the same way. y's
// bytes are Forward's (FP32) and ModelInfer's (BF16, which JSON cannot
// carry) bit for bit.
TEST_F(OpenInferenceIntegrationTest, RestCarriesTensorsAsBinaryData) {
  httplib::Client http("127.0.0.1", http_port_);
  const httplib::Headers token = {
      {"Authorization", absl::StrCat("Bearer ", kToken)}};
  auto server = http.Get("/v2", token);
  ASSERT_TRUE(server);
  ASSERT_EQ(server->status, 200) << server->body;
  EXPECT_EQ(nlohmann::json::parse(server->body)["extensions"],
            nlohmann::json::array(
                {"binary_tensor_data", "model_configuration", "statistics"}));

  const common::HostTensor x = X();
  const int64_t n = static_cast<int64_t>(x.data.size() / sizeof(float));
  std::string bf16(static_cast<size_t>(n) * 2, '\0');
  common::ConvertFromFloat32(reinterpret_cast<const float*>(x.data.data()), n,
                             common::DType::kBFloat16, bf16.data());
  // The expected y of each: Forward's for FP32, ModelInfer's for BF16.
  auto by_forward = Forward(x);
  ASSERT_TRUE(by_forward.ok()) << by_forward.status();
  inference::ModelInferRequest bf16_request = Infer("layers.1.ff");
  bf16_request.mutable_inputs(0)->set_datatype("BF16");
  bf16_request.set_raw_input_contents(0, bf16);
  inference::ModelInferResponse by_infer;
  const grpc::Status s = Call(bf16_request, &by_infer);
  ASSERT_TRUE(s.ok()) << s.error_message();

  struct Case {
    const char* datatype;
    std::string bytes;
    std::string y;
  };
  for (const Case& c : {Case{"FP32", x.data, by_forward->y().data()},
                        Case{"BF16", bf16, by_infer.raw_output_contents(0)}}) {
    SCOPED_TRACE(c.datatype);
    const std::string json =
        nlohmann::json{
            {"parameters", {{"seed", 5}, {"binary_data_output", true}}},
            {"inputs",
             {{{"name", "x"},
               {"shape", x.shape},
               {"datatype", c.datatype},
               {"parameters", {{"binary_data_size", c.bytes.size()}}}}}},
            {"outputs",
             {{{"name", "y"}},
              {{"name", "dropped_tokens"},
               {"parameters", {{"binary_data", false}}}}}}}
            .dump();
    httplib::Headers headers = token;
    headers.emplace("Inference-Header-Content-Length",
                    std::to_string(json.size()));
    auto res = http.Post("/v2/models/layers.1.ff/infer", headers,
                         json + c.bytes, "application/octet-stream");
    ASSERT_TRUE(res);
    ASSERT_EQ(res->status, 200) << res->body.substr(0, 300);
    EXPECT_EQ(res->get_header_value("Content-Type"),
              "application/octet-stream");
    size_t length = 0;
    ASSERT_TRUE(absl::SimpleAtoi(
        res->get_header_value("Inference-Header-Content-Length"), &length));
    ASSERT_LE(length, res->body.size());
    const nlohmann::json head =
        nlohmann::json::parse(res->body.substr(0, length));
    ASSERT_EQ(head["outputs"].size(), 2u) << head.dump();
    EXPECT_EQ(head["outputs"][0]["datatype"], c.datatype);
    EXPECT_EQ(head["outputs"][0]["parameters"]["binary_data_size"], c.y.size());
    EXPECT_FALSE(head["outputs"][0].contains("data"));
    EXPECT_EQ(head["outputs"][1]["data"].size(), 1u);
    EXPECT_TRUE(res->body.substr(length) == c.y)
        << "y's bytes differ from the gRPC answer's";
  }

  // Bytes that do not match what the JSON says are named, with 400.
  const std::string json =
      nlohmann::json{{"inputs",
                      {{{"name", "x"},
                        {"shape", x.shape},
                        {"datatype", "FP32"},
                        {"parameters", {{"binary_data_size", n * 4}}}}}}}
          .dump();
  httplib::Headers headers = token;
  headers.emplace("Inference-Header-Content-Length",
                  std::to_string(json.size()));
  auto cut = http.Post("/v2/models/layers.1.ff/infer", headers,
                       json + x.data.substr(4), "application/octet-stream");
  ASSERT_TRUE(cut);
  EXPECT_EQ(cut->status, 400);
  EXPECT_NE(cut->body.find("binary_data_size " + std::to_string(n * 4) +
                           " passes the " + std::to_string(n * 4 - 4) +
                           " bytes left"),
            std::string::npos)
      << cut->body;
}

// Clients that send an infer and close the connection before reading the
// answer (about 2.5 MB of JSON): the router's writes fail with EPIPE (the
// servers ignore SIGPIPE: server::BlockShutdownSignals) and it keeps
// serving.
TEST_F(OpenInferenceIntegrationTest, ClientsThatHangUpMidAnswerCostNothing) {
  const std::string body =
      InferJson(common::RandomNormalTensor({1, 2048, 64}, 3));
  const std::string request = absl::StrCat(
      "POST /v2/models/layers.0.ff/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
      "Authorization: Bearer ",
      kToken,
      "\r\nContent-Type: application/json\r\nContent-Length: ", body.size(),
      "\r\n\r\n", body);
  for (int i = 0; i < 20; ++i) {
    const int fd = ConnectLoopback(http_port_);
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(SendAll(fd, request));
    // Closed before the answer: the router's first write of it draws a
    // reset, and its next write fails.
    close(fd);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  // The abandoned infers are still being served (each on its own
  // connection thread); a new client gets a thread of its own.
  httplib::Client http("127.0.0.1", http_port_);
  auto live = http.Get("/v2/health/live");
  ASSERT_TRUE(live) << up_->Log();
  EXPECT_EQ(live->status, 200);
  // While the 20 abandoned infers (40,960 tokens) still run, admission may
  // refuse a new one for load (on a loaded machine it once did): that is
  // the router serving. Retried for up to 30 s; a router that keeps
  // refusing, or answers anything else, fails.
  grpc::Status status;
  for (const absl::Time until = absl::Now() + absl::Seconds(30);;) {
    inference::ModelInferResponse response;
    status = Call(Infer("layers.0.ff"), &response);
    const bool load =
        status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED ||
        status.error_code() == grpc::StatusCode::UNAVAILABLE ||
        status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
    if (!load || absl::Now() >= until) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_TRUE(status.ok()) << status.error_code() << " "
                           << status.error_message();
}

// cpp-httplib serves a connection on one thread from its first request to
// its close, and its default pool is 8 threads on a small machine: eight
// idle keep-alive clients (a connection pool, say) held every other REST
// client off for the minute of the keep-alive. Now the pool is
// --http_threads (64) and an idle connection is closed after 5 s.
TEST_F(OpenInferenceIntegrationTest, IdleConnectionsHoldNoOtherClientOff) {
  const std::string get =
      "GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
  std::vector<int> idle;
  for (int i = 0; i < 16; ++i) {
    const int fd = ConnectLoopback(http_port_);
    ASSERT_GE(fd, 0);
    idle.push_back(fd);
    ASSERT_TRUE(SendAll(fd, get));
    // Headers and body may come in two segments: read up to the body, {}.
    std::string answer;
    char chunk[1024];
    while (!absl::EndsWith(answer, "\r\n\r\n{}")) {
      const ssize_t n = recv(fd, chunk, sizeof(chunk), 0);
      ASSERT_GT(n, 0) << "connection " << i << " after: " << answer;
      answer.append(chunk, static_cast<size_t>(n));
    }
  }
  const absl::Time answered = absl::Now();
  httplib::Client http("127.0.0.1", http_port_);
  // Under the keep-alive (5 s), so a client held off until an idle
  // connection ends fails.
  http.set_connection_timeout(3, 0);
  http.set_read_timeout(3, 0);
  auto live = http.Get("/v2/health/live");
  ASSERT_TRUE(live) << "a client beside 16 idle ones waited 3 s";
  EXPECT_EQ(live->status, 200);
  // Each idle connection ends from the router's side (EOF, not our 30 s
  // receive timeout), and not before its keep-alive.
  for (int fd : idle) {
    char byte;
    EXPECT_EQ(recv(fd, &byte, 1, 0), 0);
    close(fd);
  }
  const absl::Duration held = absl::Now() - answered;
  EXPECT_GE(held, absl::Seconds(4));
  EXPECT_LT(held, absl::Seconds(30));
}

// A 1 x 4 x 64 request for the one-layer tiny model `model`.
inference::ModelInferRequest StreamRequest(const std::string& model) {
  inference::ModelInferRequest request;
  request.set_model_name(model);
  auto* x = request.add_inputs();
  x->set_name("x");
  x->set_datatype("FP32");
  for (int64_t n : {1, 4, 64}) x->add_shape(n);
  request.add_raw_input_contents(
      common::RandomNormalTensor({1, 4, 64}, 3).data);
  return request;
}

// The router's requests in flight (its gauge).
double Inflight(testing::Deployment& d) {
  return testing::ScrapeSum(d.router_metrics_address(),
                            "moe_router_inflight_requests");
}

// Inflight(d), once it reached `n` or 20 s passed.
double AwaitInflight(testing::Deployment& d, double n) {
  const absl::Time give_up = absl::Now() + absl::Seconds(20);
  while (Inflight(d) < n && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  return Inflight(d);
}

// A router told to stop ends its open streams between requests
// (UNAVAILABLE, "open a new stream"), rather than serving them on until
// its grace (30 s here) cuts them, and stops without waiting for them (nor
// for the client's connection, idle once the stream ended).
TEST(OpenInferenceStreamTest, AStoppingRouterEndsItsStreams) {
  const std::string checkpoint = TinyCheckpoint("oip-stream", 1, /*seed=*/5);
  ASSERT_FALSE(HasFailure());
  testing::Deployment d(checkpoint, {"0-7"}, {"--grace_seconds=30"});
  ASSERT_TRUE(d.StartWorker(0).ok()) << d.worker(0).Log();
  ASSERT_TRUE(d.StartRouter().ok()) << d.router().Log();
  auto stub = inference::GRPCInferenceService::NewStub(grpc::CreateChannel(
      d.router_address(), grpc::InsecureChannelCredentials()));
  inference::ModelInferRequest request = StreamRequest("oip-stream");

  grpc::ClientContext context;
  auto stream = stub->ModelStreamInfer(&context);
  ASSERT_TRUE(stream->Write(request));
  inference::ModelStreamInferResponse answer;
  ASSERT_TRUE(stream->Read(&answer));
  ASSERT_EQ(answer.error_message(), "");

  // The stream waits for its next request when the router is told to stop.
  const absl::Time start = absl::Now();
  d.router().Signal(SIGTERM);
  EXPECT_FALSE(stream->Read(&answer));
  const grpc::Status status = stream->Finish();
  const absl::Duration ended = absl::Now() - start;
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << status.error_message();
  EXPECT_NE(status.error_message().find("open a new stream"), std::string::npos)
      << status.error_message();
  EXPECT_EQ(d.router().Wait(absl::Seconds(20)), 0) << d.router().Log();
  const absl::Duration stopped = absl::Now() - start;
  EXPECT_LT(ended, absl::Seconds(5));
  EXPECT_LT(stopped, absl::Seconds(8)) << d.router().Log();
}

// Requests written on one stream before any answer is read are served
// together, up to the stream's bound (32), and answered in the order they
// were written: with the worker frozen, 40 requests on a stream put 32 in
// flight at the router (its in-flight gauge), never more; once the worker
// thaws, the 40 answers come back in order.
TEST(OpenInferenceStreamTest, RequestsOnOneStreamAreServedTogetherInOrder) {
  const std::string checkpoint = TinyCheckpoint("oip-pipelined", 1, 5);
  ASSERT_FALSE(HasFailure());
  // Admission would refuse some of the 40 on a slow machine (under ASan,
  // 32 forwards ahead were judged 2.3 s of waiting, past the default 2 s).
  testing::Deployment d(checkpoint, {"0-7"}, {"--max_queue_ms=60000"});
  ASSERT_TRUE(d.StartWorker(0).ok()) << d.worker(0).Log();
  ASSERT_TRUE(d.StartRouter().ok()) << d.router().Log();
  auto stub = inference::GRPCInferenceService::NewStub(grpc::CreateChannel(
      d.router_address(), grpc::InsecureChannelCredentials()));
  inference::ModelInferRequest request = StreamRequest("oip-pipelined");
  ASSERT_EQ(Inflight(d), 0);

  ASSERT_TRUE(d.worker(0).Freeze());
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
  auto stream = stub->ModelStreamInfer(&context);
  constexpr int kRequests = 40;
  for (int i = 0; i < kRequests; ++i) {
    request.set_id(absl::StrCat("r", i));
    ASSERT_TRUE(stream->Write(request));
  }
  EXPECT_EQ(AwaitInflight(d, 32), 32);
  absl::SleepFor(absl::Milliseconds(300));
  // The stream is not read past its bound.
  EXPECT_EQ(Inflight(d), 32);
  d.worker(0).Signal(SIGCONT);
  for (int i = 0; i < kRequests; ++i) {
    inference::ModelStreamInferResponse answer;
    ASSERT_TRUE(stream->Read(&answer)) << i;
    EXPECT_EQ(answer.infer_response().id(), absl::StrCat("r", i));
    EXPECT_EQ(answer.error_message(), "");
    EXPECT_GT(answer.infer_response().raw_output_contents_size(), 0);
  }
  ASSERT_TRUE(stream->WritesDone());
  inference::ModelStreamInferResponse extra;
  EXPECT_FALSE(stream->Read(&extra));
  const grpc::Status status = stream->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(Inflight(d), 0);
}

// A router told to stop while a stream has requests in flight answers
// them, in order, and then ends the stream (UNAVAILABLE, "open a new
// stream").
TEST(OpenInferenceStreamTest, AStoppingRouterAnswersAStreamsRequestsFirst) {
  const std::string checkpoint = TinyCheckpoint("oip-stream-stop", 1, 5);
  ASSERT_FALSE(HasFailure());
  testing::Deployment d(checkpoint, {"0-7"}, {"--grace_seconds=30"});
  ASSERT_TRUE(d.StartWorker(0).ok()) << d.worker(0).Log();
  ASSERT_TRUE(d.StartRouter().ok()) << d.router().Log();
  auto stub = inference::GRPCInferenceService::NewStub(grpc::CreateChannel(
      d.router_address(), grpc::InsecureChannelCredentials()));
  inference::ModelInferRequest request = StreamRequest("oip-stream-stop");

  ASSERT_TRUE(d.worker(0).Freeze());
  grpc::ClientContext context;
  auto stream = stub->ModelStreamInfer(&context);
  for (int i = 0; i < 3; ++i) {
    request.set_id(absl::StrCat("r", i));
    ASSERT_TRUE(stream->Write(request));
  }
  ASSERT_EQ(AwaitInflight(d, 3), 3);
  d.router().Signal(SIGTERM);
  absl::SleepFor(absl::Milliseconds(500));
  d.worker(0).Signal(SIGCONT);
  for (int i = 0; i < 3; ++i) {
    inference::ModelStreamInferResponse answer;
    ASSERT_TRUE(stream->Read(&answer)) << i;
    EXPECT_EQ(answer.infer_response().id(), absl::StrCat("r", i));
    EXPECT_EQ(answer.error_message(), "");
  }
  inference::ModelStreamInferResponse extra;
  EXPECT_FALSE(stream->Read(&extra));
  const grpc::Status status = stream->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << status.error_message();
  EXPECT_NE(status.error_message().find("open a new stream"), std::string::npos)
      << status.error_message();
  EXPECT_EQ(d.router().Wait(absl::Seconds(20)), 0) << d.router().Log();
}

// The router holds at most --http_max_bytes_in_flight bytes of REST bodies:
// a body that does not fit beside those held is answered 429 after its
// bytes are read and dropped (the connection stays usable), and served once
// the others are done; a body larger than the whole budget is 413.
TEST(OpenInferenceBudgetTest, BodiesPastTheBytesInFlightAreRefusedAndDropped) {
  const std::string checkpoint = TinyCheckpoint("oip-budget", 1, /*seed=*/5);
  ASSERT_FALSE(HasFailure());
  const std::string port_file = testing::TempDir() + "/oip-budget.http.port";
  testing::Deployment d(checkpoint, {"0-7"},
                        {"--http_port=0", "--http_port_file=" + port_file,
                         "--http_max_bytes_in_flight=300000"});
  ASSERT_TRUE(d.StartWorker(0).ok()) << d.worker(0).Log();
  ASSERT_TRUE(d.StartRouter().ok()) << d.router().Log();
  const absl::StatusOr<int> port =
      testing::WaitForPortFile(port_file, absl::Seconds(60), &d.router());
  ASSERT_TRUE(port.ok()) << port.status();

  // 1 x 128 x 64 floats as JSON (about 160 KB), padded with spaces to
  // `size` bytes.
  const std::string json =
      InferJson(common::RandomNormalTensor({1, 128, 64}, 7));
  ASSERT_LT(json.size(), 200000u);
  auto post = [&](size_t size, bool expect_continue) {
    return absl::StrCat(
        "POST /v2/models/oip-budget/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n",
        expect_continue ? "Expect: 100-continue\r\n" : "",
        "Content-Type: application/json\r\nContent-Length: ", size, "\r\n\r\n",
        json, std::string(size - json.size(), ' '));
  };
  const std::string held = post(200000, /*expect_continue=*/true);
  const size_t head = held.find("\r\n\r\n") + 4;

  // The value of an unlabelled series, or of one with its labels
  // ("name{a=\"b\"}"), on the router's /metrics; -1 when absent.
  httplib::Client metrics(d.router_metrics_address());
  auto gauge = [&](const std::string& series) {
    auto text = metrics.Get("/metrics");
    if (!text) return -1.0;
    const size_t at = text->body.find("\n" + series + " ");
    return at == std::string::npos
               ? -1.0
               : std::stod(text->body.substr(at + series.size() + 2));
  };
  EXPECT_EQ(gauge("moe_router_rest_body_bytes"), 0);

  // A's body is held from its headers on: send them and a little, and wait
  // until the router holds its bytes; leave the rest for later.
  const int a = ConnectLoopback(*port);
  ASSERT_GE(a, 0);
  ASSERT_TRUE(SendAll(a, absl::string_view(held).substr(0, head + 1000)));
  char line[64];
  const ssize_t n = recv(a, line, sizeof(line), 0);
  ASSERT_GT(n, 0);
  ASSERT_TRUE(absl::StartsWith(absl::string_view(line, n), "HTTP/1.1 100"))
      << absl::string_view(line, n);
  const absl::Time until = absl::Now() + absl::Seconds(30);
  while (gauge("moe_router_rest_body_bytes") != 200000 && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  ASSERT_EQ(gauge("moe_router_rest_body_bytes"), 200000);
  EXPECT_GE(gauge(R"(moe_router_rest_connections{state="served"})"), 1);

  // B's does not fit beside A's: 429, and its connection serves on.
  const int b = ConnectLoopback(*port);
  ASSERT_GE(b, 0);
  std::string body;
  ASSERT_TRUE(SendAll(b, post(200000, false)));
  EXPECT_EQ(testing::ReadAnswer(b, &body), 429);
  EXPECT_NE(body.find("--http_max_bytes_in_flight"), std::string::npos)
      << body.substr(0, 300);
  ASSERT_TRUE(
      SendAll(b, "GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"));
  EXPECT_EQ(testing::ReadAnswer(b, &body), 200);

  // A finishes and is served; then B's body fits.
  ASSERT_TRUE(SendAll(a, absl::string_view(held).substr(head + 1000)));
  EXPECT_EQ(testing::ReadAnswer(a, &body), 200) << body.substr(0, 300);
  EXPECT_NE(body.find("\"outputs\""), std::string::npos) << body.substr(0, 300);
  ASSERT_TRUE(SendAll(b, post(200000, false)));
  EXPECT_EQ(testing::ReadAnswer(b, &body), 200) << body.substr(0, 300);

  // A length larger than the whole budget (413, not a 429 worth retrying)
  // but at most 4 times it: the body is read and dropped, then answered,
  // so that a client that sends all of its body before it reads (Python's
  // http.client) reads the 413 (answered from the head, such a client
  // hung until its own timeout); the connection serves on.
  {
    const int c = ConnectLoopback(*port);
    ASSERT_GE(c, 0);
    ASSERT_TRUE(
        SendAll(c, absl::StrCat("POST /v2/models/oip-budget/infer HTTP/1.1\r\n"
                                "Host: 127.0.0.1\r\nContent-Length: 300001"
                                "\r\n\r\n",
                                std::string(300001, ' '))));
    EXPECT_EQ(testing::ReadAnswer(c, &body), 413) << body;
    EXPECT_NE(body.find("the body (300001 bytes) is larger than this router "
                        "takes (300000)"),
              std::string::npos)
        << body;
    ASSERT_TRUE(
        SendAll(c, "GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"));
    EXPECT_EQ(testing::ReadAnswer(c, &body), 200);
    close(c);
  }
  // Lengths larger than that or that are no size (400): answered from the
  // headers alone, before any of the body is read, nothing held.
  const std::pair<const char*, int> lengths[] = {{"1200001", 413},
                                                 {"18446744073709551615", 413},
                                                 {"-1", 400},
                                                 {"1e3", 400},
                                                 {"x", 400}};
  for (const auto& [length, code] : lengths) {
    const int c = ConnectLoopback(*port);
    ASSERT_GE(c, 0);
    ASSERT_TRUE(
        SendAll(c, absl::StrCat("POST /v2/models/oip-budget/infer HTTP/1.1\r\n"
                                "Host: 127.0.0.1\r\nContent-Length: ",
                                length, "\r\n\r\n")));
    EXPECT_EQ(testing::ReadAnswer(c, &body), code) << length << ": " << body;
    close(c);
  }
  // A client that sends all of a body over 4 times the limit before it
  // reads (Python's http.client; curl reads as it sends but was reset
  // too, one time in three): the 413 from the head, then what it still
  // sends read and dropped until it closes, so that it sends all of it and
  // reads the answer (closing at once reset it: its sends failed with a
  // broken pipe and the answer was lost).
  {
    const int c = ConnectLoopback(*port);
    ASSERT_GE(c, 0);
    constexpr int kMiB = 1 << 20;
    ASSERT_TRUE(
        SendAll(c, absl::StrCat("POST /v2/models/oip-budget/infer HTTP/1.1\r\n"
                                "Host: 127.0.0.1\r\nContent-Length: ",
                                32 * kMiB, "\r\n\r\n")));
    const std::string chunk(kMiB, ' ');
    for (int i = 0; i < 32; ++i) {
      if (!SendAll(c, chunk)) {
        ADD_FAILURE() << "MiB " << i << " of the body: " << strerror(errno);
        break;
      }
    }
    std::string head;
    EXPECT_EQ(testing::ReadAnswer(c, &body, &head), 413) << body;
    EXPECT_NE(head.find("Connection: close"), std::string::npos) << head;
    EXPECT_NE(body.find(absl::StrCat("the body (", 32 * kMiB,
                                     " bytes) is larger than this router "
                                     "takes (300000)")),
              std::string::npos)
        << body;
    char byte;
    EXPECT_EQ(recv(c, &byte, 1, 0), 0);  // then the router's end
    close(c);
  }
  // Chunked: held as the whole limit, served.
  {
    const int c = ConnectLoopback(*port);
    ASSERT_GE(c, 0);
    ASSERT_TRUE(SendAll(
        c,
        absl::StrCat("POST /v2/models/oip-budget/infer HTTP/1.1\r\n"
                     "Host: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                     "\r\n",
                     absl::Hex(json.size()), "\r\n", json, "\r\n0\r\n\r\n")));
    EXPECT_EQ(testing::ReadAnswer(c, &body), 200) << body.substr(0, 300);
    close(c);
  }
  // Compressed (Content-Encoding: gzip, which httplib inflates as it
  // reads): held as the whole limit and served when it inflates within it;
  // past it 413 once the inflated bytes pass the limit (unbounded, a 64 KB
  // gzip of zeros became 64 MB of the router's memory); another encoding
  // (which httplib hands over as it is) 415, its body read and dropped.
  const std::string gz = testing::TempDir() + "/oip-budget.gz";
  auto gzip = [&](const std::string& text) {
    std::ofstream(gz + ".in", std::ios::binary) << text;
    EXPECT_EQ(std::system(("gzip -c < " + gz + ".in > " + gz).c_str()), 0);
    std::ifstream in(gz, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  const struct {
    std::string encoding;
    std::string bytes;
    int code;
    const char* says;
  } encoded[] = {
      {"gzip", gzip(json), 200, "\"outputs\""},
      {"gzip", gzip(std::string(16 << 20, ' ')), 413,
       "the body, decompressed (Content-Encoding: gzip), is larger than this "
       "router takes (300000 bytes)"},
      {"zstd", json, 415,
       R"(Content-Encoding \"zstd\": this router inflates gzip, deflate and br)"},
  };
  for (const auto& e : encoded) {
    SCOPED_TRACE(e.encoding + " " + std::to_string(e.bytes.size()));
    ASSERT_LT(e.bytes.size(), 200000u);
    const int c = ConnectLoopback(*port);
    ASSERT_GE(c, 0);
    ASSERT_TRUE(SendAll(
        c, absl::StrCat("POST /v2/models/oip-budget/infer HTTP/1.1\r\n"
                        "Host: 127.0.0.1\r\nContent-Encoding: ",
                        e.encoding, "\r\nContent-Length: ", e.bytes.size(),
                        "\r\n\r\n", e.bytes)));
    EXPECT_EQ(testing::ReadAnswer(c, &body), e.code) << body.substr(0, 300);
    EXPECT_NE(body.find(e.says), std::string::npos) << body.substr(0, 300);
    close(c);
  }
  close(a);
  close(b);

  // Every hold ended with its answer.
  EXPECT_EQ(gauge("moe_router_rest_body_bytes"), 0);
  auto text = metrics.Get("/metrics");
  ASSERT_TRUE(text);
  EXPECT_NE(
      text->body.find(
          R"(moe_router_requests_total{code="RESOURCE_EXHAUSTED",protocol="oip_rest"} 1)"),
      std::string::npos);
}

// cpp-httplib's timeouts bound each read alone, so a client that sent its
// request a byte at a time held a thread of --http_threads for as long as
// it liked, and as many such clients as threads held the port; and it
// takes any number of header lines. Now a request must arrive within
// --http_request_timeout_s (its head after the 5 s keep-alive, its body
// plus 1 s per MiB received) and its head within 64 KiB, else its connection is
// closed and its thread serves the next one.
TEST(OpenInferenceSlowSenderTest, SlowOrEndlessRequestsAreClosed) {
  const std::string checkpoint = TinyCheckpoint("oip-slow", 1, /*seed=*/5);
  ASSERT_FALSE(HasFailure());
  const std::string port_file = testing::TempDir() + "/oip-slow.http.port";
  testing::Deployment d(checkpoint, {"0-7"},
                        {"--http_port=0", "--http_port_file=" + port_file,
                         "--http_threads=2", "--http_request_timeout_s=2"});
  ASSERT_TRUE(d.StartWorker(0).ok()) << d.worker(0).Log();
  ASSERT_TRUE(d.StartRouter().ok()) << d.router().Log();
  const absl::StatusOr<int> port =
      testing::WaitForPortFile(port_file, absl::Seconds(60), &d.router());
  ASSERT_TRUE(port.ok()) << port.status();

  // Sends `head` at once, then one byte every 200 ms for at most 40 s, until
  // a send fails; then waits for the router's end of the connection.
  // Returns how long after the head the connection ended (infinite when
  // it did not end from the router's side).
  auto trickle = [&](const std::string& head) {
    const int fd = ConnectLoopback(*port);
    if (fd < 0 || !SendAll(fd, head)) return absl::InfiniteDuration();
    const absl::Time start = absl::Now();
    while (absl::Now() - start < absl::Seconds(40) && SendAll(fd, "a")) {
      absl::SleepFor(absl::Milliseconds(200));
    }
    char byte;
    const ssize_t n = recv(fd, &byte, 1, 0);
    const bool ended = n == 0 || (n < 0 && errno == ECONNRESET);
    const absl::Duration took = absl::Now() - start;
    close(fd);
    return ended && took < absl::Seconds(40) ? took : absl::InfiniteDuration();
  };

  // A body that does not arrive within 2 s (plus 1 s per MiB received:
  // ~0 here). Its head announces 50 MB: were the time earned by the
  // announced length (it was), the trickle would hold its thread for 50 s.
  const absl::Duration body = trickle(
      "POST /v2/models/oip-slow/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
      "Content-Type: application/json\r\nContent-Length: 50000000\r\n\r\n{");
  EXPECT_GE(body, absl::Milliseconds(1500));
  EXPECT_LT(body, absl::Seconds(10));

  // Two heads that never end hold both threads; a third client waits for
  // one, and gets it once the two are closed, after the keep-alive and the
  // timeout (7 s), long before their 40 s of sending would have ended.
  const std::string head =
      "GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
  absl::Duration slow[2];
  std::thread first([&] { slow[0] = trickle(head); });
  std::thread second([&] { slow[1] = trickle(head); });
  absl::SleepFor(absl::Seconds(1));
  httplib::Client http("127.0.0.1", *port);
  http.set_read_timeout(30, 0);
  const absl::Time asked = absl::Now();
  auto live = http.Get("/v2/health/live");
  const absl::Duration waited = absl::Now() - asked;
  first.join();
  second.join();
  ASSERT_TRUE(live) << "a client behind two slow senders got no answer";
  EXPECT_EQ(live->status, 200);
  EXPECT_LT(waited, absl::Seconds(20));
  for (const absl::Duration took : slow) {
    EXPECT_GE(took, absl::Seconds(5));
    EXPECT_LT(took, absl::Seconds(20));
  }

  // A head without end (httplib takes any number of header lines, each
  // kept: 2 million of them grew the router by 215 MB) is closed once past
  // 64 KiB, long before its deadline.
  {
    const int c = ConnectLoopback(*port);
    ASSERT_GE(c, 0);
    std::string lines = "GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n";
    for (int i = 0; i < 10000; ++i) absl::StrAppend(&lines, "X-", i, ": v\r\n");
    // Once the router closed it, it takes no more bytes (a window of 0,
    // without a reset): the sends end at this timeout.
    const timeval limit{1, 0};
    setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof(limit));
    const absl::Time start = absl::Now();
    for (int i = 0; i < 1000 && SendAll(c, lines); ++i) {
    }
    char byte;
    const ssize_t n = recv(c, &byte, 1, 0);
    EXPECT_TRUE(n == 0 || (n < 0 && errno == ECONNRESET)) << n;
    EXPECT_LT(absl::Now() - start, absl::Seconds(5));
    close(c);
  }

  // A keep-alive connection idle longer than the timeout but within the
  // keep-alive is not closed: the wait before a head is the keep-alive's.
  {
    const int c = ConnectLoopback(*port);
    ASSERT_GE(c, 0);
    std::string answer;
    const std::string get =
        "GET /v2/health/ready HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    ASSERT_TRUE(SendAll(c, get));
    EXPECT_EQ(testing::ReadAnswer(c, &answer), 200);
    absl::SleepFor(absl::Seconds(3));
    ASSERT_TRUE(SendAll(c, get));
    EXPECT_EQ(testing::ReadAnswer(c, &answer), 200);
    close(c);
  }

  httplib::Client metrics(d.router_metrics_address());
  auto text = metrics.Get("/metrics");
  ASSERT_TRUE(text);
  for (const char* series :
       {R"(moe_router_rest_connections_closed_total{reason="slow_head"} 2)",
        R"(moe_router_rest_connections_closed_total{reason="slow_body"} 1)",
        R"(moe_router_rest_connections_closed_total{reason="large_head"} 1)"}) {
    EXPECT_NE(text->body.find(series), std::string::npos) << series;
  }
  const std::string log = d.router().Log();
  EXPECT_NE(log.find("REST: closed the connection from 127.0.0.1:"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("its request's body was not in within 2s of its head"),
            std::string::npos)
      << log;
  EXPECT_NE(log.find("no whole request head came within 7s"), std::string::npos)
      << log;
  EXPECT_NE(log.find("its request's head passed 65536 bytes ("),
            std::string::npos)
      << log;
}

// moe-router's output when started with the REST port and `flag`, which
// must make it stop.
std::string RouterRefusing(const std::string& flag) {
  std::string out;
  EXPECT_NE(testing::RunProcess(
                {testing::BinaryPath("moe-router"),
                 "--checkpoint=" + testing::GoldenPath("A_moe_eval_nodrop"),
                 "--workers=127.0.0.1:1", "--host=127.0.0.1", "--port=0",
                 "--metrics_port=-1", "--http_port=0", flag},
                &out),
            0)
      << flag;
  return out;
}

// A model is ready while every one of its experts has a worker up: the
// repository index, the model's readiness and {"ready": true} follow a
// worker's death and its return.
TEST(OpenInferenceReadinessTest, TheIndexFollowsTheWorkers) {
  auto http_port = testing::FreeLoopbackPort();
  ASSERT_TRUE(http_port.ok());
  testing::Deployment d(testing::GoldenPath("A_moe_eval_nodrop"),
                        {"0-1", "2-3"},
                        {absl::StrCat("--http_port=", *http_port)});
  ASSERT_TRUE(d.StartWorker(0).ok());
  ASSERT_TRUE(d.StartWorker(1).ok());
  ASSERT_TRUE(d.StartRouter().ok()) << d.router().Log();
  httplib::Client http("127.0.0.1", *http_port);
  auto index = [&](const std::string& body) {
    auto r = http.Post("/v2/repository/index", body, "application/json");
    EXPECT_TRUE(r);
    EXPECT_EQ(r ? r->status : 0, 200) << (r ? r->body : "");
    return r ? nlohmann::json::parse(r->body) : nlohmann::json();
  };
  const nlohmann::json all = index("");
  ASSERT_EQ(all.size(), 1u) << all;
  const std::string name = all[0]["name"];
  EXPECT_EQ(all[0]["state"], "READY");
  EXPECT_EQ(index(R"({"ready": true})"), all);

  const int port = d.worker_port(1);
  d.worker(1).Signal(SIGKILL);
  d.worker(1).Wait(absl::Seconds(10));
  ASSERT_TRUE(d.WaitWorkerState(1, false, absl::Seconds(20)).ok());
  const nlohmann::json down = index("{}");
  ASSERT_EQ(down.size(), 1u) << down;
  EXPECT_EQ(down[0]["state"], "UNAVAILABLE") << down;
  EXPECT_EQ(down[0]["reason"], "2 of its experts have no worker up") << down;
  EXPECT_EQ(index(R"({"ready": true})"), nlohmann::json::array());
  EXPECT_EQ(http.Get("/v2/models/" + name + "/ready")->status, 400);
  // gRPC's index says the same.
  auto stub = inference::GRPCInferenceService::NewStub(grpc::CreateChannel(
      d.router_address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  inference::RepositoryIndexResponse grpc_index;
  ASSERT_TRUE(stub->RepositoryIndex(&context,
                                    inference::RepositoryIndexRequest(),
                                    &grpc_index)
                  .ok());
  ASSERT_EQ(grpc_index.models_size(), 1);
  EXPECT_EQ(grpc_index.models(0).state(), "UNAVAILABLE");
  EXPECT_EQ(grpc_index.models(0).reason(),
            "2 of its experts have no worker up");

  ASSERT_TRUE(d.StartWorker(1, port).ok()) << d.worker(1).Log();
  ASSERT_TRUE(d.WaitWorkerState(1, true, absl::Seconds(20)).ok());
  EXPECT_EQ(index("{}"), all);
  EXPECT_EQ(http.Get("/v2/models/" + name + "/ready")->status, 200);
}

TEST(OpenInferenceFlagsTest, ARequestTimeoutOutOfRangeIsAnErrorNamingTheFlag) {
  for (const std::string seconds : {"0", "3601"}) {
    const std::string out =
        RouterRefusing("--http_request_timeout_s=" + seconds);
    EXPECT_NE(out.find("(--http_request_timeout_s) must be 1 s to 1 h"),
              std::string::npos)
        << out;
  }
}

TEST(OpenInferenceFlagsTest, AThreadCountOutOfRangeIsAnErrorNamingTheFlag) {
  for (const std::string threads : {"0", "4097"}) {
    const std::string out = RouterRefusing("--http_threads=" + threads);
    EXPECT_NE(out.find("--http_threads) must be 1 to 4096, not " + threads),
              std::string::npos)
        << out;
  }
}

}  // namespace
}  // namespace moe
