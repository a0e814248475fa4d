// moe-expert's --device on a machine without a visible CUDA device (label
// "nogpu": ./moe test leaves these out where a GPU is visible): auto falls
// back to the CPU and says why; cuda and cuda:N stop the worker naming the
// problem; an unknown device names the flag.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "server/compute_flags.h"
#include "testing/deployment.h"
#include "testing/golden.h"

namespace moe {
namespace {

using ::testing::HasSubstr;

int RunWorker(const std::string& device, std::string* out,
              const std::string& binary = "moe-expert",
              const std::string& flag = "") {
  std::vector<std::string> args = {
      testing::BinaryPath(binary),
      "--checkpoint=" + testing::GoldenPath("A_moe_eval_nodrop"),
      "--device=" + device,
      "--host=127.0.0.1",
      "--port=0",
      "--metrics_port=-1"};
  if (!flag.empty()) args.push_back(flag);
  return testing::RunProcess(args, out);
}

TEST(DeviceTest, AutoServesOnTheCpuAndSaysWhy) {
  testing::Deployment d(testing::GoldenPath("A_moe_eval_nodrop"), {"0-3"});
  d.SetWorkerFlags({"--device=auto"});
  ASSERT_TRUE(d.StartWorker(0).ok()) << d.worker(0).Log();
  const std::string log = d.worker(0).Log();
  EXPECT_THAT(log, HasSubstr("using the CPU"));
  EXPECT_THAT(log, HasSubstr(server::CudaBuilt()
                                 ? "--device=auto: no CUDA device visible"
                                 : "built without the CUDA backend"));
  EXPECT_THAT(log, HasSubstr(" on cpu ("));
}

TEST(DeviceTest, TheGpuWorkerFallsBackToTheReferenceExpertsSayingSo) {
  testing::Deployment d(testing::GoldenPath("A_moe_eval_nodrop"), {"0-3"});
  d.SetWorkerBinary("moe-expert-gpu");
  d.SetWorkerFlags({"--device=auto"});
  ASSERT_TRUE(d.StartWorker(0).ok()) << d.worker(0).Log();
  const std::string log = d.worker(0).Log();
  EXPECT_THAT(log, HasSubstr("reference experts, which are exact but slow"));
  EXPECT_THAT(log, HasSubstr(" on host ("));
}

TEST(DeviceTest, CudaWithoutADeviceStopsTheWorkerSayingSo) {
  for (const std::string device : {"cuda", "cuda:1"}) {
    std::string out;
    EXPECT_NE(RunWorker(device, &out), 0) << device;
    EXPECT_THAT(out, HasSubstr("--device=" + device + ": "));
    EXPECT_THAT(
        out, HasSubstr(server::CudaBuilt() ? "no CUDA device visible"
                                           : "built without the CUDA backend"));
  }
}

TEST(DeviceTest, AnUnknownDeviceNamesTheFlag) {
  std::string out;
  EXPECT_NE(RunWorker("tpu", &out), 0);
  EXPECT_THAT(out,
              HasSubstr("--device: \"tpu\" is not auto, cpu, host, cuda or "
                        "cuda:N"));
  EXPECT_NE(RunWorker("cuda:-1", &out), 0);
  EXPECT_THAT(out, HasSubstr("\"cuda:-1\" is not"));
}

TEST(DeviceTest, GpuFlagsOutOfRangeStopTheWorkerNamingThem) {
  for (const std::string binary : {"moe-expert", "moe-expert-gpu"}) {
    std::string out;
    EXPECT_NE(RunWorker("auto", &out, binary, "--gpu_small_rows=9"), 0);
    EXPECT_THAT(out, HasSubstr("--gpu_small_rows must be in [0, 8], got 9"))
        << binary;
    EXPECT_NE(RunWorker("auto", &out, binary, "--gpu_streams=0"), 0);
    EXPECT_THAT(out, HasSubstr("--gpu_streams must be >= 1")) << binary;
  }
}

}  // namespace
}  // namespace moe
