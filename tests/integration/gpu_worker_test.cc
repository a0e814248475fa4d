// moe-expert-gpu, the LibTorch-free worker, tested here on the host's
// reference experts (--device=host; the CUDA path runs where a GPU is:
// tests/gpu/): nothing of LibTorch, OpenBLAS or oneDNN in what it loads,
// golden parity behind a real moe-router, and the same refusals as
// moe-expert.
#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "client/router_client.h"
#include "common/checkpoint.h"
#include "common/torch/torch_convert.h"
#include "moe/v1/expert.pb.h"
#include "proto/expert_wire.h"
#include "testing/deployment.h"
#include "testing/golden.h"
#include "testing/raw_call.h"
#include "testing/reference.h"

namespace moe {
namespace {

using testing::Deployment;
using ::testing::HasSubstr;
using ::testing::Not;

TEST(GpuWorkerTest, LinksNoLibTorchOpenBlasOrOneDnn) {
  std::string libraries;
  ASSERT_EQ(
      testing::RunProcess(
          {"/usr/bin/ldd", testing::BinaryPath("moe-expert-gpu")}, &libraries),
      0)
      << libraries;
  for (const char* heavy : {"libtorch", "libc10", "openblas", "dnnl", "gomp"}) {
    EXPECT_THAT(libraries, Not(HasSubstr(heavy))) << libraries;
  }
  // The LibTorch worker does load them: the check can fail.
  std::string torch;
  testing::RunProcess({"/usr/bin/ldd", testing::BinaryPath("moe-expert")},
                      &torch);
  EXPECT_THAT(torch, HasSubstr("libtorch"));
}

// Two moe-expert-gpu workers (the reference experts), each half of every
// layer's experts, behind a moe-router: the golden answer to 1e-5.
class GpuWorkerParityTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GpuWorkerParityTest, GoldenParityBehindARouter) {
  const std::string path = testing::GoldenPath(GetParam());
  auto ckpt = common::Checkpoint::Open(path);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  const int64_t total = (*ckpt)->spec().layers[0].config.total_experts();
  Deployment d(path, {absl::StrCat("0-", total / 2 - 1),
                      absl::StrCat(total / 2, "-", total - 1)});
  d.SetWorkerBinary("moe-expert-gpu");
  d.SetWorkerFlags({"--device=host"});
  ASSERT_TRUE(d.StartWorker(0).ok()) << d.worker(0).Log();
  ASSERT_TRUE(d.StartWorker(1).ok()) << d.worker(1).Log();
  EXPECT_THAT(d.worker(0).Log(), HasSubstr(" on host ("));
  ASSERT_TRUE(d.StartRouter().ok()) << d.router().Log();
  auto golden = testing::ReadAllTensors(path);
  moe::v1::RoutingOptions options;
  if (testing::GoldenMode(GetParam()) == "train") {
    options.set_mode(moe::v1::TRAIN);
  }
  if (golden.count("input.probs")) {
    *options.mutable_second_choice_uniforms() =
        testing::WireTensor(golden.at("input.probs"));
  }
  auto response =
      client::RouterClient::Create(d.router_address())
          ->Forward(testing::Request(golden.at("input.x"), options));
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_FALSE(response->degraded());
  EXPECT_LE(testing::MaxAbsDiff(testing::Y(*response), golden.at("output.y")),
            1e-5);
}

INSTANTIATE_TEST_SUITE_P(AllGoldenCases, GpuWorkerParityTest,
                         ::testing::ValuesIn(testing::GoldenCases()));

// The status of one RunExperts call of `bytes` to `address`.
grpc::Status RunExperts(const std::string& address, const std::string& bytes) {
  return testing::RawCall(address, "/moe.v1.ExpertWorker/RunExperts", bytes,
                          absl::Seconds(60));
}

// `rows` rows of dim 16 for `expert` of layer `layer`, serialized.
std::string Call(int64_t rows, int64_t expert, int64_t layer = 0,
                 int64_t dim = 16) {
  moe::v1::RunExpertsRequest r;
  r.mutable_tokens()->set_dtype(moe::v1::FLOAT32);
  r.mutable_tokens()->add_shape(rows);
  r.mutable_tokens()->add_shape(dim);
  r.mutable_tokens()->set_data(std::string(rows * dim * 4, '\0'));
  auto* s = r.add_segments();
  s->set_expert_id(expert);
  s->set_count(rows);
  s->set_layer(layer);
  return r.SerializeAsString();
}

TEST(GpuWorkerTest, RefusesWhatMoeExpertRefuses) {
  const std::string path = testing::GoldenPath("A_moe_eval_nodrop");
  Deployment d(path, {"0-1", "0-1"});
  d.SetWorkerFlags({"--max_tokens_per_call=64"});
  ASSERT_TRUE(d.StartWorker(0).ok());  // moe-expert
  d.SetWorkerBinary("moe-expert-gpu");
  d.SetWorkerFlags({"--max_tokens_per_call=64", "--device=host"});
  ASSERT_TRUE(d.StartWorker(1).ok()) << d.worker(1).Log();
  const std::string cases[] = {
      "\xff\xff\xff",     // not protobuf
      Call(4, 3),         // an expert it does not host
      Call(65, 0),        // rows over --max_tokens_per_call
      Call(4, 0, 2),      // a layer the model does not have
      Call(4, 0, 0, 15),  // another dim
  };
  for (const std::string& bytes : cases) {
    const grpc::Status torch =
        RunExperts(absl::StrCat("127.0.0.1:", d.worker_port(0)), bytes);
    const grpc::Status gpu =
        RunExperts(absl::StrCat("127.0.0.1:", d.worker_port(1)), bytes);
    EXPECT_FALSE(gpu.ok());
    EXPECT_EQ(gpu.error_code(), torch.error_code()) << gpu.error_message();
    EXPECT_EQ(gpu.error_message(), torch.error_message());
  }
  EXPECT_TRUE(
      RunExperts(absl::StrCat("127.0.0.1:", d.worker_port(1)), Call(4, 1))
          .ok());
}

TEST(GpuWorkerTest, DevicesItHasAndHasNot) {
  const std::string path = testing::GoldenPath("A_moe_eval_nodrop");
  auto run = [&](std::vector<std::string> flags, std::string* out) {
    std::vector<std::string> argv = {testing::BinaryPath("moe-expert-gpu"),
                                     "--checkpoint=" + path, "--port=0",
                                     "--host=127.0.0.1", "--metrics_port=-1"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    return testing::RunProcess(argv, out);
  };
  std::string out;
  EXPECT_NE(run({"--device=cpu"}, &out), 0);
  EXPECT_THAT(out, HasSubstr("--device=cpu: moe-expert-gpu has no LibTorch"));
  EXPECT_NE(run({"--device=host", "--compute_dtype=bfloat16"}, &out), 0);
  EXPECT_THAT(out, HasSubstr("bfloat16 needs a CUDA device"));
  EXPECT_NE(run({"--device=tpu"}, &out), 0);
  EXPECT_THAT(out, HasSubstr("--device: \"tpu\" is not auto, cpu, host"));
  // --device=auto without a GPU: DeviceTest (label nogpu).
}

}  // namespace
}  // namespace moe
