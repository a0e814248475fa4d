#include "testing/reference.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <map>
#include <utility>
#include <vector>

#include "common/checkpoint.h"
#include "common/torch/checkpoint_weights.h"
#include "common/torch/torch_convert.h"
#include "experts/cpu_expert_shard.h"
#include "proto/tensor_codec.h"
#include "router/api/wire_tensors.h"
#include "router/combine.h"

namespace moe::testing {

// Runs the experts here, leaving out those in `lost` (reported as lost).
class Reference::LosingBackend : public router::ExpertBackend {
 public:
  explicit LosingBackend(const experts::ExpertShard* s) : shard_(s) {}
  absl::Status Run(const router::ExpertWork& work,
                   router::BackendReport* report) override {
    std::vector<common::ExpertSegment> kept;
    for (const common::ExpertSegment& s : work.segments) {
      if (lost.count(s.key.expert)) {
        report->lost.push_back({s.key, router::DropReason::kExpertUnavailable,
                                "lost in the test"});
      } else {
        kept.push_back(s);
      }
    }
    std::vector<float> out(static_cast<size_t>(work.rows * work.dim));
    absl::Status status = shard_->Run(
        {common::DType::kFloat32, work.tokens, work.rows}, kept, out.data());
    if (!status.ok()) return status;
    for (const common::ExpertSegment& s : kept) {
      router::CombineRows(out.data() + s.offset * work.dim, s.count,
                          work.targets.data() + s.offset,
                          work.weights.data() + s.offset, work.dim, work.y,
                          work.y_written);
    }
    return absl::OkStatus();
  }
  std::set<int64_t> lost;

 private:
  const experts::ExpertShard* shard_;
};

Reference::Reference(const std::string& path) {
  auto ckpt = common::Checkpoint::Open(path);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  auto experts = common::LoadAllExperts(**ckpt);
  EXPECT_TRUE(experts.ok()) << experts.status();
  std::map<common::ExpertKey, common::ExpertWeights> all;
  for (size_t l = 0; l < experts->size(); ++l) {
    for (auto& [id, w] : (*experts)[l]) {
      all[{static_cast<int32_t>(l), id}] = std::move(w);
    }
  }
  shard_ = std::move(experts::CpuExpertShard::Create(std::move(all)).value());
  backend_ = std::make_unique<LosingBackend>(shard_.get());
  model_ = std::move(router::ModelEngine::Load(**ckpt).value());
}

Reference::~Reference() = default;

router::ForwardResult Reference::Forward(const at::Tensor& x,
                                         const router::RoutingOptions& o,
                                         std::set<int64_t> lost,
                                         const std::string& layer) {
  backend_->lost = std::move(lost);
  auto engine = model_->FindLayer(layer);
  EXPECT_TRUE(engine.ok()) << engine.status();
  auto r = (*engine)->Forward(x, o, *backend_);
  EXPECT_TRUE(r.ok()) << r.status();
  return std::move(*r);
}

moe::v1::Tensor WireTensor(const at::Tensor& t) {
  moe::v1::Tensor wire;
  const at::Tensor src = t.scalar_type() == at::kDouble ? t.to(at::kFloat) : t;
  auto dtype = common::FromScalarType(src.scalar_type());
  EXPECT_TRUE(dtype.ok()) << dtype.status();
  EXPECT_TRUE(router::EncodeWireTensor(src, *dtype, &wire).ok());
  return wire;
}

moe::v1::ForwardRequest Request(const at::Tensor& x,
                                const moe::v1::RoutingOptions& options,
                                const std::string& layer) {
  moe::v1::ForwardRequest request;
  EXPECT_TRUE(router::EncodeWireTensor(x.to(at::kFloat),
                                       common::DType::kFloat32,
                                       request.mutable_x())
                  .ok());
  *request.mutable_options() = options;
  request.set_layer(layer);
  return request;
}

at::Tensor FromWire(const moe::v1::Tensor& t) {
  auto checked = proto::CheckTensor(t, "tensor", int64_t{1} << 40);
  EXPECT_TRUE(checked.ok()) << checked.status();
  if (!checked.ok()) return at::Tensor();
  auto view = router::ViewWireTensor(t, *checked);
  EXPECT_TRUE(view.ok()) << view.status();
  return view.ok() ? view->clone() : at::Tensor();
}

at::Tensor Y(const moe::v1::ForwardResponse& response) {
  return FromWire(response.y());
}

}  // namespace moe::testing
