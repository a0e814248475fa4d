#include "router/engine/layer_engine.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>

#include <limits>
#include <map>

#include "common/checkpoint.h"
#include "common/torch/checkpoint_weights.h"
#include "common/torch/demo_model.h"
#include "common/torch/torch_convert.h"
#include "experts/cpu_expert_shard.h"
#include "experts/rms_norm.h"
#include "testing/golden.h"

namespace moe::router {
namespace {

// Records what reaches the experts, then runs them locally.
class SpyBackend : public ExpertBackend {
 public:
  explicit SpyBackend(const experts::ExpertShard* shard) : local_(shard) {}
  absl::Status Run(const ExpertWork& work, BackendReport* report) override {
    rows += work.rows;
    for (const auto& s : work.segments) {
      if (s.count == 0) ++empty_segments;
    }
    if (fail) return absl::UnavailableError("worker down");
    return local_.Run(work, report);
  }
  int64_t rows = 0;
  int64_t empty_segments = 0;
  bool fail = false;

 private:
  LocalExpertBackend local_;
};

struct Fixture {
  common::LayerConfig config;
  std::unique_ptr<experts::ExpertShard> shard;
  std::unique_ptr<SpyBackend> backend;
  std::unique_ptr<LayerEngine> engine;

  absl::StatusOr<ForwardResult> Forward(const at::Tensor& x,
                                        const RoutingOptions& o = {}) {
    return engine->Forward(x, o, *backend);
  }
};

std::unique_ptr<experts::ExpertShard> ShardOf(const common::ExpertMap& m) {
  std::map<common::ExpertKey, common::ExpertWeights> keyed;
  for (const auto& [id, w] : m) keyed[{0, id}] = w;
  return std::move(experts::CpuExpertShard::Create(keyed).value());
}

Fixture Demo(common::LayerKind kind, int64_t experts, int64_t inner = 0) {
  Fixture f;
  f.config = common::DefaultDemoConfig();
  f.config.kind = kind;
  f.config.dim = 16;
  f.config.num_experts = experts;
  f.config.num_experts_inner = inner;
  auto model = common::BuildDemoLayer(f.config, 11);
  EXPECT_TRUE(model.ok());
  f.shard = ShardOf(model->experts);
  f.backend = std::make_unique<SpyBackend>(f.shard.get());
  auto engine = LayerEngine::Create(0, {"", f.config}, model->router);
  EXPECT_TRUE(engine.ok()) << engine.status();
  f.engine = std::move(*engine);
  return f;
}

absl::Status ForwardStatus(Fixture& f, const at::Tensor& x,
                           const RoutingOptions& o = {}) {
  return f.Forward(x, o).status();
}

common::HostTensor Host(const at::Tensor& t) {
  return common::FromTorch(t.contiguous()).value();
}

TEST(LayerEngineTest, RejectsBadInputsNamingTheField) {
  Fixture f = Demo(common::LayerKind::kMoe, 4);
  struct Case {
    at::Tensor x;
    const char* message;
  };
  at::Tensor nan = at::randn({1, 4, 16});
  nan[0][1][2] = std::numeric_limits<float>::quiet_NaN();
  at::Tensor inf = at::randn({1, 4, 16});
  inf[0][0][0] = std::numeric_limits<float>::infinity();
  const Case cases[] = {
      {at::randn({4, 16}), "x: must have rank 3"},
      {at::randn({1, 4, 15}),
       "x: last dimension is 15 but the model dim is 16"},
      {at::randn({0, 4, 16}), "x: batch and tokens must be at least 1"},
      {at::randn({1, 0, 16}), "x: batch and tokens must be at least 1"},
      {at::ones({1, 4, 16}, at::kInt), "x: dtype Int is not supported"},
      {at::randn({1, 4, 16}, at::kDouble), "x: dtype Double"},
      {nan, "x: contains NaN or Inf"},
      {inf, "x: contains NaN or Inf"},
  };
  for (const Case& c : cases) {
    absl::Status s = ForwardStatus(f, c.x);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.message;
    EXPECT_NE(s.message().find(c.message), std::string::npos) << s;
  }
  EXPECT_EQ(f.backend->rows, 0);
}

TEST(LayerEngineTest, RejectsBadOptions) {
  Fixture f = Demo(common::LayerKind::kMoe, 4);
  at::Tensor x = at::randn({2, 8, 16});
  RoutingOptions o;
  o.threshold = -0.5f;
  EXPECT_NE(ForwardStatus(f, x, o).message().find("threshold"),
            std::string::npos);
  o = {};
  o.capacity_factor = 0;
  EXPECT_NE(ForwardStatus(f, x, o).message().find("capacity_factor"),
            std::string::npos);
  o = {};
  o.second_choice_uniforms = Host(at::rand({2, 7}));
  absl::Status s = ForwardStatus(f, x, o);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("second_choice_uniforms: shape [2, 7]"),
            std::string::npos)
      << s;
  o.second_choice_uniforms = Host(at::full({2, 8}, 1.5f));
  EXPECT_NE(ForwardStatus(f, x, o).message().find("in [0, 1]"),
            std::string::npos);
  o.second_choice_uniforms = Host(at::rand({2, 8}));
  o.policy = SecondExpertPolicy::kAll;
  EXPECT_NE(ForwardStatus(f, x, o).message().find("random policy only"),
            std::string::npos);
}

TEST(LayerEngineTest, TopTwoNeedsTwoExperts) {
  common::LayerConfig config = common::DefaultDemoConfig();
  config.num_experts = 1;
  auto engine = LayerEngine::Create(0, {"", config}, common::RouterWeights());
  ASSERT_FALSE(engine.ok());
  EXPECT_NE(engine.status().message().find("at least 2 experts"),
            std::string::npos);
}

TEST(LayerEngineTest, OptionBoundsAreTheCheckpointsBounds) {
  Fixture f = Demo(common::LayerKind::kMoe, 4);
  at::Tensor x = at::randn({1, 8, 16});
  RoutingOptions o;
  o.threshold = 5.0f;  // legal: routes fewer second choices
  EXPECT_TRUE(ForwardStatus(f, x, o).ok());
  o.threshold = std::numeric_limits<float>::infinity();
  EXPECT_NE(ForwardStatus(f, x, o).message().find("options.threshold"),
            std::string::npos);
  o = {};
  o.capacity_factor = 1e9;  // legal: capacity is capped at the group size
  auto big = f.Forward(x, o);
  ASSERT_TRUE(big.ok());
  EXPECT_EQ(big->routing.capacity, 8);
  o.capacity_factor = std::nan("");
  EXPECT_NE(ForwardStatus(f, x, o).message().find("options.capacity_factor"),
            std::string::npos);
}

TEST(LayerEngineTest, SeedEqualsTorchRandDrawsAndIsDeterministic) {
  // A fixed input: with an unseeded one, some runs skipped no second choice.
  at::manual_seed(11);
  Fixture f = Demo(common::LayerKind::kMoe, 4);
  at::Tensor x = at::randn({2, 32, 16});
  RoutingOptions seeded;
  seeded.seed = 42;
  seeded.threshold = 0.4f;  // make the draws matter
  auto a = f.Forward(x, seeded);
  auto b = f.Forward(x, seeded);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_TRUE(at::equal(a->y, b->y));
  EXPECT_GT(a->routing.counts.second_skipped, 0);
  // torch.manual_seed(42); torch.rand(B, n) gives the same draws.
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(42);
  RoutingOptions replay;
  replay.threshold = 0.4f;
  replay.second_choice_uniforms = Host(at::rand({2, 32}, gen));
  auto c = f.Forward(x, replay);
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(at::equal(a->y, c->y));
  EXPECT_EQ(a->routing.requested, c->routing.requested);
}

TEST(LayerEngineTest, ExpertsSeeOnlyKeptTokens) {
  Fixture f = Demo(common::LayerKind::kMoe, 8);
  at::Tensor x = at::randn({3, 40, 16});
  RoutingOptions o;
  o.capacity_factor = 0.5;  // force drops
  o.seed = 1;
  auto r = f.Forward(x, o);
  ASSERT_TRUE(r.ok()) << r.status();
  const RoutingCounts& c = r->routing.counts;
  EXPECT_GT(c.dropped[0] + c.dropped[1], 0);
  EXPECT_EQ(f.backend->rows, c.kept[0] + c.kept[1]);
  EXPECT_EQ(f.backend->empty_segments, 0);
  // Capacity is per row: 40 tokens, cf 0.5, 8 experts -> int(2.5) -> 4.
  EXPECT_EQ(r->routing.capacity, 4);
}

TEST(LayerEngineTest, PolicyNoneRoutesOnlyFirstChoices) {
  Fixture f = Demo(common::LayerKind::kMoe, 4);
  RoutingOptions o;
  o.policy = SecondExpertPolicy::kNone;
  auto r = f.Forward(at::randn({1, 16, 16}), o);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->routing.counts.requested[1], 0);
  EXPECT_EQ(r->plan.size(), r->routing.counts.kept[0]);
}

TEST(LayerEngineTest, RowsAreRoutedIndependently) {
  Fixture f = Demo(common::LayerKind::kMoe, 4);
  at::Tensor x = at::randn({2, 24, 16});
  RoutingOptions o;
  o.policy = SecondExpertPolicy::kAll;
  o.capacity_factor = 1.0;
  auto both = f.Forward(x, o);
  auto first = f.Forward(x.narrow(0, 0, 1), o);
  ASSERT_TRUE(both.ok() && first.ok());
  EXPECT_LE(testing::MaxAbsDiff(both->y[0], first->y[0]), 1e-6);
}

TEST(LayerEngineTest, HalfPrecisionInputsComputeInFloat32) {
  Fixture f = Demo(common::LayerKind::kMoe, 4);
  at::Tensor x = at::randn({1, 8, 16});
  RoutingOptions o;
  o.policy = SecondExpertPolicy::kAll;
  auto bf16 = f.Forward(x.to(at::kBFloat16), o);
  auto f32 = f.Forward(x.to(at::kBFloat16).to(at::kFloat), o);
  ASSERT_TRUE(bf16.ok() && f32.ok());
  EXPECT_EQ(bf16->y.scalar_type(), at::kFloat);
  EXPECT_TRUE(at::equal(bf16->y, f32->y));
  EXPECT_TRUE(f.Forward(x.to(at::kHalf), o).ok());
}

TEST(LayerEngineTest, BackendFailureIsReturned) {
  Fixture f = Demo(common::LayerKind::kMoe, 4);
  f.backend->fail = true;
  absl::Status s = ForwardStatus(f, at::randn({1, 8, 16}));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
}

TEST(LayerEngineTest, BlockFeedForwardsAreOptional) {
  auto ckpt =
      common::Checkpoint::Open(testing::GoldenPath("E_sparse_block_eval"));
  ASSERT_TRUE(ckpt.ok());
  const common::LayerSpec spec = (*ckpt)->spec().layers[0];
  auto router = common::LoadRouterWeights(**ckpt, 0);
  auto experts = common::LoadAllExperts(**ckpt);
  ASSERT_TRUE(router.ok() && experts.ok());
  auto shard = ShardOf((*experts)[0]);
  LocalExpertBackend backend(shard.get());
  auto golden =
      testing::ReadAllTensors(testing::GoldenPath("E_sparse_block_eval"));
  common::RouterWeights no_ff = *router;
  no_ff.ff_before.reset();
  no_ff.ff_after.reset();
  auto engine = LayerEngine::Create(0, spec, no_ff);
  ASSERT_TRUE(engine.ok());
  RoutingOptions o;
  o.policy = SecondExpertPolicy::kAll;
  // Without feed-forwards the block is x + MoE(RMSNorm(x)); check against the
  // plain-MoE path on RMSNorm(x) computed from the same weights.
  at::Tensor x = golden.at("input.x");
  auto r = (*engine)->Forward(x, o, backend);
  ASSERT_TRUE(r.ok()) << r.status();
  common::LayerSpec plain = spec;
  plain.config.kind = common::LayerKind::kMoe;
  common::RouterWeights gate_only;
  gate_only.gate = router->gate;
  auto moe = LayerEngine::Create(0, plain, gate_only);
  ASSERT_TRUE(moe.ok());
  auto inner =
      (*moe)->Forward(experts::RmsNorm(x, router->prenorm_gamma), o, backend);
  ASSERT_TRUE(inner.ok()) << inner.status();
  EXPECT_LE(testing::MaxAbsDiff(r->y, x + inner->y), 1e-6);
  // With them, the golden output (which has both) is reproduced.
  auto full = LayerEngine::Create(0, spec, *router);
  ASSERT_TRUE(full.ok());
  auto with_ff = (*full)->Forward(x, o, backend);
  ASSERT_TRUE(with_ff.ok());
  EXPECT_LE(testing::MaxAbsDiff(with_ff->y, golden.at("output.y")), 1e-5);
  EXPECT_GT(testing::MaxAbsDiff(with_ff->y, r->y), 1e-3);
}

TEST(LayerEngineTest, TwoLevelDemoRoutesOverAllInnerExperts) {
  Fixture f = Demo(common::LayerKind::kHierarchicalMoe, 2, 3);
  RoutingOptions o;
  o.seed = 5;
  auto r = f.Forward(at::randn({2, 32, 16}), o);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(r->inner.has_value());
  EXPECT_EQ(r->plan.num_experts, 6);
  EXPECT_EQ(f.backend->rows, r->plan.size());
  EXPECT_EQ(r->inner->routing.groups, 2 * 2);
  EXPECT_EQ(r->inner->routing.group_size, r->routing.capacity);
  EXPECT_GT(r->losses.balance_loss, 0);
  EXPECT_GT(r->losses.router_z_loss, 0);
}

// bfloat16 compute on the README configuration (dim 512, 16 experts,
// hidden_mult 4): the same routing, y within a relative RMS of 1e-2 of
// float32, half the weight bytes.
TEST(LayerEngineTest, BFloat16ComputeStaysCloseToFloat32) {
  const common::LayerConfig config = common::DefaultDemoConfig();
  auto model = common::BuildDemoLayer(config, 3);
  ASSERT_TRUE(model.ok());
  std::map<common::ExpertKey, common::ExpertWeights> keyed;
  for (const auto& [id, w] : model->experts) keyed[{0, id}] = w;
  auto f32 = experts::CpuExpertShard::Create(keyed);
  experts::CpuShardOptions bf16_options;
  bf16_options.compute = common::DType::kBFloat16;
  bf16_options.threads = 1;
  auto bf16 = experts::CpuExpertShard::Create(keyed, bf16_options);
  ASSERT_TRUE(f32.ok() && bf16.ok());
  EXPECT_EQ((*bf16)->compute_dtype(), common::DType::kBFloat16);
  EXPECT_EQ((*bf16)->weight_bytes() * 2, (*f32)->weight_bytes());
  auto engine = LayerEngine::Create(0, {"", config}, model->router);
  ASSERT_TRUE(engine.ok());
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(5);
  const at::Tensor x = at::randn({2, 256, config.dim}, gen);
  RoutingOptions options;
  options.seed = 1;
  LocalExpertBackend exact(f32->get()), fast(bf16->get());
  auto a = (*engine)->Forward(x, options, exact);
  auto b = (*engine)->Forward(x, options, fast);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->plan.row, b->plan.row)
      << "gating must not depend on the compute dtype";
  EXPECT_EQ(a->plan.weight, b->plan.weight);
  const at::Tensor diff = (b->y - a->y).to(at::kDouble);
  const double rel_rms =
      diff.pow(2).mean().sqrt().item<double>() /
      a->y.to(at::kDouble).pow(2).mean().sqrt().item<double>();
  const double max_abs = diff.abs().max().item<double>();
  std::printf(
      "bfloat16 compute: relative RMS %.2e, max abs %.2e (max |y| %.2e)\n",
      rel_rms, max_abs, a->y.abs().max().item<double>());
  EXPECT_LT(rel_rms, 1e-2);
  EXPECT_GT(rel_rms, 0) << "bfloat16 compute gave float32's bits exactly";
}

}  // namespace
}  // namespace moe::router
