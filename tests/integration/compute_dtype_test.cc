// Workers with --compute_dtype=bfloat16 behind a real router: the routing is
// float32's, y stays within a relative RMS of 1e-2 of the float32 engine,
// and the router shows each worker's compute dtype. A dtype the worker does
// not know stops it at start, naming the flag.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdio>

#include "client/router_client.h"
#include "common/torch/demo_model.h"
#include "testing/deployment.h"
#include "testing/golden.h"
#include "testing/reference.h"

namespace moe {
namespace {

using ::testing::HasSubstr;

TEST(ComputeDTypeTest, BFloat16WorkersStayCloseToFloat32AndSaySo) {
  const common::LayerConfig config = common::DefaultDemoConfig();  // dim 512
  const std::string path = testing::TempDir() + "/bf16.safetensors";
  ASSERT_TRUE(common::WriteDemoCheckpoint(path, config, 1, 7).ok());
  testing::Deployment d(path, {"0-7", "8-15"});
  d.SetWorkerFlags({"--compute_dtype=bfloat16", "--compute_threads_bf16=1"});
  ASSERT_TRUE(d.StartWorker(0).ok());
  ASSERT_TRUE(d.StartWorker(1).ok());
  ASSERT_TRUE(d.StartRouter().ok()) << d.router().Log();

  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(3);
  const at::Tensor x = at::randn({2, 128, config.dim}, gen);
  moe::v1::RoutingOptions wire;
  wire.set_policy(moe::v1::ALL);
  router::RoutingOptions local;
  local.policy = router::SecondExpertPolicy::kAll;
  testing::Reference reference(path);
  const router::ForwardResult want = reference.Forward(x, local);

  client::ClientOptions once;
  once.max_attempts = 1;
  auto client = client::RouterClient::Create(d.router_address(), once);
  auto r = client->Forward(testing::Request(x, wire));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->degraded());
  const at::Tensor y = testing::Y(*r);
  const at::Tensor diff = (y - want.y).to(at::kDouble);
  const double rel_rms =
      diff.pow(2).mean().sqrt().item<double>() /
      want.y.to(at::kDouble).pow(2).mean().sqrt().item<double>();
  std::printf("bfloat16 workers: relative RMS of y %.2e, max |err| %.2e\n",
              rel_rms, diff.abs().max().item<double>());
  EXPECT_LT(rel_rms, 1e-2);
  EXPECT_GT(rel_rms, 0) << "the workers computed in float32";
  // The routing does not depend on the experts' dtype.
  ASSERT_EQ(r->stats().kept_per_expert_size(), config.num_experts);
  for (int e = 0; e < config.num_experts; ++e) {
    EXPECT_EQ(r->stats().kept_per_expert(e), want.plan.count(e)) << e;
  }

  auto info = client->GetModelInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  ASSERT_EQ(info->workers_size(), 2);
  for (const auto& w : info->workers()) {
    EXPECT_EQ(w.compute_dtype(), "bfloat16") << w.address();
  }
  std::string out;
  ASSERT_EQ(testing::RunProcess({testing::BinaryPath("moe-client"), "info",
                                 "--target=" + d.router_address()},
                                &out),
            0)
      << out;
  EXPECT_THAT(out, HasSubstr("(bfloat16 compute)"));
}

TEST(ComputeDTypeTest, AnUnknownComputeDTypeStopsTheWorkerNamingIt) {
  std::string out;
  EXPECT_NE(testing::RunProcess(
                {testing::BinaryPath("moe-expert"),
                 "--checkpoint=" + testing::GoldenPath("A_moe_eval_nodrop"),
                 "--compute_dtype=float8", "--host=127.0.0.1", "--port=0",
                 "--metrics_port=-1"},
                &out),
            0);
  EXPECT_THAT(out, HasSubstr("--compute_dtype: \"float8\" is not float32 or "
                             "bfloat16"));
}

}  // namespace
}  // namespace moe
