// RouterService in one process: the real service behind an in-process gRPC
// channel (no socket), its model from a golden file, its workers fakes that
// compute testing::ExpertScale (tests/testing/fake_worker.h), its metrics a
// recorder of this file. The integration tests run the same with processes.
#include "router/service/router_service.h"

#include <ATen/ATen.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/token_set.h"
#include "common/tracing.h"
#include "router/api/forward_runner.h"
#include "router/service/inference_service.h"
#include "testing/fake_clock.h"
#include "testing/fake_worker.h"
#include "testing/golden.h"
#include "testing/reference.h"

namespace moe::router {
namespace {

const char kModel[] = "A_moe_eval_nodrop";  // dim 16, 4 experts, x [2, 12, 16]

// Counts what the service records.
class RecordingMetrics final : public RouterMetrics {
 public:
  void RecordForward(int, const ForwardResult&) override { Add("forward"); }
  void RecordRequest(Protocol protocol, absl::StatusCode code,
                     absl::Duration) override {
    Add(absl::StrCat("request ", absl::StatusCodeToString(code)));
    Add(absl::StrCat("request ", ProtocolLabel(protocol), " ",
                     absl::StatusCodeToString(code)));
  }
  void RecordRejected(RejectReason reason) override {
    Add(absl::StrCat("rejected ", RejectReasonLabel(reason)));
  }
  void AddInflight(int delta) override {
    absl::MutexLock lock(&mu_);
    inflight_ += delta;
  }
  void RecordWorkerRpc(int, absl::Duration, int, int64_t) override {
    Add("worker rpc");
  }
  void RecordStages(const ForwardTimings&) override { Add("stages"); }
  void RecordStage(RouterStage stage, absl::Duration) override {
    Add(absl::StrCat("stage ", RouterStageLabel(stage)));
  }
  void RecordForwardCpu(absl::Duration) override { Add("cpu"); }
  void RecordInlineForward() override { Add("inline"); }
  void SetWorkerState(int, WorkerState) override {}

  int count(const std::string& what) const {
    absl::MutexLock lock(&mu_);
    auto it = counts_.find(what);
    return it == counts_.end() ? 0 : it->second;
  }
  int inflight() const {
    absl::MutexLock lock(&mu_);
    return inflight_;
  }

 private:
  void Add(const std::string& what) {
    absl::MutexLock lock(&mu_);
    ++counts_[what];
  }
  mutable absl::Mutex mu_;
  std::map<std::string, int> counts_ ABSL_GUARDED_BY(mu_);
  int inflight_ ABSL_GUARDED_BY(mu_) = 0;
};

// The service over two fake workers (experts 0-1 and 2-3), in process.
class RouterServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto model = ModelEngine::Load(testing::GoldenPath(kModel));
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
    runner_ = std::make_unique<ForwardRunner>(model_.get(), ForwardLimits{64});
  }

  // Starts the service; `covered` workers of the two answer their probe.
  void Start(RouterServiceOptions options = {}, int covered = 2) {
    std::vector<std::unique_ptr<WorkerTransport>> transports;
    const std::vector<std::vector<int64_t>> hosted[2] = {{{0, 1}}, {{2, 3}}};
    for (int w = 0; w < 2; ++w) {
      auto worker = std::make_unique<testing::FakeWorker>(
          absl::StrCat("worker", w), 16,
          testing::MakeShardInfo(model_->spec(), model_->fingerprint(),
                                 hosted[w]));
      worker->SetAutoReply(true);
      if (w >= covered) {
        worker->SetProbeError(absl::UnavailableError("connection refused"));
      }
      workers_.push_back(worker.get());
      transports.push_back(std::move(worker));
    }
    pool_ = std::make_unique<WorkerPool>(std::move(transports), model_->spec(),
                                         model_->fingerprint(),
                                         WorkerPoolOptions());
    pool_->ProbeAll();
    auto service =
        RouterService::Create(runner_.get(), pool_.get(), options, &metrics_);
    ASSERT_TRUE(service.ok()) << service.status();
    service_ = std::move(*service);
    inference_ = std::make_unique<InferenceService>(service_.get());
    grpc::ServerBuilder builder;
    builder.RegisterService(service_.get());
    builder.RegisterService(inference_.get());
    server_ = builder.BuildAndStart();
    stub_ = moe::v1::Router::NewStub(
        server_->InProcessChannel(grpc::ChannelArguments()));
    oip_ = inference::GRPCInferenceService::NewStub(
        server_->InProcessChannel(grpc::ChannelArguments()));
  }

  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown();
    if (service_ != nullptr) service_->Drain();
  }

  grpc::Status Forward(const moe::v1::ForwardRequest& request,
                       moe::v1::ForwardResponse* response,
                       const std::string& token = "") {
    grpc::ClientContext context;
    if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
    return stub_->Forward(&context, request, response);
  }

  moe::v1::ForwardRequest GoldenRequest() {
    moe::v1::RoutingOptions options;
    options.set_policy(moe::v1::ALL);
    return testing::Request(
        testing::ReadAllTensors(testing::GoldenPath(kModel)).at("input.x"),
        options);
  }

  std::unique_ptr<ModelEngine> model_;
  std::unique_ptr<ForwardRunner> runner_;
  std::vector<testing::FakeWorker*> workers_;
  std::unique_ptr<WorkerPool> pool_;
  RecordingMetrics metrics_;
  std::unique_ptr<RouterService> service_;
  std::unique_ptr<InferenceService> inference_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<moe::v1::Router::Stub> stub_;
  std::unique_ptr<inference::GRPCInferenceService::Stub> oip_;
};

// The same request through the same runner, the same experts local.
moe::v1::ForwardResponse InProcess(const ForwardRunner& runner,
                                   const moe::v1::ForwardRequest& request) {
  testing::ScalingShard shard(16);
  LocalExpertBackend local(&shard);
  auto admitted = runner.Admit(request);
  EXPECT_TRUE(admitted.ok()) << admitted.status();
  moe::v1::ForwardResponse in_process;
  EXPECT_TRUE(runner.Run(*admitted, local, &in_process).ok());
  return in_process;
}

// With inline_max_tokens, a small forward to an idle router runs on the
// gRPC thread that received it.
TEST_F(RouterServiceTest, AnswersAsTheRunnerDoesInProcess) {
  RouterServiceOptions options;
  options.inline_max_tokens = 256;
  Start(options);
  const moe::v1::ForwardRequest request = GoldenRequest();
  moe::v1::ForwardResponse remote;
  ASSERT_TRUE(Forward(request, &remote).ok());
  const moe::v1::ForwardResponse in_process = InProcess(*runner_, request);
  EXPECT_EQ(remote.y().data(), in_process.y().data());  // bit for bit
  EXPECT_EQ(metrics_.count("inline"), 1);
  EXPECT_EQ(remote.stats().kept_per_expert_size(), 4);
  EXPECT_FALSE(remote.degraded());
  EXPECT_EQ(workers_[0]->calls(), 1);  // one call per worker per forward
  EXPECT_EQ(workers_[1]->calls(), 1);
  EXPECT_EQ(metrics_.count("request OK"), 1);
  EXPECT_EQ(metrics_.count("forward"), 1);
  EXPECT_EQ(metrics_.count("stage encode"), 2);
  EXPECT_EQ(metrics_.inflight(), 0);
}

// Through a forward thread (a forward above inline_max_tokens, or with
// inlining off) the answer is the same bits as inline.
TEST_F(RouterServiceTest, AQueuedForwardGivesTheSameBitsAsAnInlineOne) {
  RouterServiceOptions options;
  options.inline_max_tokens = 23;  // the golden request has 2 x 12 tokens
  Start(options);
  const moe::v1::ForwardRequest request = GoldenRequest();
  moe::v1::ForwardResponse remote;
  ASSERT_TRUE(Forward(request, &remote).ok());
  EXPECT_EQ(metrics_.count("inline"), 0);
  EXPECT_EQ(remote.y().data(), InProcess(*runner_, request).y().data());
  EXPECT_EQ(metrics_.count("request OK"), 1);
  EXPECT_EQ(metrics_.inflight(), 0);
}

// A traced forward's span has its phases as child spans, one after the
// other from its arrival, within it; its worker calls' spans beside them.
TEST_F(RouterServiceTest, ATracedForwardShowsItsPhasesAsChildSpans) {
  absl::Mutex mu;
  std::vector<common::Span> spans;
  common::Tracer tracer(0, [&](common::Span s) {
    absl::MutexLock lock(&mu);
    spans.push_back(std::move(s));
  });
  RouterServiceOptions options;
  options.tracer = &tracer;
  Start(options);
  const std::string trace = "4bf92f3577b34da6a3ce929d0e0e4736";
  grpc::ClientContext context;
  context.AddMetadata("traceparent", "00-" + trace + "-00f067aa0ba902b7-01");
  moe::v1::ForwardResponse response;
  ASSERT_TRUE(stub_->Forward(&context, GoldenRequest(), &response).ok());
  absl::MutexLock lock(&mu);
  const common::Span* forward = nullptr;
  std::vector<const common::Span*> phases;
  int calls = 0;
  for (const common::Span& s : spans) {
    EXPECT_EQ(s.trace_id, trace);
    if (s.kind == common::SpanKind::kServer) forward = &s;
    if (s.kind == common::SpanKind::kInternal) phases.push_back(&s);
    calls += s.kind == common::SpanKind::kClient;
  }
  ASSERT_NE(forward, nullptr);
  EXPECT_EQ(calls, 2);  // one per worker
  const std::vector<std::string> names = {"moe.queue",   "moe.pre",
                                          "moe.gate",    "moe.plan",
                                          "moe.experts", "moe.post"};
  ASSERT_EQ(phases.size(), names.size());
  absl::Time at = forward->start;
  for (size_t i = 0; i < phases.size(); ++i) {
    const common::Span& p = *phases[i];
    EXPECT_EQ(p.name, names[i]);
    EXPECT_EQ(p.parent_span_id, forward->span_id) << p.name;
    EXPECT_NE(p.span_id, forward->span_id);
    EXPECT_EQ(p.start, at) << p.name;  // each where the last ended
    EXPECT_GE(p.end, p.start) << p.name;
    at = p.end;
  }
  EXPECT_LE(at, forward->end);
  const common::Span& experts = *phases[4];
  ASSERT_EQ(experts.attributes.size(), 2u);
  EXPECT_EQ(experts.attributes[0].first, "moe.batch_wait_us");
  EXPECT_EQ(experts.attributes[1].first, "moe.rpc_wait_us");
}

TEST_F(RouterServiceTest, EveryRefusalIsCountedByItsReason) {
  Start();
  moe::v1::ForwardResponse response;
  moe::v1::ForwardRequest request = GoldenRequest();
  // Over the limit of 64 tokens per request: [2, 12] is 24, [8, 12] is 96.
  moe::v1::ForwardRequest big =
      testing::Request(at::randn({8, 12, 16}), moe::v1::RoutingOptions());
  grpc::Status s = Forward(big, &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(metrics_.count("rejected too_many_tokens"), 1);
  request.set_layer("blocks.0.ff");
  s = Forward(request, &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
  request = testing::Request(at::randn({2, 12, 15}), moe::v1::RoutingOptions());
  s = Forward(request, &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("x: last dimension is 15"),
            std::string::npos)
      << s.error_message();
  // Refused at admission: nothing reached a worker.
  EXPECT_EQ(workers_[0]->calls() + workers_[1]->calls(), 0);
  EXPECT_EQ(metrics_.count("request RESOURCE_EXHAUSTED"), 1);
  EXPECT_EQ(metrics_.count("request NOT_FOUND"), 1);
  EXPECT_EQ(metrics_.count("request INVALID_ARGUMENT"), 1);
  EXPECT_EQ(metrics_.inflight(), 0);
}

TEST_F(RouterServiceTest, NotReadyUntilEveryExpertHasAWorker) {
  Start({}, /*covered=*/1);
  moe::v1::ForwardResponse response;
  const grpc::Status s = Forward(GoldenRequest(), &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_NE(s.error_message().find("no worker yet for experts [2-3]"),
            std::string::npos)
      << s.error_message();
  EXPECT_EQ(metrics_.count("rejected not_ready"), 1);
  // AwaitReady gives up when asked to.
  int asked = 0;
  const absl::Status waited =
      service_->AwaitReady(absl::Seconds(1), [&asked] { return ++asked > 3; });
  EXPECT_TRUE(absl::IsCancelled(waited)) << waited;
  EXPECT_EQ(asked, 4);
  // Ready once the worker comes back.
  workers_[1]->SetShardInfo(
      testing::MakeShardInfo(model_->spec(), model_->fingerprint(), {{2, 3}}));
  pool_->ProbeAll();
  EXPECT_TRUE(service_->AwaitReady(absl::Seconds(1), [] { return true; }).ok());
  EXPECT_TRUE(Forward(GoldenRequest(), &response).ok());
}

TEST_F(RouterServiceTest, AwaitReadyTimesOutNamingTheMissingExperts) {
  RouterServiceOptions options;
  testing::FakeClock clock;
  options.clock = &clock;
  Start(options, /*covered=*/1);
  const absl::Status waited = service_->AwaitReady(absl::Seconds(1), [&] {
    clock.Advance(absl::Milliseconds(300));
    return false;
  });
  EXPECT_EQ(waited.code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(waited.message().find("experts [2-3]"), std::string::npos)
      << waited;
}

TEST_F(RouterServiceTest, TokensAreRequiredWhenConfigured) {
  const std::string file = testing::TempDir() + "/tokens";
  std::ofstream(file) << "s3cret\n";
  auto tokens = common::TokenSet::FromFile(file);
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  RouterServiceOptions options;
  options.tokens = tokens->get();
  Start(options);
  moe::v1::ForwardResponse response;
  EXPECT_EQ(Forward(GoldenRequest(), &response).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Forward(GoldenRequest(), &response, "wrong").error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(Forward(GoldenRequest(), &response, "s3cret").ok());
  EXPECT_EQ(metrics_.count("rejected unauthenticated"), 2);
  // Without a token, the model but not the workers' addresses.
  grpc::ClientContext context;
  moe::v1::ModelInfo info;
  ASSERT_TRUE(
      stub_->GetModelInfo(&context, moe::v1::GetModelInfoRequest(), &info)
          .ok());
  EXPECT_TRUE(info.workers_hidden());
  EXPECT_EQ(info.workers_size(), 0);
  EXPECT_EQ(info.dim(), 16);
}

TEST_F(RouterServiceTest, MalformedBytesAreInvalidArgument) {
  Start();
  grpc::GenericStub generic(
      server_->InProcessChannel(grpc::ChannelArguments()));
  grpc::ClientContext context;
  const std::string junk = "\xff\xff\xff\xff";
  grpc::Slice slice(junk);
  grpc::ByteBuffer request(&slice, 1), response;
  grpc::Status status;
  absl::Notification done;
  generic.UnaryCall(&context, "/moe.v1.Router/Forward", grpc::StubOptions(),
                    &request, &response, [&](grpc::Status s) {
                      status = std::move(s);
                      done.Notify();
                    });
  done.WaitForNotification();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(status.error_message().find("malformed protobuf"),
            std::string::npos);
}

// The Open Inference Protocol's ModelInfer on the same service: the golden
// request as raw and as typed contents gives Forward's y bit for bit.
class OpenInferenceTest : public RouterServiceTest {
 protected:
  inference::ModelInferRequest Infer(bool raw) {
    const moe::v1::ForwardRequest forward = GoldenRequest();
    inference::ModelInferRequest r;
    r.set_model_name(model_->spec().name);
    r.set_id("request-7");
    (*r.mutable_parameters())["policy"].set_string_param("all");
    auto* x = r.add_inputs();
    x->set_name("x");
    x->set_datatype("FP32");
    *x->mutable_shape() = forward.x().shape();
    if (raw) {
      r.add_raw_input_contents(forward.x().data());
    } else {
      const std::string& bytes = forward.x().data();
      const float* v = reinterpret_cast<const float*>(bytes.data());
      x->mutable_contents()->mutable_fp32_contents()->Add(
          v, v + bytes.size() / sizeof(float));
    }
    return r;
  }
  grpc::Status Call(const inference::ModelInferRequest& request,
                    inference::ModelInferResponse* response,
                    const std::string& token = "") {
    grpc::ClientContext context;
    if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
    return oip_->ModelInfer(&context, request, response);
  }
};

TEST_F(OpenInferenceTest, ModelInferGivesForwardsBitsRawAndTyped) {
  Start();
  moe::v1::ForwardResponse forward;
  ASSERT_TRUE(Forward(GoldenRequest(), &forward).ok());
  for (bool raw : {true, false}) {
    SCOPED_TRACE(raw ? "raw" : "typed");
    inference::ModelInferResponse r;
    const grpc::Status s = Call(Infer(raw), &r);
    ASSERT_TRUE(s.ok()) << s.error_message();
    EXPECT_EQ(r.model_name(), model_->spec().name);
    EXPECT_EQ(r.model_version(), model_->fingerprint());
    EXPECT_EQ(r.id(), "request-7");
    ASSERT_EQ(r.outputs_size(), r.raw_output_contents_size());
    ASSERT_GE(r.outputs_size(), 6);
    EXPECT_EQ(r.outputs(0).name(), "y");
    EXPECT_EQ(r.outputs(0).datatype(), "FP32");
    EXPECT_EQ(r.raw_output_contents(0), forward.y().data());  // bit for bit
    EXPECT_FALSE(r.parameters().at("degraded").bool_param());
  }
  EXPECT_EQ(metrics_.count("request OK"), 3);
  EXPECT_EQ(metrics_.count("request oip_grpc OK"), 2);
  EXPECT_EQ(metrics_.count("request moe.v1 OK"), 1);
  // Only the outputs asked for, in the order asked.
  inference::ModelInferRequest some = Infer(true);
  some.add_outputs()->set_name("kept_per_expert");
  some.add_outputs()->set_name("y");
  inference::ModelInferResponse r;
  ASSERT_TRUE(Call(some, &r).ok());
  ASSERT_EQ(r.outputs_size(), 2);
  EXPECT_EQ(r.outputs(0).name(), "kept_per_expert");
  EXPECT_EQ(r.outputs(0).datatype(), "INT64");
  EXPECT_EQ(r.outputs(0).shape(0), 4);
  EXPECT_EQ(r.raw_output_contents(1), forward.y().data());
}

TEST_F(OpenInferenceTest, BadRequestsAreRefusedNamingTheProblem) {
  Start();
  struct Case {
    std::string what;
    std::function<void(inference::ModelInferRequest&)> change;
    grpc::StatusCode code;
    std::string says;
  };
  const Case cases[] = {
      {"unknown model", [](auto& r) { r.set_model_name("nope"); },
       grpc::StatusCode::NOT_FOUND, "unknown model \"nope\""},
      {"other version", [](auto& r) { r.set_model_version("7"); },
       grpc::StatusCode::NOT_FOUND, "has no version \"7\""},
      {"wrong datatype",
       [](auto& r) { r.mutable_inputs(0)->set_datatype("INT32"); },
       grpc::StatusCode::INVALID_ARGUMENT,
       "input \"x\": datatype \"INT32\" is not one of FP32, BF16, FP16"},
      {"short data",
       [](auto& r) { r.mutable_raw_input_contents(0)->pop_back(); },
       grpc::StatusCode::INVALID_ARGUMENT, "raw_input_contents has"},
      {"wrong dim",
       [](auto& r) {
         r.mutable_inputs(0)->set_shape(2, 8);
         r.mutable_inputs(0)->set_shape(1, 24);
       },
       grpc::StatusCode::INVALID_ARGUMENT, "16"},
      {"unknown input", [](auto& r) { r.mutable_inputs(0)->set_name("h"); },
       grpc::StatusCode::INVALID_ARGUMENT, "input \"h\" is not an input"},
      {"bad parameter",
       [](auto& r) { (*r.mutable_parameters())["mode"].set_bool_param(true); },
       grpc::StatusCode::INVALID_ARGUMENT, "parameter \"mode\" must be"},
      {"unknown parameter",
       [](auto& r) { (*r.mutable_parameters())["color"].set_int64_param(1); },
       grpc::StatusCode::INVALID_ARGUMENT, "unknown parameter \"color\""},
      {"unknown output", [](auto& r) { r.add_outputs()->set_name("z"); },
       grpc::StatusCode::INVALID_ARGUMENT, "output \"z\" is not an output"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    inference::ModelInferRequest request = Infer(true);
    c.change(request);
    inference::ModelInferResponse r;
    const grpc::Status s = Call(request, &r);
    EXPECT_EQ(s.error_code(), c.code) << s.error_message();
    EXPECT_NE(s.error_message().find(c.says), std::string::npos)
        << s.error_message();
  }
  EXPECT_EQ(metrics_.inflight(), 0);
  // Still serving.
  inference::ModelInferResponse r;
  EXPECT_TRUE(Call(Infer(true), &r).ok());
}

TEST_F(OpenInferenceTest, HealthAndMetadataFollowReadinessAndTokens) {
  const std::string file = testing::TempDir() + "/oip-tokens";
  std::ofstream(file) << "s3cret\n";
  auto tokens = common::TokenSet::FromFile(file);
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  RouterServiceOptions options;
  options.tokens = tokens->get();
  Start(options, /*covered=*/1);
  auto ready = [&](const std::string& name) {
    grpc::ClientContext context;
    inference::ModelReadyRequest request;
    request.set_name(name);
    inference::ModelReadyResponse response;
    const grpc::Status s = oip_->ModelReady(&context, request, &response);
    return s.ok() ? std::string(response.ready() ? "ready" : "not ready")
                  : s.error_message();
  };
  // No token needed for health; not ready until worker 1 answers.
  EXPECT_EQ(ready(model_->spec().name), "not ready");
  EXPECT_NE(ready("nope").find("unknown model"), std::string::npos);
  {
    grpc::ClientContext context;
    inference::ServerLiveResponse live;
    ASSERT_TRUE(
        oip_->ServerLive(&context, inference::ServerLiveRequest(), &live).ok());
    EXPECT_TRUE(live.live());
  }
  workers_[1]->SetProbeError(absl::OkStatus());
  pool_->ProbeAll();
  EXPECT_EQ(ready(model_->spec().name), "ready");
  // Metadata and inference need the token.
  inference::ModelMetadataRequest request;
  request.set_name(model_->spec().name);
  inference::ModelMetadataResponse metadata;
  {
    grpc::ClientContext context;
    EXPECT_EQ(oip_->ModelMetadata(&context, request, &metadata).error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
  }
  inference::ModelInferResponse r;
  EXPECT_EQ(Call(Infer(true), &r).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  grpc::ClientContext context;
  context.AddMetadata("authorization", "Bearer s3cret");
  ASSERT_TRUE(oip_->ModelMetadata(&context, request, &metadata).ok());
  EXPECT_EQ(metadata.platform(), "moe-serve");
  EXPECT_EQ(metadata.versions(0), model_->fingerprint());
  EXPECT_EQ(metadata.inputs(0).name(), "x");
  EXPECT_EQ(metadata.inputs(0).shape(2), 16);
  EXPECT_EQ(metadata.outputs(0).name(), "y");
  EXPECT_TRUE(Call(Infer(true), &r, "s3cret").ok());
}

TEST(RouterServiceOptionsTest, ValidateNamesTheFlag) {
  RouterServiceOptions o;
  EXPECT_TRUE(o.Validate().ok());
  o.threads = 0;
  EXPECT_NE(o.Validate().message().find("--threads"), std::string::npos);
  o = RouterServiceOptions();
  o.inline_max_tokens = -1;
  EXPECT_NE(o.Validate().message().find("--inline_max_tokens"),
            std::string::npos);
  o = RouterServiceOptions();
  o.batch_window = absl::Seconds(61);
  EXPECT_NE(o.Validate().message().find("--batch_window_us"),
            std::string::npos);
  o = RouterServiceOptions();
  o.wire_dtype = common::DType::kInt64;
  EXPECT_NE(o.Validate().message().find("--wire_dtype"), std::string::npos);
  o = RouterServiceOptions();
  o.max_queue_time = absl::ZeroDuration();
  EXPECT_NE(o.Validate().message().find("--max_queue_ms"), std::string::npos);
}

}  // namespace
}  // namespace moe::router
