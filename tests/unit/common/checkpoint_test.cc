#include "common/checkpoint.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <iterator>

#include "common/safetensors.h"
#include "common/torch/checkpoint_weights.h"
#include "common/torch/demo_model.h"
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

absl::Status OpenStatus(const std::string& path) {
  return Checkpoint::Open(path).status();
}

TEST(CheckpointTest, LoadsHeadSpelling) {
  auto ckpt = Checkpoint::Open(testing::GoldenPath(kMoe));
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  ASSERT_EQ((*ckpt)->spec().layers.size(), 1u);
  EXPECT_EQ((*ckpt)->spec().layers[0].name, "");
  EXPECT_EQ((*ckpt)->spec().name, kMoe);  // the file name
  EXPECT_EQ((*ckpt)->spec().layers[0].config.num_experts, 4);
  auto router = LoadRouterWeights(**ckpt, 0);
  ASSERT_TRUE(router.ok()) << router.status();
  EXPECT_EQ(router->gate.sizes(), (at::IntArrayRef{4, 16}));
  auto expert = LoadExpertWeights(**ckpt, {0, 2});
  ASSERT_TRUE(expert.ok());
  EXPECT_EQ(expert->w1.sizes(), (at::IntArrayRef{84, 16}));
  EXPECT_EQ(expert->mult_bias.sizes(), (at::IntArrayRef{42}));
}

TEST(CheckpointTest, LoadsSeedSpellingAsTheSameMatrix) {
  auto head = Checkpoint::Open(testing::GoldenPath(kMoe));
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
  auto seed = Checkpoint::Open(path);
  ASSERT_TRUE(seed.ok()) << seed.status();
  EXPECT_TRUE((*seed)->layer_params(0).gate_transposed);
  EXPECT_TRUE(at::equal(LoadRouterWeights(**seed, 0)->gate,
                        LoadRouterWeights(**head, 0)->gate));
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
  EXPECT_NE(OpenStatus(path).message().find("keep one gate spelling"),
            std::string::npos);
}

TEST(CheckpointTest, ExpertOutOfRange) {
  auto ckpt = Checkpoint::Open(testing::GoldenPath(kMoe));
  ASSERT_TRUE(ckpt.ok());
  auto w = LoadExpertWeights(**ckpt, {0, 4});
  ASSERT_FALSE(w.ok());
  EXPECT_NE(w.status().message().find("expert 4 requested but layer \"\" "
                                      "has 4 experts"),
            std::string::npos)
      << w.status();
  EXPECT_FALSE(LoadExpertWeights(**ckpt, {1, 0}).ok());
}

TEST(CheckpointTest, MissingParameterIsNamed) {
  const std::string path =
      RewriteGolden(kMoe, "missing.safetensors",
                    [](std::string* name, HostTensor*, SafetensorsWriter*) {
                      return *name != "experts.experts.2.net.1.mult_bias";
                    });
  absl::Status s = OpenStatus(path);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(
      s.message().find("missing parameters: experts.experts.2.net.1.mult_bias"),
      std::string::npos)
      << s;
  EXPECT_NE(s.message().find("missing.safetensors"), std::string::npos);
}

TEST(CheckpointTest, UnexpectedTensorIsNamed) {
  const std::string extra =
      RewriteGolden(kMoe, "extra.safetensors",
                    [](std::string* name, HostTensor* t, SafetensorsWriter* w) {
                      if (*name == "gate.to_gates.weight") {
                        EXPECT_TRUE(w->Add("gate.noise.weight", *t).ok());
                      }
                      return true;
                    });
  absl::Status s = OpenStatus(extra);
  EXPECT_NE(s.message().find("unexpected tensors: gate.noise.weight"),
            std::string::npos)
      << s;
}

TEST(CheckpointTest, WrongShapeIsNamedWithTheExpectedShape) {
  const std::string path =
      RewriteGolden(kMoe, "shape.safetensors",
                    [](std::string* name, HostTensor* t, SafetensorsWriter*) {
                      if (*name == "experts.experts.1.net.2.weight")
                        t->shape = {42, 16};
                      return true;
                    });
  EXPECT_NE(OpenStatus(path).message().find(
                "\"experts.experts.1.net.2.weight\" has shape [42, 16], "
                "expected [16, 42]"),
            std::string::npos);
}

TEST(CheckpointTest, NoConfigIsAClearError) {
  SafetensorsWriter writer;
  HostTensor t;
  t.shape = {1};
  t.data.assign(4, '\0');
  ASSERT_TRUE(writer.Add("w", t).ok());
  const std::string path = testing::TempDir() + "/noconfig.safetensors";
  ASSERT_TRUE(writer.WriteFile(path).ok());
  EXPECT_NE(OpenStatus(path).message().find("config_json"), std::string::npos);
}

TEST(CheckpointTest, BadConfigNamesTheFile) {
  const std::string path = RewriteGolden(
      kMoe, "badconfig.safetensors",
      [](std::string*, HostTensor*, SafetensorsWriter* w) {
        w->SetMetadata("config_json", R"({"dim": 16, "num_experts": 1})");
        return true;
      });
  absl::Status s = OpenStatus(path);
  EXPECT_NE(s.message().find("badconfig.safetensors"), std::string::npos);
  EXPECT_NE(s.message().find("at least 2 experts"), std::string::npos);
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
  auto ckpt = Checkpoint::Open(path);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  auto w = LoadExpertWeights(**ckpt, {0, 0});
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(w->w1.scalar_type(), at::kFloat);
}

TEST(CheckpointTest, NonFiniteWeightIsRefusedNamingTheTensor) {
  const std::string path =
      RewriteGolden(kMoe, "nan.safetensors",
                    [](std::string* name, HostTensor* t, SafetensorsWriter*) {
                      if (*name == "experts.experts.3.net.2.bias") {
                        const float nan = std::nanf("");
                        std::memcpy(t->data.data() + 8, &nan, sizeof(nan));
                      }
                      return true;
                    });
  auto ckpt = Checkpoint::Open(path);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();  // the header is fine
  auto w = LoadExpertWeights(**ckpt, {0, 3});
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(w.status().message().find(
                "\"experts.experts.3.net.2.bias\" holds nan at flat index 2"),
            std::string::npos)
      << w.status();
  EXPECT_TRUE(LoadExpertWeights(**ckpt, {0, 2}).ok());
}

TEST(CheckpointTest, LoadsBlockAndTwoLevelModels) {
  auto block = Checkpoint::Open(testing::GoldenPath("E_sparse_block_eval"));
  ASSERT_TRUE(block.ok()) << block.status();
  EXPECT_TRUE((*block)->spec().layers[0].config.is_block());
  auto router = LoadRouterWeights(**block, 0);
  ASSERT_TRUE(router.ok()) << router.status();
  ASSERT_TRUE(router->ff_before.has_value());
  ASSERT_TRUE(router->ff_after.has_value());
  EXPECT_EQ(router->ff_after->geglu.w1.sizes(), (at::IntArrayRef{84, 16}));
  EXPECT_EQ(router->prenorm_gamma.sizes(), (at::IntArrayRef{16}));

  auto hier = Checkpoint::Open(testing::GoldenPath("F_hier_eval"));
  ASSERT_TRUE(hier.ok()) << hier.status();
  const LayerSpec& layer = (*hier)->spec().layers[0];
  EXPECT_TRUE(layer.config.hierarchical());
  auto gates = LoadRouterWeights(**hier, 0);
  ASSERT_TRUE(gates.ok());
  EXPECT_EQ(gates->gate.sizes(), (at::IntArrayRef{2, 16}));
  EXPECT_EQ(gates->inner_gate.sizes(), (at::IntArrayRef{2, 2, 16}));
  auto experts = LoadAllExperts(**hier);
  ASSERT_TRUE(experts.ok());
  EXPECT_EQ((*experts)[0].size(), 4u);
  EXPECT_EQ(ExpertParamPrefix(layer, 3), "experts.1.experts.1.");
  EXPECT_EQ(ExpertParamPrefix(layer, FlatExpertId(1, 0, 2)),
            "experts.1.experts.0.");
}

// A small model of every layer kind, dim 8.
ModelSpec ToyModel(std::vector<LayerWeights>* weights, uint64_t seed = 5) {
  ModelSpec spec;
  spec.name = "toy";
  spec.dim = 8;
  const LayerKind kinds[] = {LayerKind::kMoe, LayerKind::kSparseMoeBlock,
                             LayerKind::kHierarchicalMoe};
  for (int i = 0; i < 3; ++i) {
    LayerConfig config = DefaultDemoConfig();
    config.kind = kinds[i];
    config.dim = 8;
    config.num_experts = 3;
    if (kinds[i] == LayerKind::kHierarchicalMoe) config.num_experts_inner = 2;
    spec.layers.push_back({"blocks." + std::to_string(i) + ".ff", config});
    weights->push_back(*BuildDemoLayer(config, seed + i));
  }
  return spec;
}

TEST(CheckpointTest, WholeModelRoundTripsEveryLayerKind) {
  std::vector<LayerWeights> weights;
  const ModelSpec spec = ToyModel(&weights);
  const std::string path = testing::TempDir() + "/toy.safetensors";
  ASSERT_TRUE(WriteLayerWeights(path, spec, weights).ok());
  auto ckpt = Checkpoint::Open(path);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  ASSERT_EQ((*ckpt)->spec().layers.size(), 3u);
  EXPECT_EQ((*ckpt)->spec().name, "toy");
  EXPECT_EQ((*ckpt)->layer_params(1).ff_after, "blocks.1.ff.ff_after.");
  EXPECT_EQ((*ckpt)->layer_params(0).gate, "blocks.0.ff.gate.to_gates.weight");
  EXPECT_EQ((*ckpt)->layer_params(2).inner_gate,
            "blocks.2.ff.gate_inner.w_gating");
  for (int l = 0; l < 3; ++l) {
    auto router = LoadRouterWeights(**ckpt, l);
    ASSERT_TRUE(router.ok()) << router.status();
    EXPECT_TRUE(at::equal(router->gate, weights[l].router.gate));
    auto expert = LoadExpertWeights(**ckpt, {l, 1});
    ASSERT_TRUE(expert.ok()) << expert.status();
    EXPECT_TRUE(at::equal(expert->w1, weights[l].experts.at(1).w1));
  }
  EXPECT_EQ(*(*ckpt)->spec().FindLayer("blocks.2.ff"), 2);
  auto unknown = (*ckpt)->spec().FindLayer("blocks.9.ff");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(unknown.status().message().find("\"blocks.0.ff\""),
            std::string::npos);
  EXPECT_EQ((*ckpt)->spec().FindLayer("").status().code(),
            absl::StatusCode::kInvalidArgument);
  // The same seed gives the same weights.
  std::vector<LayerWeights> again;
  ToyModel(&again);
  EXPECT_TRUE(
      at::equal(again[2].experts.at(2).w2, weights[2].experts.at(2).w2));
}

TEST(CheckpointTest, WriterRefusesAnIncompleteModelNamingTheTensor) {
  std::vector<LayerWeights> weights;
  const ModelSpec spec = ToyModel(&weights);
  weights[1].experts.erase(2);
  const std::string path = testing::TempDir() + "/incomplete.safetensors";
  absl::Status s = WriteLayerWeights(path, spec, weights);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("layer \"blocks.1.ff\" expert 2 is missing"),
            std::string::npos)
      << s;
  EXPECT_FALSE(std::ifstream(path).good());
}

TEST(CheckpointTest, LayersThatDisagreeOnDimAreRefused) {
  auto spec = ParseModelSpec(
      R"({"dim": 16, "layers": [{"name": "a", "num_experts": 4},
          {"name": "b", "num_experts": 4, "dim": 8}]})",
      "m");
  ASSERT_FALSE(spec.ok());
  EXPECT_NE(spec.status().message().find(
                "layer \"b\" has dim 8 but the model dim is 16"),
            std::string::npos)
      << spec.status();
  EXPECT_FALSE(ParseModelSpec(
                   R"({"dim": 16, "layers": [{"name": "a", "num_experts": 4},
                       {"name": "a", "num_experts": 4}]})",
                   "m")
                   .ok());
  EXPECT_FALSE(
      ParseModelSpec(
          R"({"dim": 16, "layers": [{"name": "a:b", "num_experts": 4}]})", "m")
          .ok());
}

TEST(CheckpointTest, FingerprintIsTheContentHash) {
  // A file without stored digests is hashed on open, the same way each time.
  auto a = Checkpoint::Open(testing::GoldenPath(kMoe));
  auto b = Checkpoint::Open(testing::GoldenPath(kMoe));
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_FALSE((*a)->fingerprint_stored());
  EXPECT_EQ((*a)->fingerprint().rfind("sha256:", 0), 0u);
  EXPECT_EQ((*a)->fingerprint().size(), 7u + 64u);
  EXPECT_EQ((*a)->fingerprint(), (*b)->fingerprint());
  // Test vectors are not part of the model.
  const std::string stripped =
      RewriteGolden(kMoe, "stripped.safetensors",
                    [](std::string* name, HostTensor*, SafetensorsWriter*) {
                      return name->rfind("expected.", 0) != 0;
                    });
  EXPECT_EQ(Checkpoint::Open(stripped).value()->fingerprint(),
            (*a)->fingerprint());
  // Other weights of the same shapes: another model.
  auto other = Checkpoint::Open(testing::GoldenPath("B1_moe_eval_drop_mincap"));
  ASSERT_TRUE(other.ok());
  EXPECT_NE((*other)->fingerprint(), (*a)->fingerprint());
  // The writer stores digests and fingerprint; the reader checks them.
  std::vector<LayerWeights> weights;
  const ModelSpec spec = ToyModel(&weights);
  const std::string path = testing::TempDir() + "/stored.safetensors";
  ASSERT_TRUE(WriteLayerWeights(path, spec, weights).ok());
  auto stored = Checkpoint::Open(path);
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_TRUE((*stored)->fingerprint_stored());
  std::vector<LayerWeights> reseeded;
  const ModelSpec same_shapes = ToyModel(&reseeded, 99);
  const std::string path2 = testing::TempDir() + "/reseeded.safetensors";
  ASSERT_TRUE(WriteLayerWeights(path2, same_shapes, reseeded).ok());
  EXPECT_NE(Checkpoint::Open(path2).value()->fingerprint(),
            (*stored)->fingerprint());
}

TEST(CheckpointTest, ModifiedBytesAndFingerprintsAreCaught) {
  std::vector<LayerWeights> weights;
  const ModelSpec spec = ToyModel(&weights);
  const std::string path = testing::TempDir() + "/tamper.safetensors";
  ASSERT_TRUE(WriteLayerWeights(path, spec, weights).ok());
  // Flip one byte of the last tensor's data (the file's last byte).
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  bytes.back() ^= 0x01;
  const std::string flipped = testing::TempDir() + "/flipped.safetensors";
  std::ofstream(flipped, std::ios::binary) << bytes;
  auto ckpt = Checkpoint::Open(flipped);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();  // digests are checked on read
  // The last tensor in the file is blocks.2.ff.gate_outer.w_gating: only
  // the load that reads it fails.
  auto check = [](const absl::Status& s) {
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
    EXPECT_NE(s.message().find("\"blocks.2.ff.gate_outer.w_gating\" does "
                               "not match its SHA-256"),
              std::string::npos)
        << s;
  };
  int failures = 0;
  for (int l = 0; l < 3; ++l) {
    absl::Status router = LoadRouterWeights(**ckpt, l).status();
    if (!router.ok()) {
      check(router);
      ++failures;
    }
    for (int64_t e = 0; e < spec.layers[l].config.total_experts(); ++e) {
      EXPECT_TRUE(LoadExpertWeights(**ckpt, {l, e}).ok());
    }
  }
  EXPECT_EQ(failures, 1);
  // A stored fingerprint that disagrees with the digests.
  const std::string forged = RewriteGolden(
      kMoe, "forged.safetensors",
      [](std::string*, HostTensor*, SafetensorsWriter* w) {
        w->SetMetadata("fingerprint", "sha256:" + std::string(64, '0'));
        return true;
      });
  EXPECT_NE(OpenStatus(forged).message().find("was modified after export"),
            std::string::npos);
}

}  // namespace
}  // namespace moe::common
