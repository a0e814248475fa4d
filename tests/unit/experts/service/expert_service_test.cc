// ExpertService in one process: the real service behind an in-process gRPC
// channel, its shard a fake that computes testing::ExpertScale, its metrics
// a real registry. The requests are the router's own bytes
// (proto::RunExpertsRequestWriter).
#include "experts/service/expert_service.h"

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/tracing.h"
#include "moe/v1/expert.grpc.pb.h"
#include "proto/expert_wire.h"
#include "testing/fake_worker.h"

namespace moe::experts {
namespace {

constexpr int64_t kDim = 4;

common::ModelSpec Spec() { return testing::TwoLayerSpec(kDim); }

// A shard whose Run blocks until released (to fill the queue).
class BlockingShard final : public testing::ScalingShard {
 public:
  using ScalingShard::ScalingShard;
  absl::Notification entered, release;

 protected:
  absl::Status RunChecked(const TokenRows& tokens,
                          absl::Span<const common::ExpertSegment> segments,
                          float* out, RunStats* stats) const override {
    auto& e = const_cast<absl::Notification&>(entered);
    if (!e.HasBeenNotified()) e.Notify();  // one compute thread: no race
    const_cast<absl::Notification&>(release).WaitForNotification();
    return ScalingShard::RunChecked(tokens, segments, out, stats);
  }
};

// A shard that takes at most 2 rows per Run() and counts its runs.
class TwoRowShard final : public testing::ScalingShard {
 public:
  using ScalingShard::ScalingShard;
  int64_t max_rows_per_run() const override { return 2; }
  mutable std::atomic<int> runs{0};

 protected:
  absl::Status RunChecked(const TokenRows& tokens,
                          absl::Span<const common::ExpertSegment> segments,
                          float* out, RunStats* stats) const override {
    ++runs;
    if (tokens.rows > 2) return absl::InternalError("more than 2 rows");
    return ScalingShard::RunChecked(tokens, segments, out, stats);
  }
};

// Rows 1, 2, ... of `segments` (layer, expert, count) as one call.
struct Call {
  Call(std::vector<common::ExpertSegment> segments,
       common::DType wire = common::DType::kFloat32,
       common::DType out = common::DType::kFloat32)
      : segments(std::move(segments)) {
    int64_t rows = 0;
    for (const auto& s : this->segments) rows += s.count;
    tokens = std::make_shared<std::vector<float>>(rows * kDim);
    for (size_t i = 0; i < tokens->size(); ++i) (*tokens)[i] = 1.0f + i;
    proto::RunExpertsRequestWriter writer(wire, kDim);
    writer.AddFloatRows(tokens->data(), rows, tokens);
    for (const auto& s : this->segments) writer.AddSegment(s.key, s.count);
    bytes = writer.Finish(out);
  }
  std::vector<common::ExpertSegment> segments;
  std::shared_ptr<std::vector<float>> tokens;
  grpc::ByteBuffer bytes;
};

class ExpertServiceTest : public ::testing::Test {
 protected:
  void Start(const ExpertShard* shard, ExpertServiceOptions options = {}) {
    metrics_ =
        std::make_unique<ExpertMetrics>(registry_, Spec(), shard->experts());
    auto service = ExpertService::Create(shard, {Spec(), "sha256:fake"},
                                         options, metrics_.get());
    ASSERT_TRUE(service.ok()) << service.status();
    service_ = std::move(*service);
    grpc::ServerBuilder builder;
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    channel_ = server_->InProcessChannel(grpc::ChannelArguments());
    generic_ = std::make_unique<grpc::GenericStub>(channel_);
  }
  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown();
    if (service_ != nullptr) service_->Drain();
  }

  // Starts RunExperts; `done` notifies with the status and response.
  struct Pending {
    grpc::ClientContext context;
    grpc::ByteBuffer request, response;
    grpc::Status status;
    absl::Notification done;
  };
  std::unique_ptr<Pending> Start(
      grpc::ByteBuffer request,
      const std::vector<std::pair<std::string, std::string>>& metadata = {}) {
    auto p = std::make_unique<Pending>();
    p->request = std::move(request);
    for (const auto& [key, value] : metadata) {
      p->context.AddMetadata(key, value);
    }
    Pending* raw = p.get();
    generic_->UnaryCall(&raw->context, "/moe.v1.ExpertWorker/RunExperts",
                        grpc::StubOptions(), &raw->request, &raw->response,
                        [raw](grpc::Status s) {
                          raw->status = std::move(s);
                          raw->done.Notify();
                        });
    return p;
  }
  grpc::Status Run(
      const Call& call, grpc::ByteBuffer* response,
      const std::vector<std::pair<std::string, std::string>>& metadata = {}) {
    auto p = Start(call.bytes, metadata);
    p->done.WaitForNotification();
    *response = std::move(p->response);
    return p->status;
  }

  double Counter(const std::string& name, const std::string& expert) {
    double sum = 0;
    for (const auto& family : registry_.Collect()) {
      if (family.name != name) continue;
      for (const auto& m : family.metric) {
        for (const auto& l : m.label) {
          if (l.name == "expert" && l.value == expert) sum += m.counter.value;
        }
      }
    }
    return sum;
  }

  prometheus::Registry registry_;
  std::unique_ptr<ExpertMetrics> metrics_;
  std::unique_ptr<ExpertService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<grpc::GenericStub> generic_;
};

// The answer of `call` (`rows` rows, in `out`): every row its token times
// its expert's scale (testing::ScalingShard), exact in float32, within
// bfloat16's rounding otherwise.
void ExpectScaledRows(const Call& call, const grpc::ByteBuffer& bytes,
                      int64_t rows, common::DType out) {
  auto view = proto::RunExpertsResponseView::Parse(bytes, rows, kDim);
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_EQ(view->dtype(), out);
  std::vector<float> scratch;
  for (const auto& s : call.segments) {
    const float* got = view->FloatRows(s.offset, s.count, &scratch);
    for (int64_t i = 0; i < s.count * kDim; ++i) {
      const float want =
          (*call.tokens)[s.offset * kDim + i] * testing::ExpertScale(s.key);
      EXPECT_NEAR(got[i], want,
                  out == common::DType::kFloat32 ? 0 : std::abs(want) / 128)
          << "row " << s.offset + i / kDim;
    }
  }
}

TEST_F(ExpertServiceTest, RunsEachSegmentThroughItsExpertInEveryDtype) {
  testing::ScalingShard shard(kDim, common::ExpertSet({{1, 2}, {0}}));
  Start(&shard);
  for (common::DType out :
       {common::DType::kFloat32, common::DType::kBFloat16}) {
    const Call call({{{0, 1}, 0, 2}, {{0, 2}, 2, 1}, {{1, 0}, 3, 3}},
                    common::DType::kFloat32, out);
    grpc::ByteBuffer bytes;
    ASSERT_TRUE(Run(call, &bytes).ok());
    ExpectScaledRows(call, bytes, 6, out);
  }
  EXPECT_EQ(Counter("moe_expert_tokens_total", "1"), 4);  // 2 rows, twice
}

// A call bigger than the shard takes at once runs in parts (segments cut
// at part boundaries): the same answer in every dtype, and the per-expert
// counts whole.
TEST_F(ExpertServiceTest, ACallRunsInPartsOfWhatTheShardTakes) {
  TwoRowShard shard(kDim, common::ExpertSet({{1, 2}, {0}}));
  Start(&shard);
  for (common::DType out :
       {common::DType::kFloat32, common::DType::kBFloat16}) {
    // 7 rows: parts [0,2) [2,4) [4,6) [6,7); two segments straddle parts.
    const Call call({{{0, 1}, 0, 3}, {{0, 2}, 3, 1}, {{1, 0}, 4, 3}},
                    common::DType::kFloat32, out);
    shard.runs = 0;
    grpc::ByteBuffer bytes;
    ASSERT_TRUE(Run(call, &bytes).ok());
    EXPECT_EQ(shard.runs.load(), 4);
    ExpectScaledRows(call, bytes, 7, out);
  }
  EXPECT_EQ(Counter("moe_expert_tokens_total", "1"), 6);  // 3 rows, twice
  // A segment naming an expert not hosted is named by its index in the
  // call, not in a part.
  const Call bad({{{0, 1}, 0, 3}, {{0, 5}, 3, 1}});
  grpc::ByteBuffer bytes;
  grpc::Status status = Run(bad, &bytes);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(status.error_message().find("segments[1]: expert 5 of layer 0"),
            std::string::npos)
      << status.error_message();
}

TEST_F(ExpertServiceTest, ShardInfoListsTheHostedExperts) {
  testing::ScalingShard shard(kDim, common::ExpertSet({{1, 2}, {0}}));
  Start(&shard);
  const moe::v1::ShardInfo info = service_->shard_info();
  EXPECT_EQ(info.fingerprint(), "sha256:fake");
  EXPECT_EQ(info.dim(), kDim);
  ASSERT_EQ(info.layers_size(), 2);
  EXPECT_EQ(info.layers(0).expert_ids_size(), 2);
  EXPECT_EQ(info.layers(1).expert_ids(0), 0);
  EXPECT_EQ(info.device(), "cpu");
  EXPECT_EQ(info.compute_dtype(), "float32");
}

TEST_F(ExpertServiceTest, BadCallsAreNamedAndTheWorkerGoesOn) {
  testing::ScalingShard shard(kDim, common::ExpertSet({{0, 1}}));
  ExpertServiceOptions options;
  options.max_tokens_per_call = 8;
  Start(&shard, options);
  grpc::ByteBuffer response;
  grpc::Status s = Run(Call({{{0, 3}, 0, 2}}), &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find("expert 3 of layer 0 is not hosted"),
            std::string::npos)
      << s.error_message();
  s = Run(Call({{{0, 1}, 0, 9}}), &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  s = Run(Call({{{5, 1}, 0, 2}}), &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("layer 5 is outside"), std::string::npos);
  EXPECT_TRUE(Run(Call({{{0, 1}, 0, 8}}), &response).ok());
}

// The attribute `key` of `span`; "<absent>" when it has none.
common::SpanAttribute AttributeOf(const common::Span& span,
                                  const std::string& key) {
  for (const auto& [k, v] : span.attributes) {
    if (k == key) return v;
  }
  return std::string("<absent>");
}

// A call whose traceparent is sampled gets a span, a child of the router's
// span of the call, linking the other forwards' spans (moe-trace-link
// values that parse), with the call's stages (as attributes and as child
// spans); an unsampled call or one without a context gets none; a failed
// call's span says why.
TEST_F(ExpertServiceTest, TracedCallsGetSpansWithTheirStages) {
  testing::ScalingShard shard(kDim, common::ExpertSet({{1, 2}, {0}}));
  absl::Mutex mu;
  std::vector<common::Span> spans;
  common::Tracer tracer(/*root_ratio=*/0, [&](common::Span s) {
    absl::MutexLock lock(&mu);
    spans.push_back(std::move(s));
  });
  ExpertServiceOptions options;
  options.tracer = &tracer;
  Start(&shard, options);
  const std::string trace = "0af7651916cd43dd8448eb211c80319c";
  const std::string call_span = "b7ad6b7169203331";
  const std::string linked = "4bf92f3577b34da6a3ce929d0e0e4736";
  const std::string sampled = "00-" + trace + "-" + call_span + "-01";
  const Call call({{{0, 1}, 0, 2}, {{0, 2}, 2, 1}, {{1, 0}, 3, 3}});
  grpc::ByteBuffer response;
  ASSERT_TRUE(Run(call, &response,
                  {{"traceparent", sampled},
                   {"moe-trace-link", "00-" + linked + "-00f067aa0ba902b7-01"},
                   {"moe-trace-link", "not a traceparent"},
                   {"x-request-id", "fwd-a"},
                   {"x-request-id", "fwd-b"}})
                  .ok());
  ASSERT_TRUE(Run(call, &response,
                  {{"traceparent", "00-" + trace + "-" + call_span + "-00"}})
                  .ok());
  ASSERT_TRUE(Run(call, &response).ok());
  EXPECT_EQ(Run(Call({{{5, 1}, 0, 2}}), &response, {{"traceparent", sampled}})
                .error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  absl::MutexLock lock(&mu);
  std::vector<const common::Span*> calls, phases;
  for (const common::Span& s : spans) {
    (s.kind == common::SpanKind::kInternal ? phases : calls).push_back(&s);
  }
  ASSERT_EQ(calls.size(), 2u);
  const common::Span& ok = *calls[0];
  EXPECT_EQ(ok.name, "moe.v1.ExpertWorker/RunExperts");
  EXPECT_EQ(ok.kind, common::SpanKind::kServer);
  EXPECT_EQ(ok.trace_id, trace);
  EXPECT_EQ(ok.parent_span_id, call_span);
  ASSERT_EQ(ok.links.size(), 1u);
  EXPECT_EQ(ok.links[0].trace_id, linked);
  EXPECT_EQ(ok.links[0].span_id, "00f067aa0ba902b7");
  EXPECT_FALSE(ok.error);
  EXPECT_GE(ok.end, ok.start);
  EXPECT_EQ(std::get<int64_t>(AttributeOf(ok, "rpc.grpc.status_code")), 0);
  EXPECT_EQ(std::get<std::string>(AttributeOf(ok, "moe.request_ids")),
            "fwd-a,fwd-b");
  EXPECT_EQ(std::get<int64_t>(AttributeOf(ok, "moe.rows")), 6);
  EXPECT_EQ(std::get<int64_t>(AttributeOf(ok, "moe.segments")), 3);
  for (const char* stage :
       {"moe.queued_us", "moe.parse_us", "moe.copy_in_us", "moe.compute_us",
        "moe.copy_out_us", "moe.serialize_us"}) {
    EXPECT_GE(std::get<int64_t>(AttributeOf(ok, stage)), 0) << stage;
  }
  // The stages again as children of the call that went through, one after
  // the other from its arrival.
  const std::vector<std::string> names = {"moe.queue", "moe.parse", "moe.run",
                                          "moe.serialize"};
  ASSERT_EQ(phases.size(), names.size());
  absl::Time at = ok.start;
  for (size_t i = 0; i < phases.size(); ++i) {
    const common::Span& p = *phases[i];
    EXPECT_EQ(p.name, names[i]);
    EXPECT_EQ(p.trace_id, trace);
    EXPECT_EQ(p.parent_span_id, ok.span_id) << p.name;
    EXPECT_EQ(p.start, at) << p.name;
    EXPECT_GE(p.end, p.start) << p.name;
    at = p.end;
  }
  EXPECT_LE(at, ok.end);
  EXPECT_GE(std::get<int64_t>(AttributeOf(*phases[2], "moe.compute_us")), 0);
  // The marks come from the steady clock the stages are measured on: a
  // span is as long as its stage (on the host the run is all compute).
  auto micros = [](const common::Span* p) {
    return static_cast<double>(absl::ToInt64Microseconds(p->end - p->start));
  };
  EXPECT_NEAR(micros(phases[2]),
              std::get<int64_t>(AttributeOf(ok, "moe.compute_us")), 1);
  EXPECT_NEAR(micros(phases[3]),
              std::get<int64_t>(AttributeOf(ok, "moe.serialize_us")), 1);
  const common::Span& failed = *calls[1];
  EXPECT_EQ(failed.parent_span_id, call_span);
  EXPECT_TRUE(failed.error);
  EXPECT_NE(failed.status_message.find("INVALID_ARGUMENT"), std::string::npos)
      << failed.status_message;
  EXPECT_EQ(std::get<std::string>(AttributeOf(failed, "moe.rows")), "<absent>");
}

TEST_F(ExpertServiceTest, AFullQueueIsResourceExhausted) {
  BlockingShard shard(kDim);
  ExpertServiceOptions options;
  options.compute_threads = 1;
  options.max_queued = 1;
  Start(&shard, options);
  const Call call({{{0, 1}, 0, 1}});
  auto running = Start(call.bytes);
  shard.entered.WaitForNotification();  // the one thread is busy
  // Two more: one waits in the queue, the other finds it full. Handlers of
  // calls in flight may run in any order, so either may be the refused one.
  auto first = Start(call.bytes);
  auto second = Start(call.bytes);
  const absl::Time until = absl::Now() + absl::Seconds(10);
  while (!first->done.HasBeenNotified() && !second->done.HasBeenNotified() &&
         absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  const bool first_refused = first->done.HasBeenNotified();
  const bool one_answered = first_refused || second->done.HasBeenNotified();
  Pending& refused = first_refused ? *first : *second;
  Pending& queued = first_refused ? *second : *first;
  shard.release.Notify();  // before any check: a failed one must not hang
  EXPECT_TRUE(one_answered) << "neither call was refused while the queue was "
                               "full";
  running->done.WaitForNotification();
  first->done.WaitForNotification();
  second->done.WaitForNotification();
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(refused.status.error_message().find("overloaded"),
            std::string::npos);
  EXPECT_TRUE(running->status.ok());
  EXPECT_TRUE(queued.status.ok());
}

// A shard that records the name of the thread that ran it last.
class ThreadNamingShard final : public testing::ScalingShard {
 public:
  using ScalingShard::ScalingShard;
  std::string last_thread() const {
    absl::MutexLock lock(&mu_);
    return last_thread_;
  }

 protected:
  absl::Status RunChecked(const TokenRows& tokens,
                          absl::Span<const common::ExpertSegment> segments,
                          float* out, RunStats* stats) const override {
    char name[16] = {};
    pthread_getname_np(pthread_self(), name, sizeof(name));
    {
      absl::MutexLock lock(&mu_);
      last_thread_ = name;
    }
    return ScalingShard::RunChecked(tokens, segments, out, stats);
  }

 private:
  mutable absl::Mutex mu_;
  mutable std::string last_thread_ ABSL_GUARDED_BY(mu_);
};

// With --inline_max_request_kib, a call no larger runs on the gRPC thread
// that received it (not a compute thread, "moe-expert"), gives the same
// answer and is counted; a larger one is handed to a compute thread.
TEST_F(ExpertServiceTest, SmallCallsRunOnTheReceivingThread) {
  ThreadNamingShard shard(kDim, common::ExpertSet({{1, 2}, {0}}));
  const Call small({{{0, 1}, 0, 2}});
  const Call large({{{0, 2}, 0, 40}, {{1, 0}, 40, 9}});
  ASSERT_LT(small.bytes.Length(), large.bytes.Length());
  ExpertServiceOptions options;
  options.inline_max_request_bytes = static_cast<int64_t>(small.bytes.Length());
  Start(&shard, options);
  grpc::ByteBuffer bytes;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(Run(small, &bytes).ok());
    ExpectScaledRows(small, bytes, 2, common::DType::kFloat32);
    EXPECT_NE(shard.last_thread(), "moe-expert");
  }
  ASSERT_TRUE(Run(large, &bytes).ok());
  ExpectScaledRows(large, bytes, 49, common::DType::kFloat32);
  EXPECT_EQ(shard.last_thread(), "moe-expert");
  double inline_calls = -1;
  for (const auto& family : registry_.Collect()) {
    if (family.name == "moe_expert_inline_calls_total") {
      inline_calls = family.metric.at(0).counter.value;
    }
  }
  EXPECT_EQ(inline_calls, 3);
}

// A loader of ScalingShards that records what it was asked to load.
struct RecordingLoader {
  std::vector<common::ExpertSet> loaded;
  ExpertLoader loader() {
    return [this](const common::ExpertSet& experts)
               -> absl::StatusOr<std::unique_ptr<ExpertShard>> {
      loaded.push_back(experts);
      return std::make_unique<testing::ScalingShard>(kDim, experts);
    };
  }
};

common::ExpertSet Set(std::vector<std::vector<int64_t>> ids) {
  return common::ExpertSet(std::move(ids));
}

TEST(ExpertPlacementTest, LoadsOnlyWhatAChangeAddsAndKeepsWholeParts) {
  RecordingLoader rec;
  auto placement =
      ExpertPlacement::Create(Spec(), nullptr, rec.loader(), /*limit=*/0);
  ASSERT_TRUE(placement.ok()) << placement.status();
  ExpertPlacement& p = **placement;
  EXPECT_TRUE(p.Current().shard->experts().empty());
  ASSERT_TRUE(p.Set(Set({{0, 1}, {2}}), 1).ok());
  ASSERT_TRUE(p.Set(Set({{0, 1}, {2}, {}}), 1).ok());  // again: unchanged
  ASSERT_EQ(rec.loaded.size(), 1u);
  // A call that started before the next change keeps its experts.
  const ExpertPlacement::Snapshot before = p.Current();
  // {0, 1} of layer 0 and {2} of layer 1 were one part: dropping expert 1
  // reloads the part's remaining experts with the one added.
  auto change = p.Set(Set({{0, 3}, {2}}), 2);
  ASSERT_TRUE(change.ok()) << change.status();
  EXPECT_EQ(change->added, Set({{3}, {}}));
  EXPECT_EQ(change->removed, Set({{1}, {}}));
  ASSERT_EQ(rec.loaded.size(), 2u);
  EXPECT_EQ(rec.loaded[1], Set({{0, 3}, {2}}));
  // Adding only: the part stays, the new expert is a part of its own.
  ASSERT_TRUE(p.Set(Set({{0, 2, 3}, {2}}), 3).ok());
  ASSERT_EQ(rec.loaded.size(), 3u);
  EXPECT_EQ(rec.loaded[2], Set({{2}, {}}));
  EXPECT_TRUE(before.shard->Hosts({0, 1}));
  EXPECT_FALSE(p.Current().shard->Hosts({0, 1}));
  EXPECT_EQ(p.Current().generation, 3);
  // Stale writers are refused.
  EXPECT_EQ(p.Set(Set({{0}}), 2).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(p.Set(Set({{0}}), 3).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST(ExpertPlacementTest, APlanPastTheMemoryLimitIsRefusedWhole) {
  RecordingLoader rec;
  // An expert of dim 4, hidden 10 is 154 float32 parameters: 616 bytes.
  auto placement = ExpertPlacement::Create(Spec(), nullptr, rec.loader(),
                                           /*limit=*/1000);
  ASSERT_TRUE(placement.ok());
  absl::Status s = (*placement)->Set(Set({{0, 1}}), 1).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("1232 bytes"), std::string::npos) << s;
  EXPECT_TRUE(rec.loaded.empty());
  EXPECT_TRUE((*placement)->Set(Set({{0}}), 1).ok());
  // A fixed placement cannot change.
  testing::ScalingShard shard(kDim, Set({{0}}));
  EXPECT_EQ(ExpertPlacement::Fixed(Spec(), &shard)
                ->Set(Set({{1}}), 1)
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);
}

// SetExperts over gRPC: only the admin token's holder, checked requests,
// the calls after it on the new experts, the load reported.
TEST_F(ExpertServiceTest, SetExpertsNeedsTheAdminTokenAndMovesTheExperts) {
  const std::string token_file =
      ::testing::TempDir() + "/admin_tokens_" + std::to_string(getpid());
  {
    std::FILE* f = std::fopen(token_file.c_str(), "w");
    std::fputs("the-admin\n", f);
    std::fclose(f);
  }
  auto tokens = common::TokenSet::FromFile(token_file);
  ASSERT_TRUE(tokens.ok());
  RecordingLoader rec;
  auto placement = ExpertPlacement::Create(
      Spec(), std::make_unique<testing::ScalingShard>(kDim, Set({{0, 1}})),
      rec.loader(), 0);
  ASSERT_TRUE(placement.ok());
  ExpertServiceOptions options;
  options.admin_tokens = tokens->get();
  metrics_ = std::make_unique<ExpertMetrics>(registry_, Spec(), Set({{0, 1}}));
  auto service = ExpertService::Create(placement->get(), {Spec(), "f"}, options,
                                       metrics_.get());
  ASSERT_TRUE(service.ok());
  service_ = std::move(*service);
  grpc::ServerBuilder builder;
  builder.RegisterService(service_.get());
  server_ = builder.BuildAndStart();
  channel_ = server_->InProcessChannel(grpc::ChannelArguments());
  generic_ = std::make_unique<grpc::GenericStub>(channel_);
  auto stub = moe::v1::ExpertWorker::NewStub(channel_);
  auto set = [&](const std::string& token, std::vector<int64_t> layer0,
                 int64_t generation, int32_t layer = 0) {
    grpc::ClientContext context;
    if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
    moe::v1::SetExpertsRequest request;
    moe::v1::LayerExperts* l = request.add_layers();
    l->set_layer(layer);
    for (int64_t e : layer0) l->add_expert_ids(e);
    request.set_generation(generation);
    moe::v1::ShardInfo info;
    return stub->SetExperts(&context, request, &info);
  };
  EXPECT_EQ(set("", {2}, 1).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(set("guess", {2}, 1).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  grpc::Status s = set("the-admin", {9}, 1);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("9 is not one"), std::string::npos);
  EXPECT_EQ(set("the-admin", {1}, 1, /*layer=*/7).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(service_->shard_info().generation(), 0);
  // The load so far is reported when asked.
  grpc::ByteBuffer bytes;
  ASSERT_TRUE(Run(Call({{{0, 1}, 0, 3}}), &bytes).ok());
  moe::v1::ShardInfo info = service_->shard_info(/*include_load=*/true);
  ASSERT_EQ(info.layers(0).load_size(), 1);
  EXPECT_EQ(info.layers(0).load(0).expert_id(), 1);
  EXPECT_EQ(info.layers(0).load(0).tokens(), 3);
  EXPECT_EQ(service_->shard_info().layers(0).load_size(), 0);
  // Expert 1 moves away, expert 2 comes.
  ASSERT_TRUE(set("the-admin", {0, 2}, 1).ok());
  info = service_->shard_info();
  EXPECT_EQ(info.generation(), 1);
  EXPECT_EQ(std::vector<int64_t>(info.layers(0).expert_ids().begin(),
                                 info.layers(0).expert_ids().end()),
            (std::vector<int64_t>{0, 2}));
  EXPECT_TRUE(info.placement_writable());
  s = Run(Call({{{0, 1}, 0, 2}}), &bytes);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find("placement generation 1"), std::string::npos)
      << s.error_message();
  const Call call({{{0, 2}, 0, 2}});
  ASSERT_TRUE(Run(call, &bytes).ok());
  ExpectScaledRows(call, bytes, 2, common::DType::kFloat32);
  EXPECT_EQ(Counter("moe_expert_tokens_total", "2"), 2);
  // A stale generation is refused; nothing changes.
  EXPECT_EQ(set("the-admin", {3}, 0).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(service_->shard_info().generation(), 1);
  std::remove(token_file.c_str());
}

TEST_F(ExpertServiceTest, WithoutAnAdminTokenTheExpertsAreFixed) {
  testing::ScalingShard shard(kDim, Set({{0}}));
  Start(&shard);
  auto stub = moe::v1::ExpertWorker::NewStub(channel_);
  grpc::ClientContext context;
  context.AddMetadata("authorization", "Bearer anything");
  moe::v1::SetExpertsRequest request;
  request.set_generation(1);
  moe::v1::ShardInfo info;
  grpc::Status s = stub->SetExperts(&context, request, &info);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_NE(s.error_message().find("--admin_token_file"), std::string::npos);
  EXPECT_FALSE(service_->shard_info().placement_writable());
}

TEST(ExpertServiceCreateTest, RefusesOptionsAndShardsThatCannotWork) {
  prometheus::Registry registry;
  testing::ScalingShard shard(kDim, common::ExpertSet({{0}}));
  ExpertMetrics metrics(registry, Spec(), shard.experts());
  ExpertServiceOptions options;
  options.compute_threads = 0;
  auto s = ExpertService::Create(&shard, {Spec(), "f"}, options, &metrics);
  EXPECT_NE(s.status().message().find("--compute_threads"), std::string::npos);
  testing::ScalingShard wide(kDim + 1, common::ExpertSet({{0}}));
  s = ExpertService::Create(&wide, {Spec(), "f"}, {}, &metrics);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.status().message().find("dim 5"), std::string::npos);
  testing::ScalingShard deep(kDim, common::ExpertSet({{0}, {0}, {0}}));
  s = ExpertService::Create(&deep, {Spec(), "f"}, {}, &metrics);
  EXPECT_NE(s.status().message().find("layer 2"), std::string::npos);
}

}  // namespace
}  // namespace moe::experts
