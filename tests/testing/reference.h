// The in-process engine of a checkpoint, to compare the distributed path
// with, plus request/response helpers shared by the integration tests.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <set>
#include <string>

#include "experts/expert_shard.h"
#include "moe/v1/router.pb.h"
#include "router/engine/moe_engine.h"

namespace moe::testing {

// The engine over all experts of `path`, optionally losing some (as the
// router does under --on_expert_failure=drop).
class Reference {
 public:
  explicit Reference(const std::string& path);
  ~Reference();
  router::ForwardResult Forward(const at::Tensor& x,
                                const router::RoutingOptions& o,
                                std::set<int64_t> lost = {});

 private:
  struct LosingBackend;
  std::unique_ptr<experts::ExpertShard> shard_;
  std::unique_ptr<LosingBackend> backend_;
  std::unique_ptr<router::MoeEngine> engine_;
};

// A ForwardRequest for x (float32 on the wire) with `options`.
moe::v1::ForwardRequest Request(const at::Tensor& x,
                                const moe::v1::RoutingOptions& options);

// The response's y, decoded.
at::Tensor Y(const moe::v1::ForwardResponse& response);

}  // namespace moe::testing
