#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "experts/cpu_expert_shard.h"
#include "experts/feed_forward.h"
#include "experts/geglu.h"
#include "experts/rms_norm.h"
#include "experts/skinny_linear.h"
#include "testing/golden.h"

namespace moe::experts {
namespace {

common::ExpertWeights RandomExpert(int64_t d, int64_t h, uint64_t seed) {
  at::manual_seed(seed);
  common::ExpertWeights w;
  w.w1 = at::randn({2 * h, d});
  w.b1 = at::randn({2 * h});
  w.mult_bias = at::randn({h});
  w.w2 = at::randn({d, h});
  w.b2 = at::randn({d});
  return w;
}

// The formula of docs/numerics.md §9.1, element by element in double.
double ReferenceGeglu(const common::ExpertWeights& w, const at::Tensor& x,
                      int64_t token, int64_t out) {
  const int64_t d = x.size(1), h = w.mult_bias.size(0);
  auto W1 = w.w1.accessor<float, 2>();
  auto W2 = w.w2.accessor<float, 2>();
  auto X = x.accessor<float, 2>();
  double acc = w.b2[out].item<double>();
  for (int64_t j = 0; j < h; ++j) {
    double a = w.b1[j].item<double>(), g = w.b1[h + j].item<double>();
    for (int64_t k = 0; k < d; ++k) {
      a += double{W1[j][k]} * X[token][k];
      g += double{W1[h + j][k]} * X[token][k];
    }
    const double gelu = 0.5 * g * (1 + std::erf(g / std::sqrt(2.0)));
    acc += double{W2[out][j]} * gelu * a * w.mult_bias[j].item<double>();
  }
  return acc;
}

TEST(GegluTest, MatchesTheFormula) {
  const common::ExpertWeights w = RandomExpert(6, 5, 1);
  at::Tensor x = at::randn({3, 6});
  at::Tensor y = GegluForward(w, x);
  ASSERT_EQ(y.sizes(), (at::IntArrayRef{3, 6}));
  for (int64_t t = 0; t < 3; ++t) {
    for (int64_t o = 0; o < 6; ++o) {
      EXPECT_NEAR(y[t][o].item<double>(), ReferenceGeglu(w, x, t, o), 1e-4)
          << t << "," << o;
    }
  }
}

// The skinny path (few rows, experts/skinny_linear.h) and the GEMM path
// agree to float32 rounding on the README expert (d 512, h 1365) at every
// row count the automatic choice sends to the skinny kernel and past it,
// and both match the formula on a small expert.
TEST(GegluTest, SkinnyAndGemmPathsAgree) {
  const common::ExpertWeights small = RandomExpert(20, 7, 2);
  const common::ExpertWeights big = RandomExpert(512, 1365, 3);
  for (int64_t rows : {1, 2, 3, 5, 8, 17, 31, 32, 130}) {
    at::Tensor xs = at::randn({rows, 20});
    at::Tensor hidden;
    at::Tensor ys = at::empty({rows, 20});
    GegluForwardInto(small, xs, hidden, ys, GegluPath::kSkinny);
    for (int64_t t = 0; t < rows; ++t) {
      for (int64_t o = 0; o < 20; ++o) {
        ASSERT_NEAR(ys[t][o].item<double>(), ReferenceGeglu(small, xs, t, o),
                    1e-4)
            << rows << " rows, at " << t << "," << o;
      }
    }
    at::Tensor x = at::randn({rows, 512});
    at::Tensor gemm = at::empty({rows, 512}), skinny = at::empty({rows, 512}),
               automatic = at::empty({rows, 512});
    GegluForwardInto(big, x, hidden, gemm, GegluPath::kGemm);
    GegluForwardInto(big, x, hidden, skinny, GegluPath::kSkinny);
    GegluForwardInto(big, x, hidden, automatic);
    const double scale = gemm.abs().max().item<double>();
    EXPECT_LE((skinny - gemm).abs().max().item<double>(), 1e-5 * scale)
        << rows << " rows";
    const bool by_kernel = rows <= kSkinnyMaxRows || BlasThreads() == 1;
    EXPECT_TRUE(at::equal(automatic, by_kernel ? skinny : gemm))
        << rows << " rows";
  }
}

TEST(RmsNormTest, MatchesTheFormula) {
  at::Tensor x = at::tensor({3.0f, 4.0f, 0.0f, 0.0f}).view({1, 4});
  at::Tensor gamma = at::tensor({1.0f, 2.0f, 1.0f, 1.0f});
  at::Tensor y = RmsNorm(x, gamma);
  // x / ||x|| * gamma * sqrt(4) = [0.6, 0.8*2, 0, 0] * 2
  EXPECT_NEAR(y[0][0].item<float>(), 1.2f, 1e-6);
  EXPECT_NEAR(y[0][1].item<float>(), 3.2f, 1e-6);
  // The zero vector stays zero (norm clamped at 1e-12).
  at::Tensor zero = RmsNorm(at::zeros({1, 4}), gamma);
  EXPECT_EQ(zero.abs().sum().item<float>(), 0.0f);
}

TEST(FeedForwardTest, IsNormThenGeglu) {
  common::FeedForwardWeights w;
  w.gamma = at::rand({6}) + 0.5;
  w.geglu = RandomExpert(6, 8, 2);
  at::Tensor x = at::randn({2, 3, 6});
  at::Tensor y = FeedForward(w, x);
  ASSERT_EQ(y.sizes(), x.sizes());
  at::Tensor expected =
      GegluForward(w.geglu, RmsNorm(x, w.gamma).reshape({6, 6}))
          .view({2, 3, 6});
  EXPECT_TRUE(at::allclose(y, expected));
}

TEST(ExpertShardTest, RunsEachSegmentThroughItsExpert) {
  std::map<common::ExpertKey, common::ExpertWeights> experts;
  experts[{0, 2}] = RandomExpert(4, 3, 3);
  experts[{1, 5}] = RandomExpert(4, 5, 4);  // another layer, another hidden
  const common::ExpertWeights e2 = experts[{0, 2}], e5 = experts[{1, 5}];
  auto shard = CpuExpertShard::Create(experts);
  ASSERT_TRUE(shard.ok()) << shard.status();
  EXPECT_EQ((*shard)->experts().keys(),
            (std::vector<common::ExpertKey>{{0, 2}, {1, 5}}));
  EXPECT_EQ((*shard)->weight_bytes(), 4 * (6 * 4 + 6 + 3 + 4 * 3 + 4) +
                                          4 * (10 * 4 + 10 + 5 + 4 * 5 + 4));
  at::Tensor tokens = at::randn({5, 4});
  at::Tensor out = at::full({5, 4}, -7.0f);
  const std::vector<common::ExpertSegment> segments = {
      {{0, 2}, 0, 2}, {{1, 5}, 2, 0}, {{1, 5}, 3, 2}};
  ASSERT_TRUE((*shard)
                  ->Run({common::DType::kFloat32, tokens.data_ptr(), 5},
                        segments, out.data_ptr<float>())
                  .ok());
  EXPECT_TRUE(at::allclose(out.narrow(0, 0, 2),
                           GegluForward(e2, tokens.narrow(0, 0, 2))));
  EXPECT_TRUE(at::equal(out[2], at::full({4}, -7.0f)));  // no segment
  EXPECT_TRUE(at::allclose(out.narrow(0, 3, 2),
                           GegluForward(e5, tokens.narrow(0, 3, 2))));
  // 16-bit tokens are computed in float32.
  at::Tensor half = tokens.to(at::kBFloat16).contiguous();
  at::Tensor out16 = at::empty({5, 4});
  ASSERT_TRUE((*shard)
                  ->Run({common::DType::kBFloat16, half.data_ptr(), 5},
                        segments, out16.data_ptr<float>())
                  .ok());
  EXPECT_TRUE(
      at::allclose(out16.narrow(0, 0, 2),
                   GegluForward(e2, half.to(at::kFloat).narrow(0, 0, 2))));
}

// A call whose segments all have at most kSkinnyMaxRows rows runs without
// LibTorch (the skinny kernel and its own GELU); it agrees with LibTorch's
// GEMMs and GELU to float32 rounding, and a small segment gives the same
// bits whether its call runs that way or through LibTorch because another
// segment is large.
TEST(ExpertShardTest, SmallCallsWithoutLibTorchAgreeWithTheGemmPath) {
  std::map<common::ExpertKey, common::ExpertWeights> experts;
  experts[{0, 0}] = RandomExpert(64, 256, 11);
  experts[{0, 1}] = RandomExpert(64, 256, 12);
  const common::ExpertWeights e0 = experts[{0, 0}];
  auto shard = CpuExpertShard::Create(experts);
  ASSERT_TRUE(shard.ok()) << shard.status();
  at::Tensor tokens = at::randn({45, 64});
  at::Tensor small = at::zeros({45, 64}), mixed = at::zeros({45, 64});
  ASSERT_TRUE((*shard)
                  ->Run({common::DType::kFloat32, tokens.data_ptr(), 45},
                        {{{0, 0}, 0, 5}}, small.data_ptr<float>())
                  .ok());
  ASSERT_TRUE((*shard)
                  ->Run({common::DType::kFloat32, tokens.data_ptr(), 45},
                        {{{0, 0}, 0, 5}, {{0, 1}, 5, 40}},
                        mixed.data_ptr<float>())
                  .ok());
  at::Tensor gemm = at::empty({5, 64}), hidden;
  GegluForwardInto(e0, tokens.narrow(0, 0, 5), hidden, gemm, GegluPath::kGemm);
  const double scale = std::max(1.0, gemm.abs().max().item<double>());
  EXPECT_LE((small.narrow(0, 0, 5) - gemm).abs().max().item<double>(),
            1e-5 * scale);
  EXPECT_TRUE(at::equal(small.narrow(0, 0, 5), mixed.narrow(0, 0, 5)));
}

TEST(ExpertShardTest, RejectsUnknownExpertsAndRowsOutsideTheBlock) {
  std::map<common::ExpertKey, common::ExpertWeights> experts;
  experts[{0, 0}] = RandomExpert(4, 3, 5);
  auto shard = CpuExpertShard::Create(experts);
  ASSERT_TRUE(shard.ok());
  at::Tensor tokens = at::randn({10, 4});
  std::vector<float> out(40);
  auto run = [&](std::vector<common::ExpertSegment> segments) {
    return (*shard)->Run({common::DType::kFloat32, tokens.data_ptr(), 10},
                         segments, out.data());
  };
  // Not hosted: FAILED_PRECONDITION, what a router takes as "ask a replica".
  absl::Status s = run({{{0, 1}, 0, 2}});
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("expert 1 of layer 0 is not hosted"),
            std::string::npos)
      << s;
  EXPECT_NE(run({{{1, 0}, 0, 2}}).message().find("not hosted"),
            std::string::npos);
  EXPECT_EQ(run({{{0, 0}, 8, 3}}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(run({{{0, 0}, -1, 3}}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(run({{{0, 0}, 0, -2}}).code(), absl::StatusCode::kInvalidArgument);
  // Counts near 2^62 must not overflow into a pass.
  const int64_t huge = int64_t{1} << 62;
  s = run({{{0, 0}, 0, huge}, {{0, 0}, 1, huge}});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_EQ(run({{{0, 0}, huge, huge + 10}}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(run({{{0, 0}, 0, 10}}).ok());
  EXPECT_FALSE(CpuExpertShard::Create({}).ok());
  std::map<common::ExpertKey, common::ExpertWeights> mixed;
  mixed[{0, 0}] = RandomExpert(4, 3, 5);
  mixed[{0, 1}] = RandomExpert(6, 3, 5);
  EXPECT_FALSE(CpuExpertShard::Create(mixed).ok());
}

}  // namespace
}  // namespace moe::experts
