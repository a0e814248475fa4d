// The GPU backend's plain C++ pieces that moe-gpu-check relies on where no
// LibTorch exists: the reference expert (held to the CPU experts) and the
// safetensors expert reader (held to the project's checkpoint reader).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <fstream>
#include <map>

#include "experts/cpu_expert_shard.h"
#include "experts/cuda/host_expert.h"
#include "experts/cuda/safetensors_experts.h"
#include "testing/golden.h"

namespace moe::experts::gpu {
namespace {

std::vector<float> Values(const at::Tensor& t) {
  const at::Tensor c = t.to(at::kFloat).contiguous();
  return std::vector<float>(c.data_ptr<float>(),
                            c.data_ptr<float>() + c.numel());
}

common::ExpertWeights ToTorch(const HostExpert& e) {
  auto t = [](const std::vector<float>& v, std::vector<int64_t> shape) {
    return at::tensor(v).view(shape).clone();
  };
  return {t(e.w1, {2 * e.hidden, e.dim}), t(e.b1, {2 * e.hidden}),
          t(e.mult_bias, {e.hidden}), t(e.w2, {e.dim, e.hidden}),
          t(e.b2, {e.dim})};
}

TEST(SafetensorsExpertsTest, ReadsEveryGoldenExpertAsTheCheckpointReaderDoes) {
  for (const std::string& name : testing::GoldenCases()) {
    const std::string path = testing::GoldenPath(name);
    std::vector<NamedExpert> experts;
    const Status st = ReadSafetensorsExperts(path, &experts);
    ASSERT_TRUE(st.ok()) << st.message();
    ASSERT_EQ(experts.size(), 4u) << name;
    const std::map<std::string, at::Tensor> all = testing::ReadAllTensors(path);
    for (const NamedExpert& e : experts) {
      EXPECT_EQ(e.expert.w1, Values(all.at(e.name + ".net.0.weight")))
          << e.name;
      EXPECT_EQ(e.expert.b1, Values(all.at(e.name + ".net.0.bias")));
      EXPECT_EQ(e.expert.mult_bias,
                Values(all.at(e.name + ".net.1.mult_bias")));
      EXPECT_EQ(e.expert.w2, Values(all.at(e.name + ".net.2.weight")));
      EXPECT_EQ(e.expert.b2, Values(all.at(e.name + ".net.2.bias")));
      EXPECT_TRUE(WellFormed(e.expert));
    }
  }
}

TEST(SafetensorsExpertsTest, RefusesBrokenFilesNamingTheProblem) {
  const std::string dir = testing::TempDir();
  const std::string golden = testing::GoldenPath(testing::GoldenCases()[0]);
  std::ifstream in(golden, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)),
                          std::istreambuf_iterator<char>());
  auto read = [&](const std::string& content) {
    const std::string path = dir + "/broken.safetensors";
    std::ofstream(path, std::ios::binary) << content;
    std::vector<NamedExpert> out;
    return ReadSafetensorsExperts(path, &out);
  };
  Status st = read(bytes.substr(0, bytes.size() - 100));
  EXPECT_EQ(st.code(), Code::kInvalidArgument);
  // The project's one header parser checks the file (safetensors_test has
  // its every rule).
  EXPECT_NE(st.message().find("run past the data section"), std::string::npos)
      << st.message();
  st = read(bytes.substr(0, 4));
  EXPECT_NE(st.message().find("too short"), std::string::npos);
  std::string header = bytes;
  header[8] = '[';  // "[...}": not JSON
  EXPECT_NE(read(header).message().find("header is not valid JSON"),
            std::string::npos)
      << read(header).message();
  std::string renamed = bytes;
  const size_t at = renamed.find("experts.experts.1.net.2.bias");
  ASSERT_NE(at, std::string::npos);
  renamed[at + 22] = 'X';  // net.X.bias: that expert lacks net.2.bias
  st = read(renamed);
  EXPECT_NE(st.message().find("missing tensor experts.experts.1.net.2.bias"),
            std::string::npos)
      << st.message();
  EXPECT_EQ(ReadSafetensorsExperts(dir + "/none", nullptr).code(),
            Code::kInvalidArgument);
}

TEST(ReferenceExpertTest, MatchesTheCpuExpertsOnEveryGoldenExpert) {
  at::manual_seed(3);
  for (const std::string& name : testing::GoldenCases()) {
    std::vector<NamedExpert> experts;
    ASSERT_TRUE(
        ReadSafetensorsExperts(testing::GoldenPath(name), &experts).ok());
    for (const NamedExpert& e : experts) {
      std::map<common::ExpertKey, common::ExpertWeights> one;
      one[{0, 0}] = ToTorch(e.expert);
      auto shard = CpuExpertShard::Create(std::move(one));
      ASSERT_TRUE(shard.ok()) << shard.status();
      const int64_t rows = 9;
      const at::Tensor x = at::randn({rows, e.expert.dim});
      std::vector<float> want(rows * e.expert.dim), got(want.size());
      const common::ExpertSegment seg{{0, 0}, 0, rows};
      ASSERT_TRUE(
          (*shard)
              ->Run({common::DType::kFloat32, x.data_ptr<float>(), rows},
                    {&seg, 1}, want.data())
              .ok());
      ReferenceForward(e.expert, x.data_ptr<float>(), rows, got.data());
      for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_NEAR(got[i], want[i], 1e-5) << name << " " << e.name << " " << i;
      }
    }
  }
}

}  // namespace
}  // namespace moe::experts::gpu
