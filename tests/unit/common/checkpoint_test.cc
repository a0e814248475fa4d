#include "common/checkpoint.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "common/demo_model.h"
#include "common/safetensors.h"
#include "testing/golden.h"

namespace moe::common {
namespace {

const std::string kMoe = "A_moe_eval_nodrop";

// Copies a golden file, letting `edit` drop, rename or add tensors.
template <typename Edit>
std::string RewriteGolden(const std::string& name, const std::string& out,
                          Edit edit) {
  auto reader = SafetensorsReader::Open(testing::GoldenPath(name));
  EXPECT_TRUE(reader.ok());
  SafetensorsWriter writer;
  for (const auto& [k, v] : (*reader)->metadata()) writer.SetMetadata(k, v);
  for (const TensorEntry& e : (*reader)->tensors()) {
    auto t = (*reader)->Read(e.name);
    EXPECT_TRUE(t.ok());
    std::string new_name = e.name;
    HostTensor tensor = *t;
    if (!edit(&new_name, &tensor, &writer)) continue;
    EXPECT_TRUE(writer.Add(new_name, tensor).ok());
  }
  const std::string path = testing::TempDir() + "/" + out;
  EXPECT_TRUE(writer.WriteFile(path).ok());
  return path;
}

TEST(CheckpointTest, LoadsHeadSpelling) {
  auto ckpt = LoadCheckpoint(testing::GoldenPath(kMoe));
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ(ckpt->config.num_experts, 4);
  EXPECT_EQ(ckpt->router.gate.sizes(), (at::IntArrayRef{4, 16}));
  EXPECT_EQ(ckpt->experts.size(), 4u);
  EXPECT_EQ(ckpt->experts.at(2).w1.sizes(), (at::IntArrayRef{84, 16}));
  EXPECT_EQ(ckpt->experts.at(2).mult_bias.sizes(), (at::IntArrayRef{42}));
}

TEST(CheckpointTest, LoadsSeedSpellingAsTheSameMatrix) {
  auto head = LoadCheckpoint(testing::GoldenPath(kMoe));
  ASSERT_TRUE(head.ok());
  const std::string path = RewriteGolden(
      kMoe, "seed.safetensors",
      [](std::string* name, HostTensor* t, SafetensorsWriter*) {
        if (*name != "gate.to_gates.weight") return true;
        // [E, d] -> [d, E]
        const int64_t e = t->shape[0], d = t->shape[1];
        std::string data(t->data.size(), '\0');
        const float* src = reinterpret_cast<const float*>(t->data.data());
        float* dst = reinterpret_cast<float*>(data.data());
        for (int64_t i = 0; i < e; ++i)
          for (int64_t j = 0; j < d; ++j) dst[j * e + i] = src[i * d + j];
        t->data = data;
        t->shape = {d, e};
        *name = "gate.w_gating";
        return true;
      });
  auto seed = LoadCheckpoint(path);
  ASSERT_TRUE(seed.ok()) << seed.status();
  EXPECT_TRUE(at::equal(seed->router.gate, head->router.gate));
}

TEST(CheckpointTest, BothGateSpellingsIsAnError) {
  const std::string path =
      RewriteGolden(kMoe, "both.safetensors",
                    [](std::string* name, HostTensor* t, SafetensorsWriter* w) {
                      if (*name == "gate.to_gates.weight") {
                        HostTensor copy = *t;
                        copy.shape = {t->shape[1], t->shape[0]};
                        EXPECT_TRUE(w->Add("gate.w_gating", copy).ok());
                      }
                      return true;
                    });
  auto ckpt = LoadCheckpoint(path);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_NE(ckpt.status().message().find("keep one gate spelling"),
            std::string::npos)
      << ckpt.status();
}

TEST(CheckpointTest, LoadsASubsetOfExpertsWithoutTheRouter) {
  LoadOptions options;
  options.router = false;
  options.experts = std::vector<int64_t>{1, 3};
  auto ckpt = LoadCheckpoint(testing::GoldenPath(kMoe), options);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_FALSE(ckpt->router.gate.defined());
  ASSERT_EQ(ckpt->experts.size(), 2u);
  EXPECT_TRUE(ckpt->experts.count(1));
  EXPECT_TRUE(ckpt->experts.count(3));
  auto full = LoadCheckpoint(testing::GoldenPath(kMoe));
  EXPECT_TRUE(at::equal(ckpt->experts.at(3).w2, full->experts.at(3).w2));
}

TEST(CheckpointTest, ExpertOutOfRange) {
  LoadOptions options;
  options.experts = std::vector<int64_t>{4};
  auto ckpt = LoadCheckpoint(testing::GoldenPath(kMoe), options);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_NE(ckpt.status().message().find("expert 4 requested but the model "
                                         "has 4 experts"),
            std::string::npos)
      << ckpt.status();
}

TEST(CheckpointTest, MissingParameterIsNamed) {
  const std::string path =
      RewriteGolden(kMoe, "missing.safetensors",
                    [](std::string* name, HostTensor*, SafetensorsWriter*) {
                      return *name != "experts.experts.2.net.1.mult_bias";
                    });
  auto ckpt = LoadCheckpoint(path);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(ckpt.status().message().find(
                "missing parameters: experts.experts.2.net.1.mult_bias"),
            std::string::npos)
      << ckpt.status();
  EXPECT_NE(ckpt.status().message().find("missing.safetensors"),
            std::string::npos);
}

TEST(CheckpointTest, UnexpectedTensorIsNamed) {
  const std::string path =
      RewriteGolden(kMoe, "unexpected.safetensors",
                    [](std::string* name, HostTensor*, SafetensorsWriter*) {
                      if (*name == "experts.experts.0.net.0.bias") {
                        *name = "experts.experts.0.net.0.bias_typo";
                      }
                      return true;
                    });
  auto ckpt = LoadCheckpoint(path);
  ASSERT_FALSE(ckpt.ok());
  // The renamed tensor is both missing and unexpected; missing is reported.
  EXPECT_NE(ckpt.status().message().find("experts.experts.0.net.0.bias"),
            std::string::npos)
      << ckpt.status();
  const std::string extra =
      RewriteGolden(kMoe, "extra.safetensors",
                    [](std::string* name, HostTensor* t, SafetensorsWriter* w) {
                      if (*name == "gate.to_gates.weight") {
                        EXPECT_TRUE(w->Add("gate.noise.weight", *t).ok());
                      }
                      return true;
                    });
  auto ckpt2 = LoadCheckpoint(extra);
  ASSERT_FALSE(ckpt2.ok());
  EXPECT_NE(
      ckpt2.status().message().find("unexpected tensors: gate.noise.weight"),
      std::string::npos)
      << ckpt2.status();
}

TEST(CheckpointTest, WrongShapeIsNamedWithTheExpectedShape) {
  const std::string path =
      RewriteGolden(kMoe, "shape.safetensors",
                    [](std::string* name, HostTensor* t, SafetensorsWriter*) {
                      if (*name == "experts.experts.1.net.2.weight")
                        t->shape = {42, 16};
                      return true;
                    });
  auto ckpt = LoadCheckpoint(path);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_NE(ckpt.status().message().find(
                "\"experts.experts.1.net.2.weight\" has shape [42, 16], "
                "expected [16, 42]"),
            std::string::npos)
      << ckpt.status();
}

TEST(CheckpointTest, NoConfigIsAClearError) {
  SafetensorsWriter writer;
  HostTensor t;
  t.shape = {1};
  t.data.assign(4, '\0');
  ASSERT_TRUE(writer.Add("w", t).ok());
  const std::string path = testing::TempDir() + "/noconfig.safetensors";
  ASSERT_TRUE(writer.WriteFile(path).ok());
  auto ckpt = LoadCheckpoint(path);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_NE(ckpt.status().message().find("config_json"), std::string::npos);
}

TEST(CheckpointTest, BadConfigNamesTheFile) {
  const std::string path = RewriteGolden(
      kMoe, "badconfig.safetensors",
      [](std::string*, HostTensor*, SafetensorsWriter* w) {
        w->SetMetadata("config_json", R"({"dim": 16, "num_experts": 1})");
        return true;
      });
  auto ckpt = LoadCheckpoint(path);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_NE(ckpt.status().message().find("badconfig.safetensors"),
            std::string::npos);
  EXPECT_NE(ckpt.status().message().find("at least 2 experts"),
            std::string::npos);
}

TEST(CheckpointTest, HalfPrecisionWeightsBecomeFloat32) {
  const std::string path = RewriteGolden(
      kMoe, "half.safetensors",
      [](std::string* name, HostTensor* t, SafetensorsWriter*) {
        if (name->rfind("experts.", 0) == 0) {
          at::Tensor f = at::from_blob(t->data.data(), t->shape, at::kFloat)
                             .to(at::kHalf)
                             .contiguous();
          t->dtype = DType::kFloat16;
          t->data.assign(static_cast<const char*>(f.data_ptr()), f.nbytes());
        }
        return true;
      });
  auto ckpt = LoadCheckpoint(path);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ(ckpt->experts.at(0).w1.scalar_type(), at::kFloat);
}

TEST(CheckpointTest, LoadsBlockAndTwoLevelModels) {
  auto block = LoadCheckpoint(testing::GoldenPath("E_sparse_block_eval"));
  ASSERT_TRUE(block.ok()) << block.status();
  EXPECT_TRUE(block->config.is_block());
  ASSERT_TRUE(block->router.ff_before.has_value());
  ASSERT_TRUE(block->router.ff_after.has_value());
  EXPECT_EQ(block->router.ff_after->geglu.w1.sizes(),
            (at::IntArrayRef{84, 16}));
  EXPECT_EQ(block->router.prenorm_gamma.sizes(), (at::IntArrayRef{16}));

  auto hier = LoadCheckpoint(testing::GoldenPath("F_hier_eval"));
  ASSERT_TRUE(hier.ok()) << hier.status();
  EXPECT_TRUE(hier->config.hierarchical());
  EXPECT_EQ(hier->router.gate.sizes(), (at::IntArrayRef{2, 16}));
  EXPECT_EQ(hier->router.inner_gate.sizes(), (at::IntArrayRef{2, 2, 16}));
  EXPECT_EQ(hier->experts.size(), 4u);
  EXPECT_EQ(ExpertParamPrefix(hier->config, 3), "experts.1.experts.1.");
}

TEST(CheckpointTest, DemoModelRoundTripsForEveryKind) {
  for (ModelKind kind : {ModelKind::kMoe, ModelKind::kSparseMoeBlock,
                         ModelKind::kHierarchicalMoe}) {
    ModelConfig config = DefaultDemoConfig();
    config.kind = kind;
    config.dim = 8;
    config.num_experts = 3;
    if (kind == ModelKind::kHierarchicalMoe) config.num_experts_inner = 2;
    auto model = BuildDemoModel(config, 5);
    ASSERT_TRUE(model.ok()) << model.status();
    const std::string path =
        testing::TempDir() + "/demo_" + ModelKindName(kind) + ".safetensors";
    ASSERT_TRUE(
        WriteCheckpoint(path, config, model->router, model->experts).ok());
    auto ckpt = LoadCheckpoint(path);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    EXPECT_TRUE(at::equal(ckpt->router.gate, model->router.gate));
    EXPECT_EQ(ckpt->experts.size(),
              static_cast<size_t>(config.total_experts()));
    EXPECT_TRUE(at::equal(ckpt->experts.at(1).w1, model->experts.at(1).w1));
    if (kind == ModelKind::kHierarchicalMoe) {
      EXPECT_TRUE(at::equal(ckpt->router.inner_gate, model->router.inner_gate));
    }
    // The same seed gives the same weights.
    auto again = BuildDemoModel(config, 5);
    EXPECT_TRUE(at::equal(again->experts.at(2).w2, model->experts.at(2).w2));
  }
}

}  // namespace
}  // namespace moe::common
