#include "router/engine/layer_engine.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/host_tensor.h"
#include "common/status_macros.h"
#include "common/torch/torch_convert.h"
#include "experts/feed_forward.h"
#include "experts/rms_norm.h"

namespace moe::router {
namespace {

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

}  // namespace

LayerEngine::LayerEngine(int32_t index, common::LayerSpec spec,
                         common::RouterWeights weights)
    : index_(index), spec_(std::move(spec)), weights_(std::move(weights)) {}

absl::StatusOr<std::unique_ptr<LayerEngine>> LayerEngine::Create(
    int32_t index, const common::LayerSpec& spec,
    common::RouterWeights weights) {
  const common::LayerConfig& config = spec.config;
  MOE_RETURN_IF_ERROR(common::ValidateLayerConfig(config));
  const int64_t d = config.dim;
  MOE_RETURN_IF_ERROR(
      CheckShape(weights.gate, {config.num_experts, d}, "gate weight"));
  if (config.hierarchical()) {
    MOE_RETURN_IF_ERROR(CheckShape(
        weights.inner_gate, {config.num_experts, config.num_experts_inner, d},
        "inner gate weight"));
  }
  if (config.is_block()) {
    MOE_RETURN_IF_ERROR(
        CheckShape(weights.prenorm_gamma, {d}, "moe_prenorm.gamma"));
    for (const auto* ff : {&weights.ff_before, &weights.ff_after}) {
      if (!ff->has_value()) continue;
      MOE_RETURN_IF_ERROR(CheckShape((*ff)->gamma, {d}, "feed-forward gamma"));
      MOE_RETURN_IF_ERROR(CheckGeglu((*ff)->geglu, d,
                                     config.feed_forward_hidden(),
                                     "feed-forward weight"));
    }
  }
  return std::unique_ptr<LayerEngine>(
      new LayerEngine(index, spec, std::move(weights)));
}

absl::Status LayerEngine::ValidateInputShape(
    absl::Span<const int64_t> shape) const {
  const std::vector<int64_t> sizes(shape.begin(), shape.end());
  if (shape.size() != 3) {
    return absl::InvalidArgumentError(
        absl::StrCat("x: must have rank 3 [batch, tokens, dim], got shape ",
                     common::ShapeToString(sizes)));
  }
  if (shape[2] != config().dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("x: last dimension is ", shape[2],
                     " but the model dim is ", config().dim));
  }
  if (shape[0] < 1 || shape[1] < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("x: batch and tokens must be at least 1, got shape ",
                     common::ShapeToString(sizes)));
  }
  return absl::OkStatus();
}

absl::Status LayerEngine::ValidateInput(const at::Tensor& x) const {
  if (!x.defined()) return absl::InvalidArgumentError("x: missing");
  MOE_RETURN_IF_ERROR(ValidateInputShape(
      absl::MakeConstSpan(x.sizes().data(), x.sizes().size())));
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

absl::StatusOr<ForwardResult> LayerEngine::Forward(
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

namespace {

// The generator's seed of a request that sent none. Drawn from a per-thread
// engine seeded once from std::random_device: opening a random_device per
// forward cost about 30 us (4% of the router's CPU on 1 x 32 forwards).
uint64_t UnseededDraw() {
  thread_local std::mt19937_64 engine((uint64_t{std::random_device{}()} << 32) ^
                                      std::random_device{}());
  return engine();
}

}  // namespace

GateParams LayerEngine::GateParamsFor(const RoutingOptions& o) const {
  const common::LayerConfig& c = config();
  const bool train = o.mode == Mode::kTrain;
  GateParams params;
  params.num_experts = c.num_experts;
  params.policy = o.policy;
  params.threshold = o.threshold.value_or(
      static_cast<float>(train ? c.threshold_train : c.threshold_eval));
  params.capacity_factor = o.capacity_factor.value_or(
      train ? c.capacity_factor_train : c.capacity_factor_eval);
  return params;
}

absl::Status LayerEngine::Route(const at::Tensor& h, int64_t batch, int64_t seq,
                                const RoutingOptions& o,
                                ForwardResult* r) const {
  const GateParams params = GateParamsFor(o);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(
      o.seed.has_value() ? *o.seed : UnseededDraw());
  // Gate (outer gate of a two-level MoE).
  r->logits = at::matmul(h, weights_.gate.t()).contiguous();
  r->probs = at::softmax(r->logits, -1).contiguous();
  std::vector<float> uniforms;
  if (o.policy == SecondExpertPolicy::kRandom) {
    if (o.second_choice_uniforms.has_value()) {
      uniforms = FirstLevelUniforms(o);
    } else {
      at::Tensor u = at::rand({batch, seq}, gen);
      uniforms.assign(u.data_ptr<float>(), u.data_ptr<float>() + u.numel());
    }
  }
  MOE_ASSIGN_OR_RETURN(r->routing, RouteTop2(FloatSpan(r->probs), batch, seq,
                                             params, {}, uniforms));
  r->losses.balance_loss = BalanceLoss(FloatSpan(r->probs), r->routing, {});
  r->losses.router_z_loss =
      RouterZLoss(FloatSpan(r->logits), config().num_experts, {});
  if (!config().hierarchical()) {
    r->plan = BuildDispatchPlan(r->routing, index_);
  } else {
    MOE_ASSIGN_OR_RETURN(InnerLevel inner,
                         RouteInnerLevel(r->routing, h, weights_.inner_gate,
                                         batch, seq, params, gen));
    r->losses.balance_loss += inner.balance_loss;
    r->losses.router_z_loss += inner.router_z_loss;
    r->plan = BuildInnerDispatchPlan(inner.routing, batch, config().num_experts,
                                     inner.slot_row, inner.slot_weight, index_);
    r->inner = std::move(inner);
  }
  WeighLosses(config().balance_loss_coef, config().router_z_loss_coef,
              &r->losses);
  return absl::OkStatus();
}

absl::Status LayerEngine::RunExperts(const at::Tensor& h,
                                     ExpertBackend& backend, at::Tensor& y,
                                     ForwardResult* r) const {
  if (r->plan.size() == 0) {
    r->timings.marks.experts = r->timings.marks.post = absl::Now();
    y.zero_();
    return absl::OkStatus();
  }
  const int64_t d = config().dim;
  // Gathered into a block of a power of two rows, so that forwards whose
  // kept counts differ reuse freed blocks instead of fragmenting the heap.
  int64_t capacity = 1;
  while (capacity < r->plan.size()) capacity *= 2;
  auto gathered = std::make_shared<at::Tensor>(
      at::empty({capacity, d}, h.options()).narrow(0, 0, r->plan.size()));
  at::Tensor rows = at::from_blob(r->plan.row.data(), {r->plan.size()},
                                  at::TensorOptions().dtype(at::kLong));
  at::index_select_out(*gathered, h, 0, rows);
  ExpertWork work;
  work.tokens = gathered->data_ptr<float>();
  work.tokens_owner = gathered;
  work.rows = r->plan.size();
  work.dim = d;
  work.segments = r->plan.segments;
  work.targets = r->plan.row;
  work.weights = r->plan.weight;
  // y starts uninitialised: the combine writes each row it reaches first
  // and the rows nobody reached (dropped tokens, lost experts) are zeroed
  // after, instead of zeroing all of y first (16 MB of a [4,1024] forward).
  work.y = y.data_ptr<float>();
  std::vector<uint8_t> written(static_cast<size_t>(y.size(0)), 0);
  work.y_written = written.data();
  const absl::Time start = absl::Now();
  r->timings.marks.experts = start;
  BackendReport report;
  MOE_RETURN_IF_ERROR(backend.Run(work, &report));
  r->timings.marks.post = absl::Now();
  for (size_t t = 0; t < written.size(); ++t) {
    if (written[t] == 0) std::fill_n(work.y + t * d, d, 0.0f);
  }
  r->timings.experts = absl::Now() - start - report.combine;
  r->timings.combine = report.combine;
  r->timings.batch_wait = report.batch_wait;
  r->timings.rpc_wait = report.rpc_wait;
  for (const ExpertLoss& loss : report.lost) {
    r->lost_assignments += r->plan.count(loss.key.expert);
  }
  r->lost = std::move(report.lost);
  return absl::OkStatus();
}

absl::StatusOr<ForwardResult> LayerEngine::ForwardImpl(
    const at::Tensor& x_in, const RoutingOptions& o,
    ExpertBackend& backend) const {
  const absl::Time start = absl::Now();
  c10::InferenceMode inference_mode;
  MOE_RETURN_IF_ERROR(ValidateInput(x_in));
  const int64_t batch = x_in.size(0), seq = x_in.size(1), d = config().dim;
  MOE_RETURN_IF_ERROR(ValidateRoutingOptions(o, batch, seq));

  ForwardResult r;
  // Block models: x1 = x + FF_before(x), h = RMSNorm(x1); plain MoE: h = x.
  at::Tensor x = x_in.to(at::kFloat).contiguous();
  at::Tensor x1 = x;
  if (config().is_block() && weights_.ff_before.has_value()) {
    x1 = x + experts::FeedForward(*weights_.ff_before, x);
  }
  at::Tensor h =
      config().is_block() ? experts::RmsNorm(x1, weights_.prenorm_gamma) : x1;
  h = h.reshape({batch * seq, d}).contiguous();
  absl::Time mark = absl::Now();
  r.timings.pre = mark - start;
  r.timings.marks.pre = start;
  r.timings.marks.gate = mark;

  MOE_RETURN_IF_ERROR(Route(h, batch, seq, o, &r));
  r.timings.gate = absl::Now() - mark;
  mark = absl::Now();
  r.timings.marks.plan = mark;

  // Dispatch and combine: y[t] += G · Expert(x[t]) for every kept choice.
  at::Tensor y = at::empty({batch * seq, d}, at::kFloat);
  MOE_RETURN_IF_ERROR(RunExperts(h, backend, y, &r));
  const absl::Duration around_backend = absl::Now() - mark;
  r.timings.plan = around_backend - r.timings.experts - r.timings.combine;
  mark = absl::Now();

  // Block models: y = x1 + y, then y = y + FF_after(y).
  y = y.view({batch, seq, d});
  if (config().is_block()) {
    y = x1 + y;
    if (weights_.ff_after.has_value()) {
      y = y + experts::FeedForward(*weights_.ff_after, y);
    }
  }
  r.y = y;
  r.timings.marks.end = absl::Now();
  r.timings.combine += r.timings.marks.end - mark;
  r.timings.total = r.timings.marks.end - start;
  return r;
}

NamedTensors ForwardTrace(const ForwardResult& r, int64_t batch, int64_t seq) {
  NamedTensors out;
  const std::string outer = r.inner ? "trace.outer." : "trace.";
  AppendRoutingTrace(r.routing, {batch}, outer, &out);
  out.emplace_back(outer + "gate_logits",
                   r.logits.view({batch, seq, r.logits.size(1)}));
  out.emplace_back(outer + "raw_gates",
                   r.probs.view({batch, seq, r.probs.size(1)}));
  if (r.inner) {
    const InnerLevel& in = *r.inner;
    const int64_t eo = r.routing.num_experts, co = r.routing.capacity;
    AppendRoutingTrace(in.routing, {eo, batch}, "trace.inner.", &out);
    at::Tensor slot_token = at::empty({eo, batch, co}, at::kLong);
    at::Tensor importance = at::empty({eo, batch, co}, at::kFloat);
    for (int64_t s = 0; s < eo * batch * co; ++s) {
      const int64_t row = in.slot_row[s];
      slot_token.data_ptr<int64_t>()[s] = row < 0 ? -1 : row % seq;
      importance.data_ptr<float>()[s] = in.slot_importance[s];
    }
    out.emplace_back("trace.outer.slot_token", slot_token);
    out.emplace_back("trace.inner.importance", importance);
    const int64_t ei = in.routing.num_experts;
    out.emplace_back("trace.inner.gate_logits",
                     in.logits.view({eo, batch, co, ei}));
    out.emplace_back("trace.inner.raw_gates",
                     in.probs.view({eo, batch, co, ei}));
  }
  return out;
}

}  // namespace moe::router
