#include "router/engine/moe_engine.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/InferenceMode.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/host_tensor.h"
#include "common/status_macros.h"
#include "common/torch_convert.h"
#include "experts/feed_forward.h"
#include "experts/rms_norm.h"

namespace moe::router {
namespace {

using Clock = std::chrono::steady_clock;

int64_t MicrosSince(Clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() -
                                                               start)
      .count();
}

std::vector<int64_t> Sizes(const at::Tensor& t) {
  return std::vector<int64_t>(t.sizes().begin(), t.sizes().end());
}

// One pass, no temporaries: a float is finite unless its exponent bits are
// all ones (Inf, NaN).
bool AllFinite(const float* data, int64_t n) {
  uint32_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, data + i, sizeof(bits));
    bad |= static_cast<uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
  }
  return bad == 0;
}

absl::Span<const float> FloatSpan(const at::Tensor& t) {
  return absl::Span<const float>(t.data_ptr<float>(), t.numel());
}

at::Tensor LongTensor(const std::vector<int64_t>& values) {
  at::Tensor t = at::empty({static_cast<int64_t>(values.size())}, at::kLong);
  if (!values.empty()) {
    std::memcpy(t.data_ptr<int64_t>(), values.data(),
                values.size() * sizeof(int64_t));
  }
  return t;
}

absl::Status CheckShape(const at::Tensor& t, std::vector<int64_t> expected,
                        const char* what) {
  if (!t.defined() || Sizes(t) != expected) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " has shape ",
                     t.defined() ? common::ShapeToString(Sizes(t)) : "(none)",
                     ", expected ", common::ShapeToString(expected)));
  }
  return absl::OkStatus();
}

absl::Status CheckGeglu(const common::ExpertWeights& w, int64_t d, int64_t h,
                        const char* what) {
  MOE_RETURN_IF_ERROR(CheckShape(w.w1, {2 * h, d}, what));
  MOE_RETURN_IF_ERROR(CheckShape(w.b1, {2 * h}, what));
  MOE_RETURN_IF_ERROR(CheckShape(w.mult_bias, {h}, what));
  MOE_RETURN_IF_ERROR(CheckShape(w.w2, {d, h}, what));
  return CheckShape(w.b2, {d}, what);
}

// The first-level uniforms as a [B * n] vector: from the request, or drawn.
absl::StatusOr<std::vector<float>> FirstLevelUniforms(const RoutingOptions& o,
                                                      int64_t batch,
                                                      int64_t seq,
                                                      at::Generator& gen) {
  at::Tensor u;
  if (o.second_choice_uniforms.defined()) {
    u = o.second_choice_uniforms;
    const std::vector<int64_t> sizes = Sizes(u);
    if (sizes.size() == 3 && sizes[0] == 2) u = u.select(0, 1);
    if (Sizes(u) != std::vector<int64_t>{batch, seq}) {
      return absl::InvalidArgumentError(absl::StrCat(
          "second_choice_uniforms: shape ", common::ShapeToString(sizes),
          " does not match the input; expected [", batch, ", ", seq,
          "] or [2, ", batch, ", ", seq, "]"));
    }
    if (!at::isFloatingType(u.scalar_type())) {
      return absl::InvalidArgumentError(
          "second_choice_uniforms: must be a floating-point tensor");
    }
    u = u.to(at::kFloat).contiguous();
    const bool in_range =
        at::logical_and(u >= 0.0f, u <= 1.0f).all().item<bool>();
    if (!in_range) {
      return absl::InvalidArgumentError(
          "second_choice_uniforms: values must be finite and in [0, 1]");
    }
  } else {
    u = at::rand({batch, seq}, gen);
  }
  return std::vector<float>(u.data_ptr<float>(),
                            u.data_ptr<float>() + u.numel());
}

}  // namespace

MoeEngine::MoeEngine(const common::ModelConfig& config,
                     common::RouterWeights router, ExpertBackend* backend)
    : config_(config), router_(std::move(router)), backend_(backend) {}

absl::StatusOr<std::unique_ptr<MoeEngine>> MoeEngine::Create(
    const common::ModelConfig& config, common::RouterWeights router,
    ExpertBackend* backend) {
  MOE_RETURN_IF_ERROR(common::ValidateModelConfig(config));
  const int64_t d = config.dim;
  MOE_RETURN_IF_ERROR(
      CheckShape(router.gate, {config.num_experts, d}, "gate weight"));
  if (config.hierarchical()) {
    MOE_RETURN_IF_ERROR(CheckShape(
        router.inner_gate, {config.num_experts, config.num_experts_inner, d},
        "inner gate weight"));
  }
  if (config.is_block()) {
    MOE_RETURN_IF_ERROR(
        CheckShape(router.prenorm_gamma, {d}, "moe_prenorm.gamma"));
    for (const auto* ff : {&router.ff_before, &router.ff_after}) {
      if (!ff->has_value()) continue;
      MOE_RETURN_IF_ERROR(CheckShape((*ff)->gamma, {d}, "feed-forward gamma"));
      MOE_RETURN_IF_ERROR(CheckGeglu((*ff)->geglu, d,
                                     config.feed_forward_hidden(),
                                     "feed-forward weight"));
    }
  }
  return std::unique_ptr<MoeEngine>(
      new MoeEngine(config, std::move(router), backend));
}

absl::Status MoeEngine::ValidateInput(const at::Tensor& x) const {
  if (!x.defined()) return absl::InvalidArgumentError("x: missing");
  if (x.dim() != 3) {
    return absl::InvalidArgumentError(
        absl::StrCat("x: must have rank 3 [batch, tokens, dim], got shape ",
                     common::ShapeToString(Sizes(x))));
  }
  if (x.size(2) != config_.dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("x: last dimension is ", x.size(2),
                     " but the model dim is ", config_.dim));
  }
  if (x.size(0) < 1 || x.size(1) < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("x: batch and tokens must be at least 1, got shape ",
                     common::ShapeToString(Sizes(x))));
  }
  const at::ScalarType t = x.scalar_type();
  if (t != at::kFloat && t != at::kHalf && t != at::kBFloat16) {
    return absl::InvalidArgumentError(
        absl::StrCat("x: dtype ", c10::toString(t),
                     " is not supported (float32, float16, bfloat16)"));
  }
  bool finite = false;
  MOE_RETURN_IF_ERROR(common::TorchCall("x: finite check", [&] {
    finite = t == at::kFloat && x.is_contiguous()
                 ? AllFinite(x.data_ptr<float>(), x.numel())
                 : at::isfinite(x).all().item<bool>();
  }));
  if (!finite) {
    return absl::InvalidArgumentError("x: contains NaN or Inf values");
  }
  return absl::OkStatus();
}

absl::StatusOr<ForwardResult> MoeEngine::Forward(
    const at::Tensor& x, const RoutingOptions& options) const {
  if (backend_ == nullptr) {
    return absl::FailedPreconditionError(
        "MoeEngine: no default expert backend; use ForwardWith()");
  }
  return ForwardWith(x, options, *backend_);
}

absl::StatusOr<ForwardResult> MoeEngine::ForwardWith(
    const at::Tensor& x, const RoutingOptions& options,
    ExpertBackend& backend) const {
  try {
    return ForwardImpl(x, options, backend);
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat("forward: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("forward: ", e.what()));
  }
}

absl::StatusOr<ForwardResult> MoeEngine::ForwardImpl(
    const at::Tensor& x_in, const RoutingOptions& o,
    ExpertBackend& backend) const {
  const Clock::time_point start = Clock::now();
  c10::InferenceMode inference_mode;
  MOE_RETURN_IF_ERROR(ValidateInput(x_in));

  GateParams params;
  params.num_experts = config_.num_experts;
  params.policy = o.policy;
  const bool train = o.mode == Mode::kTrain;
  params.threshold = static_cast<float>(train ? config_.threshold_train
                                              : config_.threshold_eval);
  params.capacity_factor =
      train ? config_.capacity_factor_train : config_.capacity_factor_eval;
  if (o.threshold.has_value()) {
    if (!std::isfinite(*o.threshold) || *o.threshold < 0) {
      return absl::InvalidArgumentError("threshold: must be finite and >= 0");
    }
    params.threshold = *o.threshold;
  }
  if (o.capacity_factor.has_value()) {
    if (!std::isfinite(*o.capacity_factor) || *o.capacity_factor <= 0) {
      return absl::InvalidArgumentError(
          "capacity_factor: must be finite and > 0");
    }
    params.capacity_factor = *o.capacity_factor;
  }
  const bool random = o.policy == SecondExpertPolicy::kRandom;
  if (o.second_choice_uniforms.defined() && !random) {
    return absl::InvalidArgumentError(absl::StrCat(
        "second_choice_uniforms: given, but the policy is ",
        PolicyName(o.policy), "; they apply to the random policy only"));
  }

  const int64_t batch = x_in.size(0), seq = x_in.size(1), d = config_.dim;
  const int64_t tokens = batch * seq;
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(
      o.seed.has_value() ? *o.seed : std::random_device{}());

  ForwardResult r;
  at::Tensor x = x_in.to(at::kFloat).contiguous();
  at::Tensor x1 = x;
  if (config_.is_block() && router_.ff_before.has_value()) {
    x1 = x + experts::FeedForward(*router_.ff_before, x);
  }
  at::Tensor h =
      config_.is_block() ? experts::RmsNorm(x1, router_.prenorm_gamma) : x1;
  at::Tensor h2 = h.reshape({tokens, d}).contiguous();
  Clock::time_point mark = Clock::now();
  r.timings.pre_us = MicrosSince(start);

  // Gate (outer gate of a two-level MoE).
  r.logits = at::matmul(h2, router_.gate.t()).contiguous();
  r.probs = at::softmax(r.logits, -1).contiguous();
  std::vector<float> uniforms;
  if (random) {
    MOE_ASSIGN_OR_RETURN(uniforms, FirstLevelUniforms(o, batch, seq, gen));
  }
  MOE_ASSIGN_OR_RETURN(r.routing, RouteTop2(FloatSpan(r.probs), batch, seq,
                                            params, {}, uniforms));
  r.losses.balance_loss = BalanceLoss(FloatSpan(r.probs), r.routing, {});
  r.losses.router_z_loss =
      RouterZLoss(FloatSpan(r.logits), config_.num_experts, {});

  if (!config_.hierarchical()) {
    r.timings.gate_us = MicrosSince(mark);
    mark = Clock::now();
    r.plan = BuildDispatchPlan(r.routing);
  } else {
    // Outer slots [Eo, B, C_o]: the row each holds, its weight, importance.
    const int64_t eo = config_.num_experts, ei = config_.num_experts_inner;
    const int64_t co = r.routing.capacity;
    const int64_t slots = eo * batch * co;
    r.has_inner = true;
    r.slot_row.assign(slots, -1);
    r.slot_importance.assign(slots, 0.0f);
    std::vector<float> slot_weight(slots, 0.0f);
    std::vector<std::vector<int64_t>> rows_of(eo), slots_of(eo);
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t t = 0; t < seq; ++t) {
        for (int k = 0; k < 2; ++k) {
          const int64_t i = r.routing.Index(b, t, k);
          const float w = r.routing.CombineWeight(i);
          if (w == 0.0f) continue;
          const int64_t outer = r.routing.expert[i];
          const int64_t s = (outer * batch + b) * co + r.routing.position[i];
          r.slot_row[s] = b * seq + t;
          slot_weight[s] = w;
          r.slot_importance[s] = 0.5f * ((w > 0.5f ? 1.0f : 0.0f) + 1.0f);
        }
      }
    }
    for (int64_t s = 0; s < slots; ++s) {
      if (r.slot_row[s] < 0) continue;
      rows_of[s / (batch * co)].push_back(r.slot_row[s]);
      slots_of[s / (batch * co)].push_back(s);
    }
    // Inner logits: zero for empty slots, as the reference's zero vectors.
    r.inner_logits = at::zeros({slots, ei}, at::kFloat);
    for (int64_t outer = 0; outer < eo; ++outer) {
      if (rows_of[outer].empty()) continue;
      at::Tensor xs = h2.index_select(0, LongTensor(rows_of[outer]));
      r.inner_logits.index_copy_(0, LongTensor(slots_of[outer]),
                                 at::matmul(xs, router_.inner_gate[outer].t()));
    }
    r.inner_probs = at::softmax(r.inner_logits, -1).contiguous();
    std::vector<float> inner_uniforms;
    if (random) {
      at::Tensor u = at::rand({eo, batch, co}, gen);
      inner_uniforms.assign(u.data_ptr<float>(),
                            u.data_ptr<float>() + u.numel());
    }
    GateParams inner_params = params;
    inner_params.num_experts = ei;
    MOE_ASSIGN_OR_RETURN(
        r.inner_routing,
        RouteTop2(FloatSpan(r.inner_probs), eo * batch, co, inner_params,
                  r.slot_importance, inner_uniforms));
    r.losses.balance_loss += BalanceLoss(FloatSpan(r.inner_probs),
                                         r.inner_routing, r.slot_importance);
    r.losses.router_z_loss +=
        RouterZLoss(FloatSpan(r.inner_logits), ei, r.slot_importance);
    r.timings.gate_us = MicrosSince(mark);
    mark = Clock::now();
    r.plan = BuildInnerDispatchPlan(r.inner_routing, batch, eo, r.slot_row,
                                    slot_weight);
  }
  WeighLosses(config_.balance_loss_coef, config_.router_z_loss_coef, &r.losses);

  // Dispatch: gather the kept rows, expert by expert; the backend runs them
  // and combines: y[t] += G · Expert(x[t]) for every kept choice.
  std::vector<experts::ExpertSegment> segments;
  for (int64_t e = 0; e < r.plan.num_experts; ++e) {
    if (r.plan.count(e) > 0) segments.push_back({e, r.plan.count(e)});
  }
  at::Tensor y2 = at::zeros({tokens, d}, at::kFloat);
  int64_t fused_combine_us = 0;
  if (r.plan.size() > 0) {
    // Gathered into a block of a power of two rows, so that forwards whose
    // kept counts differ reuse freed blocks instead of fragmenting the heap.
    int64_t capacity = 1;
    while (capacity < r.plan.size()) capacity *= 2;
    at::Tensor gathered =
        at::empty({capacity, d}, h2.options()).narrow(0, 0, r.plan.size());
    at::index_select_out(gathered, h2, 0, LongTensor(r.plan.row));
    r.timings.plan_us = MicrosSince(mark);
    mark = Clock::now();
    MOE_RETURN_IF_ERROR(backend.RunAndCombine(
        gathered, segments, {r.plan.row, r.plan.weight, &y2},
        &r.unavailable_experts, &fused_combine_us));
    for (int64_t e : r.unavailable_experts) {
      if (e >= 0 && e < r.plan.num_experts) {
        r.unavailable_assignments += r.plan.count(e);
      }
    }
    r.timings.experts_us = MicrosSince(mark) - fused_combine_us;
  } else {
    r.timings.plan_us = MicrosSince(mark);
  }
  mark = Clock::now();
  at::Tensor y = y2.view({batch, seq, d});
  if (config_.is_block()) {
    y = x1 + y;
    if (router_.ff_after.has_value()) {
      y = y + experts::FeedForward(*router_.ff_after, y);
    }
  }
  r.y = y;
  r.timings.combine_us = fused_combine_us + MicrosSince(mark);
  r.timings.total_us = MicrosSince(start);
  return r;
}

NamedTensors ForwardTrace(const ForwardResult& r, int64_t batch, int64_t seq) {
  NamedTensors out;
  const std::string outer = r.has_inner ? "trace.outer." : "trace.";
  AppendRoutingTrace(r.routing, {batch}, outer, &out);
  out.emplace_back(outer + "gate_logits",
                   r.logits.view({batch, seq, r.logits.size(1)}));
  out.emplace_back(outer + "raw_gates",
                   r.probs.view({batch, seq, r.probs.size(1)}));
  if (r.has_inner) {
    const int64_t eo = r.routing.num_experts, co = r.routing.capacity;
    AppendRoutingTrace(r.inner_routing, {eo, batch}, "trace.inner.", &out);
    at::Tensor slot_token = at::empty({eo, batch, co}, at::kLong);
    at::Tensor importance = at::empty({eo, batch, co}, at::kFloat);
    for (int64_t s = 0; s < eo * batch * co; ++s) {
      const int64_t row = r.slot_row[s];
      slot_token.data_ptr<int64_t>()[s] = row < 0 ? -1 : row % seq;
      importance.data_ptr<float>()[s] = r.slot_importance[s];
    }
    out.emplace_back("trace.outer.slot_token", slot_token);
    out.emplace_back("trace.inner.importance", importance);
    const int64_t ei = r.inner_routing.num_experts;
    out.emplace_back("trace.inner.gate_logits",
                     r.inner_logits.view({eo, batch, co, ei}));
    out.emplace_back("trace.inner.raw_gates",
                     r.inner_probs.view({eo, batch, co, ei}));
  }
  return out;
}

}  // namespace moe::router
