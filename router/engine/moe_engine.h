// MoeEngine: one forward of an ST-MoE layer (DESIGN.md section 3), for every
// model kind: plain MoE, SparseMoEBlock and the two-level MoE. It runs the
// norms, feed-forwards and gates itself and sends expert work to an
// ExpertBackend, so the in-process path and the distributed path share the
// same numerics.
//
// Example:
//   MOE_ASSIGN_OR_RETURN(Checkpoint ckpt, LoadCheckpoint(path));
//   MOE_ASSIGN_OR_RETURN(auto shard, ExpertShard::Create(ckpt.experts));
//   LocalExpertBackend backend(shard.get());
//   MOE_ASSIGN_OR_RETURN(auto engine,
//       MoeEngine::Create(ckpt.config, ckpt.router, &backend));
//   MOE_ASSIGN_OR_RETURN(ForwardResult r, engine->Forward(x, options));
//
// Thread-safety: Forward() may be called concurrently.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "common/model_config.h"
#include "common/model_weights.h"
#include "router/dispatch_plan.h"
#include "router/engine/expert_backend.h"
#include "router/losses.h"
#include "router/routing_options.h"
#include "router/routing_trace.h"
#include "router/top2_gating.h"

namespace moe::router {

// Wall time of the stages of one forward, in microseconds.
struct ForwardTimings {
  int64_t pre_us = 0;      // validation, feed-forward before, norm
  int64_t gate_us = 0;     // logits, softmax, top-2, capacity (both levels)
  int64_t plan_us = 0;     // dispatch plan and gather
  int64_t experts_us = 0;  // the backend
  int64_t combine_us = 0;  // scatter-add, residual, feed-forward after
  int64_t total_us = 0;
};

struct ForwardResult {
  at::Tensor y;  // [B, n, d] float32
  AuxLosses losses;
  // The routing of a single-level MoE, or the outer level of a two-level one,
  // with its logits and probabilities [B * n, E].
  RoutingResult routing;
  at::Tensor logits, probs;
  // Two-level MoE only: the inner routing over the outer slots (groups
  // ordered [Eo, B], group size C_o), its logits and probabilities
  // [Eo * B * C_o, Ei], the input row in each slot (-1 when empty) and the
  // slot importance.
  bool has_inner = false;
  RoutingResult inner_routing;
  at::Tensor inner_logits, inner_probs;
  std::vector<int64_t> slot_row;
  std::vector<float> slot_importance;
  // Final assignments per expert (ids o * Ei + i for a two-level MoE).
  DispatchPlan plan;
  // Experts the backend could not run (their assignments contributed
  // nothing) and how many plan entries they had.
  std::vector<int64_t> unavailable_experts;
  int64_t unavailable_assignments = 0;
  ForwardTimings timings;
};

class MoeEngine {
 public:
  // `backend` (the default for Forward(); may be null when every call uses
  // ForwardWith()) must outlive the engine. InvalidArgument if the weights do
  // not match the config.
  static absl::StatusOr<std::unique_ptr<MoeEngine>> Create(
      const common::ModelConfig& config, common::RouterWeights router,
      ExpertBackend* backend);

  const common::ModelConfig& config() const { return config_; }

  // x: [B, n, d] float32, float16 or bfloat16 (computed in float32), finite.
  // InvalidArgument naming the field for a bad input or option; Internal for
  // a LibTorch failure; the backend's status if it fails.
  absl::StatusOr<ForwardResult> Forward(const at::Tensor& x,
                                        const RoutingOptions& options) const;

  // The same with another backend for this call (the router service passes
  // one that carries the request's deadline and cancellation).
  absl::StatusOr<ForwardResult> ForwardWith(const at::Tensor& x,
                                            const RoutingOptions& options,
                                            ExpertBackend& backend) const;

  // The checks Forward() applies to its input, for callers that validate
  // before queueing.
  absl::Status ValidateInput(const at::Tensor& x) const;

 private:
  MoeEngine(const common::ModelConfig& config, common::RouterWeights router,
            ExpertBackend* backend);
  absl::StatusOr<ForwardResult> ForwardImpl(const at::Tensor& x,
                                            const RoutingOptions& options,
                                            ExpertBackend& backend) const;

  common::ModelConfig config_;
  common::RouterWeights router_;
  ExpertBackend* backend_;
};

// All routing tensors of a forward (`trace.*`, or `trace.outer.*`,
// `trace.inner.*`, `trace.outer.slot_token` and `trace.inner.importance` for
// a two-level MoE), in the golden files' layouts, plus the gate logits and
// probabilities (`gate_logits`, `raw_gates`). May throw c10::Error.
NamedTensors ForwardTrace(const ForwardResult& result, int64_t batch,
                          int64_t seq);

}  // namespace moe::router
