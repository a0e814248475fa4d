// LayerEngine: one forward of one ST-MoE layer (docs/architecture.md, "One
// forward"), for every layer kind: plain MoE, SparseMoEBlock and the
// two-level MoE. It runs the norms, feed-forwards and gates itself and sends
// expert work to an ExpertBackend, so the in-process path and the
// distributed path share the same numerics.
//
// Example:
//   MOE_ASSIGN_OR_RETURN(auto model, ModelEngine::Load(*checkpoint));
//   LocalExpertBackend backend(shard.get());
//   MOE_ASSIGN_OR_RETURN(ForwardResult r,
//                        model->layer(0).Forward(x, options, backend));
//
// Thread-safety: Forward() may be called concurrently.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/model_spec.h"
#include "common/torch/model_weights.h"
#include "router/dispatch_plan.h"
#include "router/engine/expert_backend.h"
#include "router/hierarchical.h"
#include "router/losses.h"
#include "router/routing_options.h"
#include "router/routing_trace.h"
#include "router/top2_gating.h"

namespace moe::router {

// Wall time of the stages of one forward.
struct ForwardTimings {
  absl::Duration pre;         // validation, feed-forward before, norm
  absl::Duration gate;        // logits, softmax, top-2, capacity (both levels)
  absl::Duration plan;        // dispatch plan and gather
  absl::Duration experts;     // the backend, less its combining
  absl::Duration combine;     // adding outputs into y, residual, ff after
  absl::Duration batch_wait;  // remote backend: a batch waiting to leave
  absl::Duration rpc_wait;    // remote backend: the workers
  absl::Duration total;
  // When each phase began (absl::Now), one after the other: `pre`, `gate`,
  // `plan` (the dispatch plan and gather), `experts` (the backend: the
  // experts' work and combining their outputs as they come), `post` (rows
  // nobody wrote, residual, feed-forward after); `end` when the forward was
  // done. The durations above are these phases' shares of the stages.
  struct Marks {
    absl::Time pre, gate, plan, experts, post, end;
  } marks;
};

struct ForwardResult {
  at::Tensor y;  // [B, n, d] float32
  AuxLosses losses;
  // The routing of a single-level MoE, or the outer level of a two-level
  // one, with its logits and probabilities [B * n, E].
  RoutingResult routing;
  at::Tensor logits, probs;
  // Two-level MoE only.
  std::optional<InnerLevel> inner;
  // Final assignments per expert (ids o * Ei + i for a two-level MoE).
  DispatchPlan plan;
  // Experts the backend could not run (their assignments contributed
  // nothing) and how many plan entries they had.
  std::vector<ExpertLoss> lost;
  int64_t lost_assignments = 0;
  ForwardTimings timings;
};

class LayerEngine {
 public:
  // The layer `index` of a model, described by `spec`. InvalidArgument if
  // the weights do not match the config.
  static absl::StatusOr<std::unique_ptr<LayerEngine>> Create(
      int32_t index, const common::LayerSpec& spec,
      common::RouterWeights weights);

  int32_t index() const { return index_; }
  const common::LayerSpec& spec() const { return spec_; }
  const common::LayerConfig& config() const { return spec_.config; }

  // x: [B, n, d] float32, float16 or bfloat16 (computed in float32), finite.
  // InvalidArgument naming the field for a bad input or option; Internal for
  // a LibTorch failure; the backend's status if it fails.
  absl::StatusOr<ForwardResult> Forward(const at::Tensor& x,
                                        const RoutingOptions& options,
                                        ExpertBackend& backend) const;

  // The one rule on an input's shape, for callers that check a request
  // before queueing it (router/api/forward_runner.h) and for Forward():
  // rank 3 [batch, tokens, dim] with the model's dim, batch and tokens at
  // least 1. InvalidArgument naming x.
  absl::Status ValidateInputShape(absl::Span<const int64_t> shape) const;
  // The checks Forward() applies to its input: its shape, a float dtype,
  // finite values.
  absl::Status ValidateInput(const at::Tensor& x) const;

 private:
  LayerEngine(int32_t index, common::LayerSpec spec,
              common::RouterWeights weights);
  absl::StatusOr<ForwardResult> ForwardImpl(const at::Tensor& x,
                                            const RoutingOptions& options,
                                            ExpertBackend& backend) const;
  GateParams GateParamsFor(const RoutingOptions& options) const;
  // Gate, top-2, capacity and losses of both levels, and the plan.
  absl::Status Route(const at::Tensor& h, int64_t batch, int64_t seq,
                     const RoutingOptions& options, ForwardResult* r) const;
  // Gathers the plan's rows of `h` and has `backend` run and combine them
  // into `y` ([B * n, d]).
  absl::Status RunExperts(const at::Tensor& h, ExpertBackend& backend,
                          at::Tensor& y, ForwardResult* r) const;

  const int32_t index_;
  const common::LayerSpec spec_;
  const common::RouterWeights weights_;
};

// All routing tensors of a forward (`trace.*`, or `trace.outer.*`,
// `trace.inner.*`, `trace.outer.slot_token` and `trace.inner.importance` for
// a two-level MoE), in the golden files' layouts, plus the gate logits and
// probabilities (`gate_logits`, `raw_gates`). May throw c10::Error.
NamedTensors ForwardTrace(const ForwardResult& result, int64_t batch,
                          int64_t seq);

}  // namespace moe::router
