// The CUDA shard against the CPU shard (needs a visible CUDA device; label
// "gpu"): float32 to 1e-5 on every golden expert and the README shape, on
// the GEMMs and on the small-rows kernels, bfloat16 within a relative RMS of
// 1e-2, concurrent calls on every stream.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <thread>

#include "experts/cpu_expert_shard.h"
#include "experts/cuda/cuda_expert_shard.h"
#include "testing/golden.h"

namespace moe::experts {
namespace {

std::map<common::ExpertKey, common::ExpertWeights> GoldenExperts(
    const std::string& name) {
  std::map<common::ExpertKey, common::ExpertWeights> experts;
  const auto all = testing::ReadAllTensors(testing::GoldenPath(name));
  int64_t id = 0;
  for (const auto& [key, t] : all) {
    const std::string suffix = ".net.0.weight";
    if (key.find("experts") == std::string::npos ||
        key.size() < suffix.size() ||
        key.compare(key.size() - suffix.size(), suffix.size(), suffix) != 0) {
      continue;
    }
    const std::string p = key.substr(0, key.size() - suffix.size());
    experts[{0, id++}] = {
        all.at(p + ".net.0.weight"), all.at(p + ".net.0.bias"),
        all.at(p + ".net.1.mult_bias"), all.at(p + ".net.2.weight"),
        all.at(p + ".net.2.bias")};
  }
  return experts;
}

std::vector<float> Floats(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kFloat).contiguous();
  return std::vector<float>(c.data_ptr<float>(),
                            c.data_ptr<float>() + c.numel());
}

// The same experts as plain arrays, as the LibTorch-free loader gives them.
HostExpertMap ToHost(
    const std::map<common::ExpertKey, common::ExpertWeights>& experts) {
  HostExpertMap out;
  for (const auto& [key, w] : experts) {
    gpu::HostExpert& e = out[key];
    e.dim = w.w1.size(1);
    e.hidden = w.w1.size(0) / 2;
    e.w1 = Floats(w.w1);
    e.b1 = Floats(w.b1);
    e.mult_bias = Floats(w.mult_bias);
    e.w2 = Floats(w.w2);
    e.b2 = Floats(w.b2);
  }
  return out;
}

std::vector<common::ExpertSegment> Segments(int64_t rows, int64_t experts) {
  std::vector<common::ExpertSegment> s;
  for (int64_t e = 0; e < experts; ++e) {
    s.push_back({{0, e},
                 rows * e / experts,
                 rows * (e + 1) / experts - rows * e / experts});
  }
  return s;
}

at::Tensor RunShard(const ExpertShard& shard, const at::Tensor& x,
                    const std::vector<common::ExpertSegment>& segs,
                    RunStats* stats = nullptr) {
  at::Tensor y = at::zeros_like(x);
  const absl::Status st =
      shard.Run({common::DType::kFloat32, x.data_ptr<float>(), x.size(0)}, segs,
                y.data_ptr<float>(), stats);
  EXPECT_TRUE(st.ok()) << st;
  return y;
}

TEST(CudaExpertShardTest, MatchesTheCpuShardOnEveryGoldenCase) {
  for (const std::string& name : testing::GoldenCases()) {
    auto experts = GoldenExperts(name);
    ASSERT_FALSE(experts.empty()) << name;
    auto cpu = CpuExpertShard::Create(experts);
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    gpu::GpuOptions options;
    options.max_rows = 256;
    auto cuda = CudaExpertShard::Create(ToHost(experts), options);
    ASSERT_TRUE(cuda.ok()) << cuda.status();
    at::manual_seed(1);
    const at::Tensor x = at::randn({200, (*cpu)->dim()});
    const auto segs = Segments(200, static_cast<int64_t>(experts.size()));
    EXPECT_LE(testing::MaxAbsDiff(RunShard(**cuda, x, segs),
                                  RunShard(**cpu, x, segs)),
              1e-5)
        << name;
  }
}

// A decode-sized call (at most 8 rows per expert) runs on the small-rows
// kernels, and with them turned off on the GEMMs: the CPU shard's outputs
// either way, and RunStats says which path ran.
TEST(CudaExpertShardTest, DecodeSizedCallsTakeTheSmallRowsKernels) {
  for (const std::string& name : testing::GoldenCases()) {
    auto experts = GoldenExperts(name);
    auto cpu = CpuExpertShard::Create(experts);
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    const int64_t n = static_cast<int64_t>(experts.size());
    at::manual_seed(3);
    const at::Tensor x = at::randn({4 * n, (*cpu)->dim()});
    const auto segs = Segments(4 * n, n);
    const at::Tensor want = RunShard(**cpu, x, segs);
    for (int small_rows : {8, 0}) {
      gpu::GpuOptions options;
      options.max_rows = 256;
      options.small_rows = small_rows;
      auto cuda = CudaExpertShard::Create(ToHost(experts), options);
      ASSERT_TRUE(cuda.ok()) << cuda.status();
      RunStats stats;
      EXPECT_LE(testing::MaxAbsDiff(RunShard(**cuda, x, segs, &stats), want),
                1e-5)
          << name << ", small_rows " << small_rows;
      const bool small = small_rows > 0 && (*cpu)->dim() % 8 == 0;
      EXPECT_EQ(stats.small_rows_passes, small ? 1 : 0) << name;
      EXPECT_EQ(stats.gemm_passes, small ? 0 : 1) << name;
    }
  }
}

TEST(CudaExpertShardTest, BFloat16StaysWithinItsBoundAndCallsRunConcurrently) {
  std::map<common::ExpertKey, common::ExpertWeights> experts;
  at::manual_seed(2);
  for (int64_t e = 0; e < 4; ++e) {
    experts[{0, e}] = {at::randn({2730, 512}) * 0.044,
                       at::randn({2730}) * 0.044, 1 + 0.01 * at::randn({1365}),
                       at::randn({512, 1365}) * 0.027,
                       at::randn({512}) * 0.027};
  }
  auto cpu = CpuExpertShard::Create(experts);
  ASSERT_TRUE(cpu.ok());
  gpu::GpuOptions options;
  options.compute = common::DType::kBFloat16;
  options.max_rows = 1024;
  options.streams = 2;
  auto cuda = CudaExpertShard::Create(ToHost(experts), options);
  ASSERT_TRUE(cuda.ok()) << cuda.status();
  EXPECT_EQ((*cuda)->compute_dtype(), common::DType::kBFloat16);
  EXPECT_GT((*cuda)->device_memory_bytes(), (*cuda)->weight_bytes());
  const at::Tensor x = at::randn({1024, 512});
  const auto segs = Segments(1024, 4);
  const at::Tensor want = RunShard(**cpu, x, segs);
  std::vector<std::thread> threads;
  std::vector<double> err(4);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      const at::Tensor y = RunShard(**cuda, x, segs);
      err[t] = ((y - want).pow(2).mean().sqrt() / want.pow(2).mean().sqrt())
                   .item<double>();
    });
  }
  for (auto& th : threads) th.join();
  for (double e : err) EXPECT_LT(e, 1e-2);
}

}  // namespace
}  // namespace moe::experts
