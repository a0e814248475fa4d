#include "experts/service/expert_service.h"

#include <chrono>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/request_id.h"
#include "common/status_macros.h"
#include "proto/expert_wire.h"
#include "proto/grpc_status.h"
#include "proto/tensor_codec.h"

namespace moe::experts {
namespace {

// Failed and refused calls come in floods under overload: their log lines
// are rate-limited, with a count of what was left out.
constexpr int kFailureLogsPerSecond = 10;

// "peer ipv4:127.0.0.1:5 (certificate CN=moe-balancer)": who asked.
std::string DescribeCaller(const grpc::CallbackServerContext& context) {
  std::string who = absl::StrCat("peer ", context.peer());
  const std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (auth != nullptr && auth->IsPeerAuthenticated()) {
    for (const grpc::string_ref& name : auth->GetPeerIdentity()) {
      absl::StrAppend(
          &who, " (certificate ",
          common::QuoteForLog(absl::string_view(name.data(), name.size())),
          ")");
      break;
    }
  }
  return who;
}

}  // namespace

absl::Status ExpertServiceOptions::Validate() const {
  if (compute_threads < 1) {
    return absl::InvalidArgumentError("--compute_threads must be >= 1");
  }
  if (max_tokens_per_call < 1) {
    return absl::InvalidArgumentError("--max_tokens_per_call must be >= 1");
  }
  if (inline_max_request_bytes < 0) {
    return absl::InvalidArgumentError("--inline_max_request_kib must be >= 0");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ExpertService>> ExpertService::Create(
    ExpertPlacement* placement, ServedModel model,
    const ExpertServiceOptions& options, ExpertMetrics* metrics) {
  MOE_RETURN_IF_ERROR(options.Validate());
  const ExpertPlacement::Snapshot now = placement->Current();
  if (now.shard->dim() != model.spec.dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("the shard's experts have dim ", now.shard->dim(),
                     " but the model's is ", model.spec.dim));
  }
  if (now.shard->experts().layers() > model.spec.layers.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the shard hosts experts of layer ", now.shard->experts().layers() - 1,
        " but the model has ", model.spec.layers.size(), " layers"));
  }
  return std::unique_ptr<ExpertService>(new ExpertService(
      placement, nullptr, std::move(model), options, metrics));
}

absl::StatusOr<std::unique_ptr<ExpertService>> ExpertService::Create(
    const ExpertShard* shard, ServedModel model,
    const ExpertServiceOptions& options, ExpertMetrics* metrics) {
  std::unique_ptr<ExpertPlacement> fixed =
      ExpertPlacement::Fixed(model.spec, shard);
  MOE_ASSIGN_OR_RETURN(std::unique_ptr<ExpertService> service,
                       Create(fixed.get(), std::move(model), options, metrics));
  service->owned_placement_ = std::move(fixed);
  return service;
}

ExpertService::ExpertService(ExpertPlacement* placement,
                             std::unique_ptr<ExpertPlacement> owned,
                             ServedModel model,
                             const ExpertServiceOptions& options,
                             ExpertMetrics* metrics)
    : owned_placement_(std::move(owned)),
      placement_(placement),
      model_(std::move(model)),
      options_(options),
      metrics_(*metrics),
      queue_(std::make_unique<common::WorkQueue>(
          options.compute_threads, options.max_queued, "moe-expert")),
      admin_queue_(std::make_unique<common::WorkQueue>(1, 4, "moe-placement")) {
  int64_t total = 0;
  for (const common::LayerSpec& layer : model_.spec.layers) {
    layer_offsets_.push_back(total);
    total += layer.config.total_experts();
  }
  load_ = std::make_unique<std::atomic<int64_t>[]>(static_cast<size_t>(total));
  for (int64_t i = 0; i < total; ++i) load_[i].store(0);
}

ExpertService::~ExpertService() { Drain(); }

moe::v1::ShardInfo ExpertService::shard_info(bool include_load) const {
  const ExpertPlacement::Snapshot now = placement_->Current();
  const ExpertShard& shard = *now.shard;
  moe::v1::ShardInfo info;
  info.set_model_name(model_.spec.name);
  info.set_fingerprint(model_.fingerprint);
  info.set_dim(model_.spec.dim);
  for (size_t l = 0; l < model_.spec.layers.size(); ++l) {
    const common::LayerSpec& layer = model_.spec.layers[l];
    moe::v1::LayerShard* out = info.add_layers();
    out->set_name(layer.name);
    out->set_kind(common::LayerKindName(layer.config.kind));
    out->set_total_experts(layer.config.total_experts());
    out->set_expert_hidden(layer.config.expert_hidden());
    if (!include_load) continue;
    for (int64_t e = 0; e < layer.config.total_experts(); ++e) {
      const int64_t tokens =
          load_[LoadIndex({static_cast<int32_t>(l), e})].load();
      if (tokens == 0) continue;
      moe::v1::ExpertLoad* load = out->add_load();
      load->set_expert_id(e);
      load->set_tokens(tokens);
    }
  }
  const common::ExpertSet hosted = shard.experts();
  for (size_t l = 0; l < hosted.layers(); ++l) {
    for (int64_t e : hosted.ids(l)) {
      info.mutable_layers(static_cast<int>(l))->add_expert_ids(e);
    }
  }
  // A worker holding nothing yet has no device of its own to name.
  info.set_device(hosted.empty() && placement_->changeable()
                      ? "none"
                      : shard.device().ToString());
  info.set_weight_bytes(shard.weight_bytes());
  info.set_max_tokens_per_call(options_.max_tokens_per_call);
  info.set_compute_dtype(common::DTypeName(shard.compute_dtype()));
  info.set_generation(now.generation);
  info.set_expert_memory_limit_bytes(placement_->memory_limit_bytes());
  info.set_leaving(leaving_.load());
  info.set_placement_writable(placement_->changeable() &&
                              options_.admin_tokens != nullptr);
  return info;
}

absl::Status ExpertService::Run(const grpc::ByteBuffer& request,
                                grpc::ByteBuffer* response, absl::Time started,
                                CallFacts* facts) const {
  using Clock = std::chrono::steady_clock;
  const Clock::time_point start = Clock::now();
  // The experts as they are now: a change made while this call runs frees
  // what it gives up after the call.
  const ExpertPlacement::Snapshot placement = placement_->Current();
  const ExpertShard& shard = *placement.shard;
  MOE_ASSIGN_OR_RETURN(
      proto::RunExpertsRequestView call,
      proto::RunExpertsRequestView::Parse(
          request, model_.spec.dim, options_.max_tokens_per_call,
          static_cast<int>(model_.spec.layers.size())));
  if (absl::Status hosted = shard.CheckSegments(call.rows(), call.segments());
      !hosted.ok()) {
    if (absl::IsFailedPrecondition(hosted)) {
      return absl::FailedPreconditionError(
          absl::StrCat(hosted.message(), " (placement generation ",
                       placement.generation, ")"));
    }
    return hosted;
  }
  const bool on_gpu = shard.device().is_gpu();
  // float32 outputs are written by the experts straight into the response's
  // bytes; 16-bit ones are converted from a float32 buffer.
  proto::RunExpertsResponseWriter out(call.output_dtype(), call.rows(),
                                      model_.spec.dim);
  const Clock::time_point parsed = Clock::now();
  RunStats stats;
  MOE_RETURN_IF_ERROR(RunInParts(shard, call, out.data(), &stats));
  const Clock::time_point ran = Clock::now();
  *response = out.Finish();
  const Clock::time_point serialized = Clock::now();
  auto seconds = [](Clock::duration d) {
    return std::chrono::duration<double>(d).count();
  };
  auto wall = [&](Clock::time_point t) {
    return started + absl::FromChrono(t - start);
  };
  facts->parsed = wall(parsed);
  facts->ran = wall(ran);
  facts->serialized = wall(serialized);
  ExpertMetrics::CallStages stages;
  stages.parse = seconds(parsed - start);
  stages.copy_in = stats.copy_in_seconds;
  stages.copy_out = stats.copy_out_seconds;
  // On the host the whole run is compute; on a GPU its measured share.
  stages.compute = on_gpu ? stats.compute_seconds : seconds(ran - parsed);
  stages.serialize = seconds(serialized - ran);
  facts->rows = call.rows();
  facts->segments = static_cast<int64_t>(call.segments().size());
  facts->stages = stages;
  metrics_.RecordBatch(call.rows());
  metrics_.RecordCall(stages, on_gpu);
  metrics_.RecordGpuPasses(stats.small_rows_passes, stats.gemm_passes);
  for (size_t i = 0; i < call.segments().size(); ++i) {
    const common::ExpertSegment& s = call.segments()[i];
    metrics_.RecordSegment(s.key, s.count, stats.segment_seconds[i]);
    load_[LoadIndex(s.key)].fetch_add(s.count, std::memory_order_relaxed);
  }
  return absl::OkStatus();
}

absl::Status ExpertService::RunInParts(const ExpertShard& shard,
                                       const proto::RunExpertsRequestView& call,
                                       void* out, RunStats* stats) const {
  const int64_t dim = shard.dim();
  const int64_t part = std::max<int64_t>(1, shard.max_rows_per_run());
  const std::vector<common::ExpertSegment>& segments = call.segments();
  const bool wide_out = call.output_dtype() == common::DType::kFloat32;
  const size_t out_element = common::ElementSize(call.output_dtype());
  stats->segment_seconds.assign(segments.size(), 0);
  // Reused by every part: a part's rows when they straddle received
  // slices, its float32 results for a 16-bit answer, its segments.
  std::string rows_scratch;
  std::vector<float> wide;
  std::vector<common::ExpertSegment> pieces;
  std::vector<size_t> owner;
  size_t next = 0;  // the first segment not wholly before this part
  for (int64_t first = 0; first < call.rows(); first += part) {
    const int64_t count = std::min(part, call.rows() - first);
    pieces.clear();
    owner.clear();
    while (next < segments.size() &&
           segments[next].offset + segments[next].count <= first) {
      ++next;
    }
    for (size_t i = next; i < segments.size(); ++i) {
      const common::ExpertSegment& s = segments[i];
      if (s.offset >= first + count) break;
      const int64_t lo = std::max(s.offset, first);
      const int64_t hi = std::min(s.offset + s.count, first + count);
      if (lo >= hi) continue;
      pieces.push_back({s.key, lo - first, hi - lo});
      owner.push_back(i);
    }
    if (pieces.empty()) continue;
    const TokenRows tokens{call.tokens_dtype(),
                           call.TokenRowData(first, count, &rows_scratch),
                           count};
    float* dst = static_cast<float*>(out) + first * dim;
    if (!wide_out) {
      wide.resize(static_cast<size_t>(count * dim));
      dst = wide.data();
    }
    RunStats measured;
    MOE_RETURN_IF_ERROR(shard.Run(tokens, pieces, dst, &measured));
    if (!wide_out) {
      common::ConvertFromFloat32(
          wide.data(), count * dim, call.output_dtype(),
          static_cast<char*>(out) + first * dim * out_element);
    }
    stats->AddTotals(measured);
    for (size_t j = 0; j < pieces.size(); ++j) {
      stats->segment_seconds[owner[j]] += measured.segment_seconds[j];
    }
  }
  return absl::OkStatus();
}

namespace {

// The call's x-request-id values (the router sends the IDs of the forwards
// the call serves). Values that are no usable ID, and any past the
// router's limit, are left out: they stay safe to log.
std::vector<absl::string_view> RequestIdsOf(
    const grpc::CallbackServerContext& context) {
  std::vector<absl::string_view> ids;
  auto [begin, end] = context.client_metadata().equal_range(
      grpc::string_ref(common::kRequestIdKey));
  for (auto it = begin;
       it != end && ids.size() < common::kMaxRequestIdsPerWorkerCall; ++it) {
    const absl::string_view id(it->second.data(), it->second.size());
    if (common::UsableRequestId(id)) ids.push_back(id);
  }
  return ids;
}

// " for requests A, B" ("" for none), and the same IDs as the log line's
// "request_ids" field ("A,B").
struct ForRequests {
  explicit ForRequests(const grpc::CallbackServerContext& context)
      : ids(RequestIdsOf(context)) {}
  std::string Text() const {
    if (ids.empty()) return "";
    return absl::StrCat(ids.size() == 1 ? " for request " : " for requests ",
                        absl::StrJoin(ids, ", "));
  }
  std::string Field() const { return absl::StrJoin(ids, ","); }
  std::vector<absl::string_view> ids;
};

// The first value of metadata `key` ("" when none).
absl::string_view FirstValue(const grpc::CallbackServerContext& context,
                             const char* key) {
  auto it = context.client_metadata().find(grpc::string_ref(key));
  if (it == context.client_metadata().end()) return {};
  return absl::string_view(it->second.data(), it->second.size());
}

}  // namespace

void ExpertService::EndSpan(common::Span span,
                            const grpc::CallbackServerContext& context,
                            const absl::Status& status, const CallFacts& facts,
                            absl::Time started, bool ran_inline) const {
  span.end = absl::Now();
  auto [begin, end] = context.client_metadata().equal_range(
      grpc::string_ref(common::kTraceLinkKey));
  for (auto it = begin; it != end && span.links.size() < common::kMaxSpanLinks;
       ++it) {
    if (auto link = common::ParseTraceparent(
            absl::string_view(it->second.data(), it->second.size()))) {
      span.links.push_back(
          {std::move(link->trace_id), std::move(link->span_id)});
    }
  }
  auto add = [&span](const char* key, common::SpanAttribute value) {
    span.attributes.emplace_back(key, std::move(value));
  };
  auto micros = [](double seconds) {
    return static_cast<int64_t>(seconds * 1e6);
  };
  add("rpc.system", std::string("grpc"));
  add("rpc.grpc.status_code", static_cast<int64_t>(status.code()));
  add("client.address", context.peer());
  add("moe.request_ids", ForRequests(context).Field());
  // Waiting for a compute thread, then the call's stages.
  add("moe.queued_us", absl::ToInt64Microseconds(started - span.start));
  add("moe.inline", ran_inline);
  if (status.ok()) {
    add("moe.rows", facts.rows);
    add("moe.segments", facts.segments);
    add("moe.parse_us", micros(facts.stages.parse));
    add("moe.copy_in_us", micros(facts.stages.copy_in));
    add("moe.compute_us", micros(facts.stages.compute));
    add("moe.copy_out_us", micros(facts.stages.copy_out));
    add("moe.serialize_us", micros(facts.stages.serialize));
    // And the same as children, one after the other from the arrival.
    common::EndPhaseSpans(
        *options_.tracer, span,
        {{"moe.queue", span.start, started},
         {"moe.parse", started, facts.parsed},
         {"moe.run",
          facts.parsed,
          facts.ran,
          {{"moe.copy_in_us", micros(facts.stages.copy_in)},
           {"moe.compute_us", micros(facts.stages.compute)},
           {"moe.copy_out_us", micros(facts.stages.copy_out)}}},
         {"moe.serialize", facts.ran, facts.serialized}});
  } else {
    span.error = true;
    span.status_message = absl::StrCat(absl::StatusCodeToString(status.code()),
                                       ": ", status.message());
  }
  options_.tracer->End(std::move(span));
}

grpc::ServerUnaryReactor* ExpertService::RunExperts(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request,
    grpc::ByteBuffer* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  metrics_.AddInflight(1);
  const absl::Time received = absl::Now();
  // The call's span when it is traced (null when not: no allocation), shared
  // by the paths that finish the call (run, a full queue).
  std::shared_ptr<common::Span> span;
  if (options_.tracer != nullptr) {
    if (std::optional<common::Span> started = options_.tracer->Start(
            "moe.v1.ExpertWorker/RunExperts",
            FirstValue(*context, common::kTraceparentKey), received)) {
      span = std::make_shared<common::Span>(*std::move(started));
    }
  }
  auto finish = [this, reactor, context, span](
                    const absl::Status& status, const CallFacts& facts,
                    absl::Time started, bool ran_inline) {
    if (span != nullptr) {
      EndSpan(std::move(*span), *context, status, facts, started, ran_inline);
    }
    metrics_.AddInflight(-1);
    reactor->Finish(proto::ToGrpcStatus(status));
  };
  // `ran_inline`: on the gRPC thread that received the call.
  auto run = [this, context, request, response, finish,
              received](bool ran_inline) {
    const absl::Time started = absl::Now();
    absl::Status status;
    CallFacts facts;
    if (context->IsCancelled()) {
      status = absl::CancelledError("cancelled before it ran");
    } else {
      status = Run(*request, response, started, &facts);
    }
    static common::LogRateLimiter failures(kFailureLogsPerSecond);
    int64_t suppressed = 0;
    if (!status.ok() && !absl::IsCancelled(status) &&
        failures.Allow(&suppressed)) {
      const ForRequests requests(*context);
      MOE_LOG_WITH(WARNING, "request_ids", requests.Field())
          << "RunExperts from " << context->peer() << requests.Text() << ": "
          << status << common::SuppressedNote(suppressed);
    } else if (status.ok() && options_.log_requests) {
      const ForRequests requests(*context);
      MOE_LOG_WITH(INFO, "request_ids", requests.Field())
          << "RunExperts from " << context->peer() << requests.Text()
          << ": OK in "
          << absl::FormatDuration(
                 absl::Trunc(absl::Now() - received, absl::Microseconds(100)))
          << ", " << request->Length() << " bytes in, " << response->Length()
          << " out";
    }
    finish(status, facts, started, ran_inline);
  };
  if (static_cast<int64_t>(request->Length()) <=
          options_.inline_max_request_bytes &&
      !inline_running_.exchange(true)) {
    const bool ran = queue_->TryRunHere([&run] { run(true); });
    inline_running_.store(false);
    if (ran) {
      metrics_.RecordInline();
      return reactor;
    }
  }
  const bool queued = queue_->TrySubmit([run = std::move(run)] { run(false); });
  static common::LogRateLimiter refusals(kFailureLogsPerSecond);
  if (int64_t suppressed = 0; !queued && refusals.Allow(&suppressed)) {
    const ForRequests requests(*context);
    MOE_LOG_WITH(WARNING, "request_ids", requests.Field())
        << "RunExperts from " << context->peer() << requests.Text()
        << " refused: queue full (" << options_.max_queued << " waiting)"
        << common::SuppressedNote(suppressed);
  }
  if (!queued) {
    finish(absl::ResourceExhaustedError(
               absl::StrCat("expert worker overloaded: ", options_.max_queued,
                            " calls already queued")),
           CallFacts(), absl::Now(), false);
  }
  return reactor;
}

grpc::ServerUnaryReactor* ExpertService::GetShardInfo(
    grpc::CallbackServerContext* context,
    const moe::v1::GetShardInfoRequest* request, moe::v1::ShardInfo* response) {
  *response = shard_info(request->include_load());
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

grpc::ServerUnaryReactor* ExpertService::SetExperts(
    grpc::CallbackServerContext* context,
    const moe::v1::SetExpertsRequest* request, moe::v1::ShardInfo* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const std::string who = DescribeCaller(*context);
  auto refuse = [&](absl::Status status) {
    MOE_LOG(WARNING) << "SetExperts from " << who << " refused: " << status;
    reactor->Finish(proto::ToGrpcStatus(status));
    return reactor;
  };
  if (options_.admin_tokens == nullptr || !placement_->changeable()) {
    return refuse(absl::PermissionDeniedError(
        "this worker's experts cannot be changed: it was started without "
        "--admin_token_file"));
  }
  const auto& metadata = context->client_metadata();
  auto it = metadata.find("authorization");
  const common::TokenSet::Verdict verdict =
      it == metadata.end() ? common::TokenSet::Verdict::kMissing
                           : options_.admin_tokens->Check(absl::string_view(
                                 it->second.data(), it->second.size()));
  if (verdict != common::TokenSet::Verdict::kAccepted) {
    return refuse(absl::UnauthenticatedError(
        verdict == common::TokenSet::Verdict::kMissing
            ? "SetExperts needs the worker's admin token: send "
              "\"authorization: Bearer <token>\""
            : "SetExperts: the admin token is not known to this worker"));
  }
  // Loading takes seconds: it runs on the placement's own thread.
  const bool queued =
      admin_queue_->TrySubmit([this, reactor, request, response, who] {
        absl::Status status = ChangeExperts(*request, who);
        if (status.ok()) *response = shard_info();
        reactor->Finish(proto::ToGrpcStatus(status));
      });
  if (!queued) {
    return refuse(absl::ResourceExhaustedError(
        "placement changes already queued: try again"));
  }
  return reactor;
}

absl::Status ExpertService::ChangeExperts(
    const moe::v1::SetExpertsRequest& request, const std::string& who) {
  const common::ModelSpec& spec = model_.spec;
  std::vector<std::vector<int64_t>> ids(spec.layers.size());
  for (const moe::v1::LayerExperts& l : request.layers()) {
    if (l.layer() < 0 || l.layer() >= static_cast<int>(spec.layers.size())) {
      return absl::InvalidArgumentError(
          absl::StrCat("SetExperts: layer ", l.layer(), " is not one of the ",
                       spec.layers.size(), " layers of the model"));
    }
    const int64_t total = spec.layers[l.layer()].config.total_experts();
    for (int64_t e : l.expert_ids()) {
      if (e < 0 || e >= total) {
        return absl::InvalidArgumentError(
            absl::StrCat("SetExperts: layer ", l.layer(), " has experts [0, ",
                         total, "); ", e, " is not one"));
      }
      ids[l.layer()].push_back(e);
    }
  }
  if (request.generation() < 0) {
    return absl::InvalidArgumentError("SetExperts: generation must be >= 0");
  }
  const common::ExpertSet wanted(std::move(ids));
  const absl::Time start = absl::Now();
  MOE_ASSIGN_OR_RETURN(ExpertPlacement::Change change,
                       placement_->Set(wanted, request.generation()));
  if (change.unchanged) return absl::OkStatus();
  const ExpertPlacement::Snapshot now = placement_->Current();
  metrics_.Host(now.shard->experts());
  metrics_.SetPlacement(now.generation, now.shard->weight_bytes());
  metrics_.SetDeviceMemory(now.shard->device_memory_bytes());
  MOE_LOG(INFO) << "placement generation " << request.generation() << " from "
                << who << " (" << common::QuoteForLog(request.reason())
                << "): now " << now.shard->experts().Describe(spec)
                << "; added " << change.added.Describe(spec) << ", removed "
                << change.removed.Describe(spec) << ", "
                << now.shard->weight_bytes() / (1 << 20)
                << " MiB of weights, in "
                << absl::FormatDuration(
                       absl::Trunc(absl::Now() - start, absl::Milliseconds(1)));
  return absl::OkStatus();
}

}  // namespace moe::experts
