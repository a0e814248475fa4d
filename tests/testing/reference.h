// The in-process engine of a checkpoint, to compare the distributed path
// with, plus request/response helpers shared by the integration tests.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <set>
#include <string>

#include "experts/expert_shard.h"
#include "moe/v1/router.pb.h"
#include "router/engine/model_engine.h"
#include "router/routing_options.h"

namespace moe::testing {

// Every layer of `path`, every expert in this process, optionally losing
// some experts (as the router does under the drop policy).
class Reference {
 public:
  explicit Reference(const std::string& path);
  ~Reference();
  // The forward of `layer` ("" for the only one).
  router::ForwardResult Forward(const at::Tensor& x,
                                const router::RoutingOptions& o,
                                std::set<int64_t> lost = {},
                                const std::string& layer = "");
  const router::ModelEngine& model() const { return *model_; }

 private:
  class LosingBackend;
  std::unique_ptr<experts::ExpertShard> shard_;
  std::unique_ptr<LosingBackend> backend_;
  std::unique_ptr<router::ModelEngine> model_;
};

// A ForwardRequest for x (float32 on the wire) with `options`.
moe::v1::ForwardRequest Request(const at::Tensor& x,
                                const moe::v1::RoutingOptions& options,
                                const std::string& layer = "");

// An at::Tensor as a wire tensor (its own dtype; float64 as float32).
moe::v1::Tensor WireTensor(const at::Tensor& t);

// The response's y, decoded.
at::Tensor Y(const moe::v1::ForwardResponse& response);

// A wire tensor decoded into an at::Tensor (a copy).
at::Tensor FromWire(const moe::v1::Tensor& t);

}  // namespace moe::testing
