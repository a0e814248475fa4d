// ForwardRunner in one process: a golden model's layer, its experts on the
// CPU in this process (the path moe-run takes), and a backend that counts
// what reaches it. Admit() is the one place a request is checked; Run()
// answers what the golden file says.
#include "router/api/forward_runner.h"

#include <gtest/gtest.h>

#include <map>
#include <memory>

#include "common/checkpoint.h"
#include "common/torch/checkpoint_weights.h"
#include "experts/cpu_expert_shard.h"
#include "testing/golden.h"
#include "testing/reference.h"

namespace moe::router {
namespace {

const char kModel[] = "A_moe_eval_nodrop";  // dim 16, 4 experts, x [2, 12, 16]

// A local backend that counts its runs.
class CountingBackend final : public ExpertBackend {
 public:
  explicit CountingBackend(const experts::ExpertShard* shard) : local_(shard) {}
  absl::Status Run(const ExpertWork& work, BackendReport* report) override {
    ++runs;
    return local_.Run(work, report);
  }
  int runs = 0;

 private:
  LocalExpertBackend local_;
};

class ForwardRunnerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto ckpt = common::Checkpoint::Open(testing::GoldenPath(kModel));
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    auto model = ModelEngine::Load(**ckpt);
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
    auto experts = common::LoadAllExperts(**ckpt);
    ASSERT_TRUE(experts.ok()) << experts.status();
    std::map<common::ExpertKey, common::ExpertWeights> all;
    for (auto& [id, w] : (*experts)[0]) all[{0, id}] = std::move(w);
    auto shard = experts::CpuExpertShard::Create(std::move(all));
    ASSERT_TRUE(shard.ok()) << shard.status();
    shard_ = std::move(*shard);
    backend_ = std::make_unique<CountingBackend>(shard_.get());
    runner_ = std::make_unique<ForwardRunner>(model_.get(), ForwardLimits{64});
  }

  moe::v1::ForwardRequest Golden() const {
    moe::v1::RoutingOptions options;
    options.set_policy(moe::v1::ALL);
    return testing::Request(golden_.at("input.x"), options);
  }

  std::map<std::string, at::Tensor> golden_ =
      testing::ReadAllTensors(testing::GoldenPath(kModel));
  std::unique_ptr<ModelEngine> model_;
  std::unique_ptr<experts::ExpertShard> shard_;
  std::unique_ptr<CountingBackend> backend_;
  std::unique_ptr<ForwardRunner> runner_;
};

TEST_F(ForwardRunnerTest, AnswersTheGoldenForward) {
  const moe::v1::ForwardRequest request = Golden();
  auto admitted = runner_->Admit(request);
  ASSERT_TRUE(admitted.ok()) << admitted.status();
  EXPECT_EQ(admitted->tokens(), 24);
  EXPECT_EQ(admitted->layer, &model_->layer(0));
  moe::v1::ForwardResponse response;
  ForwardResult result;
  ASSERT_TRUE(runner_->Run(*admitted, *backend_, &response, &result).ok());
  EXPECT_EQ(backend_->runs, 1);
  EXPECT_LE(testing::MaxAbsDiff(testing::Y(response), golden_.at("output.y")),
            1e-5);
  EXPECT_EQ(response.y().dtype(), moe::v1::FLOAT32);  // x's dtype
  // The losses as the engine computed them (in eval too, as a monitoring
  // signal; the golden file's reference returns 0 there).
  EXPECT_EQ(response.losses().balance_loss(), result.losses.balance_loss);
  EXPECT_GT(response.losses().balance_loss(), 0);
  EXPECT_EQ(response.losses().total_aux_loss(), result.losses.total_aux_loss);
  EXPECT_EQ(result.y.size(1), 12);
}

TEST_F(ForwardRunnerTest, AdmitChecksEveryFieldOnceWithoutRunning) {
  struct Case {
    const char* what;
    std::function<void(moe::v1::ForwardRequest&)> edit;
    absl::StatusCode code;
    const char* message;
  };
  const Case cases[] = {
      {"unknown layer", [](auto& r) { r.set_layer("x.ff"); },
       absl::StatusCode::kNotFound, "layer \"x.ff\" not found"},
      {"no x", [](auto& r) { r.clear_x(); }, absl::StatusCode::kInvalidArgument,
       "x: missing"},
      {"int64", [](auto& r) { r.mutable_x()->set_dtype(moe::v1::INT64); },
       absl::StatusCode::kInvalidArgument, "x: dtype INT64 is not supported"},
      {"too many tokens", [](auto& r) { r.mutable_x()->set_shape(0, 6); },
       absl::StatusCode::kResourceExhausted, "6 x 12 tokens exceed"},
      {"short data", [](auto& r) { r.mutable_x()->mutable_data()->resize(10); },
       absl::StatusCode::kInvalidArgument, "x: data is 10 bytes"},
      {"rank",
       [](auto& r) {
         r.mutable_x()->clear_shape();
         r.mutable_x()->add_shape(24);
         r.mutable_x()->add_shape(16);
       },
       absl::StatusCode::kInvalidArgument, "x: must have rank 3"},
      {"dim",
       [](auto& r) {
         r.mutable_x()->set_shape(1, 24);
         r.mutable_x()->set_shape(2, 8);
       },
       absl::StatusCode::kInvalidArgument, "x: last dimension is 8"},
  };
  for (const Case& c : cases) {
    moe::v1::ForwardRequest request = Golden();
    c.edit(request);
    auto admitted = runner_->Admit(request);
    EXPECT_EQ(admitted.status().code(), c.code) << c.what;
    EXPECT_NE(admitted.status().message().find(c.message), std::string::npos)
        << c.what << ": " << admitted.status();
  }
  EXPECT_EQ(backend_->runs, 0);
}

TEST_F(ForwardRunnerTest, ValuesAndOptionsAreCheckedBeforeTheExpertsRun) {
  at::Tensor x = golden_.at("input.x").clone();
  x[1][3][5] = std::nanf("");
  moe::v1::ForwardRequest request = testing::Request(x, {});
  auto admitted = runner_->Admit(request);
  ASSERT_TRUE(admitted.ok());  // values are read when the forward runs
  moe::v1::ForwardResponse response;
  absl::Status s = runner_->Run(*admitted, *backend_, &response);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("x: contains NaN or Inf"), std::string::npos);
  request = Golden();
  request.mutable_options()->set_capacity_factor(-1);
  admitted = runner_->Admit(request);
  ASSERT_TRUE(admitted.ok());
  s = runner_->Run(*admitted, *backend_, &response);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_EQ(backend_->runs, 0);
}

}  // namespace
}  // namespace moe::router
