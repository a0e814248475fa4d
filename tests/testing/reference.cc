#include "testing/reference.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <utility>
#include <vector>

#include "common/checkpoint.h"
#include "proto/tensor_codec.h"

namespace moe::testing {

struct Reference::LosingBackend : router::ExpertBackend {
  explicit LosingBackend(const experts::ExpertShard* s) : shard(s) {}
  absl::Status RunExperts(const at::Tensor& tokens,
                          absl::Span<const experts::ExpertSegment> segments,
                          at::Tensor* out,
                          std::vector<int64_t>* unavailable) override {
    absl::Status s = shard->Run(tokens, segments, out);
    int64_t offset = 0;
    for (const auto& seg : segments) {
      if (lost.count(seg.expert_id)) {
        out->narrow(0, offset, seg.count).zero_();
        unavailable->push_back(seg.expert_id);
      }
      offset += seg.count;
    }
    return s;
  }
  const experts::ExpertShard* shard;
  std::set<int64_t> lost;
};

Reference::Reference(const std::string& path) {
  auto ckpt = common::LoadCheckpoint(path);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  shard_ = std::move(experts::ExpertShard::Create(ckpt->experts).value());
  backend_ = std::make_unique<LosingBackend>(shard_.get());
  engine_ = std::move(
      router::MoeEngine::Create(ckpt->config, ckpt->router, backend_.get())
          .value());
}

Reference::~Reference() = default;

router::ForwardResult Reference::Forward(const at::Tensor& x,
                                         const router::RoutingOptions& o,
                                         std::set<int64_t> lost) {
  backend_->lost = std::move(lost);
  auto r = engine_->Forward(x, o);
  EXPECT_TRUE(r.ok()) << r.status();
  return std::move(*r);
}

moe::v1::ForwardRequest Request(const at::Tensor& x,
                                const moe::v1::RoutingOptions& options) {
  moe::v1::ForwardRequest request;
  EXPECT_TRUE(
      proto::EncodeTensor(x, moe::v1::FLOAT32, request.mutable_x()).ok());
  *request.mutable_options() = options;
  return request;
}

at::Tensor Y(const moe::v1::ForwardResponse& response) {
  auto y = proto::DecodeTensor(response.y(), "y", 1 << 30);
  EXPECT_TRUE(y.ok()) << y.status();
  return y.ok() ? *y : at::Tensor();
}

}  // namespace moe::testing
