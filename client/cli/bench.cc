// moe-client bench: closed-loop load on a router. `--concurrency` threads
// each send requests back to back for `--duration` seconds (or until
// `--requests`), with progress every second, then throughput and latency
// percentiles. Inputs vary: each request takes one of `--distinct_inputs`
// seeded tensors in turn (or, with --input, one of the rows of its x:
// [K, N, d] gives K requests of [1, N, d], the shape then the file's). With
// --all_layers a step is one forward through every layer in order (the
// attention side's decode step); the latency is then per step, and per layer
// round trip beside it. When the router goes away the threads back off (100 ms
// doubling to 2 s) instead of spinning.
//
// Each step also yields the expert weights it made the slowest worker read:
// per layer, the bytes of the experts hosted by a worker that kept at least
// one assignment (ForwardResponse.stats.kept_per_expert), at the worker's
// compute dtype; the step's figure sums the layers' largest. Divided by a
// core's memory read rate (bench/run_bench.py) it is the step's
// weight-streaming bound.
//
// --rpc=health sends grpc.health.v1 Check calls instead, over the same
// channel: the bare unary round trip of gRPC on this connection, the floor
// under a forward's (which crosses two such hops: client -> router ->
// workers). --rpc=infer sends the same inputs as Open Inference Protocol
// ModelInfer calls (raw FP32 x, outputs as raw bytes): the other protocol's
// round trip on the same router; --rpc=stream_infer the same requests over
// one ModelStreamInfer stream per thread (a request written, its answer
// read, the next written): the round trip without a call's set-up.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <map>
#include <thread>
#include <vector>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/cli/client_flags.h"
#include "client/cli/commands.h"
#include "common/dtype.h"
#include "common/random_input.h"
#include "common/status_macros.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "inference/open_inference_grpc.grpc.pb.h"
#include "proto/cli/forward_flags.h"
#include "proto/cli/forward_io.h"
#include "proto/grpc_status.h"
#include "proto/tensor_codec.h"

ABSL_DECLARE_FLAG(std::string, input);

ABSL_FLAG(int, concurrency, 1, "bench: requests in flight at once.");
ABSL_FLAG(double, duration, 10, "bench: seconds to run.");
ABSL_FLAG(int64_t, requests, 0,
          "bench: stop after this many requests (0: run --duration).");
ABSL_FLAG(std::string, shape, "1x32", "bench: input shape BxN.");
ABSL_FLAG(int, distinct_inputs, 16,
          "bench: distinct seeded inputs the requests cycle through.");
ABSL_FLAG(bool, all_layers, false,
          "bench: a step is one forward through every layer, in order.");
ABSL_FLAG(std::string, rpc, "forward",
          "bench: forward (moe.v1.Router/Forward), infer (the Open Inference "
          "Protocol's ModelInfer, same inputs), stream_infer (the same over "
          "one ModelStreamInfer stream per thread, each request answered "
          "before the next is written) or health (grpc.health.v1 Check, "
          "empty message: gRPC's own unary round trip, for comparison).");
ABSL_FLAG(std::string, json_out, "",
          "bench: also write the results as JSON to this file.");

namespace moe::cli {
namespace {

double Percentile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0.0;
  const size_t i =
      std::min(sorted.size() - 1, static_cast<size_t>(q * sorted.size()));
  return sorted[i];
}

// What one bench run sends: the layers of a step and the inputs it cycles
// through.
struct BenchPlan {
  std::string target;
  int64_t batch = 0, tokens = 0, dim = 0;
  std::vector<std::string> layers;
  std::vector<moe::v1::ForwardRequest> requests;
  int concurrency = 1;
  absl::Duration duration;
  int64_t max_steps = 0;  // 0: until `duration`
  bool health = false;    // --rpc=health: Check calls instead of forwards
  bool infer = false;     // --rpc=infer: ModelInfer calls instead
  bool stream = false;    // --rpc=stream_infer: over ModelStreamInfer
  std::string token;      // for --rpc=infer's own stub
  // --rpc=infer: the model of each layer of `layers`.
  std::vector<std::string> models;
  // Per layer name: expert id -> (worker index, weight bytes), from the
  // router's worker list (empty when the router hides it).
  std::map<std::string, std::map<int64_t, std::pair<int, int64_t>>> expert_home;
};

// Which worker holds each expert of `layer` (the first that is up and lists
// it) and that expert's parameter bytes: 3dh + 3h + d values (W1 [2h, d],
// b1, mult_bias, W2 [d, h], b2) at the worker's compute dtype.
std::map<int64_t, std::pair<int, int64_t>> ExpertHomes(
    const moe::v1::ModelInfo& info, const std::string& layer) {
  std::map<int64_t, std::pair<int, int64_t>> homes;
  int64_t hidden = 0;
  for (const moe::v1::LayerInfo& l : info.layers()) {
    if (l.name() == layer) hidden = l.expert_hidden();
  }
  const int64_t params = 3 * info.dim() * hidden + 3 * hidden + info.dim();
  for (int w = 0; w < info.workers_size(); ++w) {
    const moe::v1::WorkerInfo& worker = info.workers(w);
    if (!worker.up()) continue;
    common::DType compute = common::DType::kFloat32;
    common::ParseDTypeName(worker.compute_dtype(), &compute);
    const int64_t bytes =
        params * static_cast<int64_t>(common::ElementSize(compute));
    for (const moe::v1::WorkerExperts& e : worker.experts()) {
      if (e.layer() != layer) continue;
      for (int64_t id : e.expert_ids())
        homes.emplace(id, std::make_pair(w, bytes));
    }
  }
  return homes;
}

// The bytes of expert weights the slowest worker read for one response.
int64_t SlowestWorkerBytes(
    const std::map<int64_t, std::pair<int, int64_t>>& homes,
    const moe::v1::ForwardResponse& r) {
  std::map<int, int64_t> per_worker;
  const auto& kept = r.stats().kept_per_expert();
  for (int64_t id = 0; id < kept.size(); ++id) {
    auto it = homes.find(id);
    if (kept[id] > 0 && it != homes.end()) {
      per_worker[it->second.first] += it->second.second;
    }
  }
  int64_t most = 0;
  for (const auto& [w, bytes] : per_worker) most = std::max(most, bytes);
  return most;
}

absl::StatusOr<BenchPlan> PlanFromFlags(const moe::v1::ModelInfo& info) {
  BenchPlan plan;
  const std::string rpc = absl::GetFlag(FLAGS_rpc);
  if (rpc != "forward" && rpc != "health" && rpc != "infer" &&
      rpc != "stream_infer") {
    return absl::InvalidArgumentError(
        absl::StrCat("--rpc must be forward, infer, stream_infer or health, "
                     "not \"",
                     rpc, "\""));
  }
  plan.health = rpc == "health";
  plan.stream = rpc == "stream_infer";
  plan.infer = rpc == "infer" || plan.stream;
  plan.concurrency = std::max(1, absl::GetFlag(FLAGS_concurrency));
  plan.duration = absl::Seconds(absl::GetFlag(FLAGS_duration));
  plan.max_steps = absl::GetFlag(FLAGS_requests);
  if (plan.health) return plan;
  const std::string input = absl::GetFlag(FLAGS_input);
  common::HostTensor from_file;
  if (!input.empty()) {
    MOE_ASSIGN_OR_RETURN(from_file, ReadInputTensor(input, "x"));
    if (from_file.shape.size() != 3 || from_file.shape[2] != info.dim() ||
        from_file.dtype != common::DType::kFloat32) {
      return absl::InvalidArgumentError(
          absl::StrCat("--input: x must be float32 [K, N, ", info.dim(),
                       "], not ", common::ShapeToString(from_file.shape)));
    }
  }
  std::pair<int64_t, int64_t> bn;
  if (input.empty()) {
    MOE_ASSIGN_OR_RETURN(bn, ParseBxN(absl::GetFlag(FLAGS_shape), "--shape"));
  } else {
    bn = {1, from_file.shape[1]};
  }
  plan.batch = bn.first;
  plan.tokens = bn.second;
  plan.dim = info.dim();
  MOE_ASSIGN_OR_RETURN(moe::v1::RoutingOptions routing,
                       RoutingOptionsFromFlags());
  routing.set_return_trace(false);
  if (absl::GetFlag(FLAGS_all_layers)) {
    for (const moe::v1::LayerInfo& l : info.layers()) {
      plan.layers.push_back(l.name());
    }
  } else {
    plan.layers.push_back(LayerFromFlags());
  }
  const int distinct = input.empty()
                           ? std::max(1, absl::GetFlag(FLAGS_distinct_inputs))
                           : static_cast<int>(from_file.shape[0]);
  plan.requests.resize(distinct);
  const size_t row_bytes = from_file.data.size() / std::max(1, distinct);
  for (int i = 0; i < distinct; ++i) {
    common::HostTensor x;
    if (input.empty()) {
      x = common::RandomNormalTensor({plan.batch, plan.tokens, plan.dim},
                                     InputSeedFromFlags() + i);
    } else {
      x.dtype = common::DType::kFloat32;
      x.shape = {1, plan.tokens, plan.dim};
      x.data = from_file.data.substr(i * row_bytes, row_bytes);
    }
    MOE_RETURN_IF_ERROR(proto::EncodeTensor(x, plan.requests[i].mutable_x()));
    *plan.requests[i].mutable_options() = routing;
  }
  for (const moe::v1::LayerInfo& l : info.layers()) {
    plan.expert_home[l.name()] = ExpertHomes(info, l.name());
  }
  for (const std::string& layer : plan.layers) {
    // The Open Inference Protocol names an unnamed layer by the model.
    plan.models.push_back(layer.empty() ? info.model_name() : layer);
  }
  return plan;
}

// What the load threads measured, merged as each thread ends.
class Tally {
 public:
  void Merge(const std::vector<double>& steps, const std::vector<double>& trips,
             const std::vector<double>& touched) {
    absl::MutexLock lock(&mu_);
    step_ms_.insert(step_ms_.end(), steps.begin(), steps.end());
    trip_ms_.insert(trip_ms_.end(), trips.begin(), trips.end());
    touched_mb_.insert(touched_mb_.end(), touched.begin(), touched.end());
  }
  void Error(const absl::Status& status) {
    ++errors;
    absl::MutexLock lock(&mu_);
    last_error_ = status.ToString();
  }
  // Sorted step and round-trip latencies (call after the threads ended).
  std::vector<double> SortedSteps() const {
    absl::MutexLock lock(&mu_);
    return Sorted(step_ms_);
  }
  std::vector<double> SortedTrips() const {
    absl::MutexLock lock(&mu_);
    return Sorted(trip_ms_);
  }
  // Per step: MB of expert weights the slowest worker read.
  std::vector<double> SortedTouchedMb() const {
    absl::MutexLock lock(&mu_);
    return Sorted(touched_mb_);
  }
  std::string last_error() const {
    absl::MutexLock lock(&mu_);
    return last_error_;
  }

  std::atomic<int64_t> started{0}, done{0}, errors{0};

 private:
  static std::vector<double> Sorted(const std::vector<double>& v) {
    std::vector<double> out = v;
    std::sort(out.begin(), out.end());
    return out;
  }

  mutable absl::Mutex mu_;
  std::vector<double> step_ms_ ABSL_GUARDED_BY(mu_);
  std::vector<double> trip_ms_ ABSL_GUARDED_BY(mu_);
  std::vector<double> touched_mb_ ABSL_GUARDED_BY(mu_);
  std::string last_error_ ABSL_GUARDED_BY(mu_);
};

// Whether a load thread takes another step: before `end` and within the
// step budget.
bool MoreSteps(const BenchPlan& plan, absl::Time end, Tally& tally) {
  return absl::Now() < end &&
         (plan.max_steps <= 0 || tally.started.fetch_add(1) < plan.max_steps);
}

// One closed-loop client thread: steps back to back until `end` (or the
// step budget); backs off while the router is UNAVAILABLE.
void LoadThread(const BenchPlan& plan, client::RouterClient& client, int t,
                absl::Time end, Tally& tally) {
  std::vector<double> steps, trips, touched;
  absl::Duration backoff = absl::Milliseconds(100);
  for (int64_t i = t; MoreSteps(plan, end, tally); i += plan.concurrency) {
    moe::v1::ForwardRequest request = plan.requests[i % plan.requests.size()];
    const absl::Time t0 = absl::Now();
    absl::Status status;
    int64_t bytes = 0;
    for (const std::string& layer : plan.layers) {
      request.set_layer(layer);
      const absl::Time r0 = absl::Now();
      absl::StatusOr<moe::v1::ForwardResponse> r = client.Forward(request);
      status = !r.ok()         ? r.status()
               : r->degraded() ? client::DegradedError(*r)
                               : absl::OkStatus();
      if (!status.ok()) break;
      trips.push_back(absl::ToDoubleMilliseconds(absl::Now() - r0));
      auto homes = plan.expert_home.find(r->layer());
      if (homes != plan.expert_home.end()) {
        bytes += SlowestWorkerBytes(homes->second, *r);
      }
    }
    if (status.ok()) {
      steps.push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
      touched.push_back(static_cast<double>(bytes) / 1e6);
      ++tally.done;
      backoff = absl::Milliseconds(100);
      continue;
    }
    tally.Error(status);
    if (absl::IsUnavailable(status)) {
      absl::SleepFor(std::min(backoff, end - absl::Now()));
      backoff = std::min(backoff * 2, absl::Seconds(2));
    }
  }
  tally.Merge(steps, trips, touched);
}

// The ModelInfer request of `forward` for `model`: x as raw bytes, the
// routing options as parameters.
inference::ModelInferRequest InferRequest(
    const moe::v1::ForwardRequest& forward, const std::string& model) {
  inference::ModelInferRequest r;
  r.set_model_name(model);
  auto* x = r.add_inputs();
  x->set_name("x");
  x->set_datatype("FP32");
  *x->mutable_shape() = forward.x().shape();
  r.add_raw_input_contents(forward.x().data());
  const moe::v1::RoutingOptions& o = forward.options();
  if (o.mode() == moe::v1::TRAIN) {
    (*r.mutable_parameters())["mode"].set_string_param("train");
  }
  if (o.has_seed())
    (*r.mutable_parameters())["seed"].set_uint64_param(o.seed());
  return r;
}

// --rpc=infer: ModelInfer calls back to back on the client's channel, one
// per layer of a step.
void InferLoadThread(const BenchPlan& plan, client::RouterClient& client, int t,
                     absl::Time end, Tally& tally) {
  auto stub = inference::GRPCInferenceService::NewStub(client.channel());
  std::vector<std::vector<inference::ModelInferRequest>> requests;
  for (const moe::v1::ForwardRequest& f : plan.requests) {
    requests.emplace_back();
    for (const std::string& model : plan.models) {
      requests.back().push_back(InferRequest(f, model));
    }
  }
  std::vector<double> steps, trips;
  // --rpc=stream_infer: one stream for the thread's whole run.
  grpc::ClientContext stream_context;
  std::unique_ptr<grpc::ClientReaderWriter<inference::ModelInferRequest,
                                           inference::ModelStreamInferResponse>>
      stream;
  if (plan.stream) {
    if (!plan.token.empty()) {
      stream_context.AddMetadata("authorization", "Bearer " + plan.token);
    }
    stream = stub->ModelStreamInfer(&stream_context);
  }
  for (int64_t i = t; MoreSteps(plan, end, tally); i += plan.concurrency) {
    const absl::Time t0 = absl::Now();
    grpc::Status status;
    for (const inference::ModelInferRequest& r :
         requests[i % requests.size()]) {
      if (stream != nullptr) {
        inference::ModelStreamInferResponse answer;
        const absl::Time r0 = absl::Now();
        if (!stream->Write(r) || !stream->Read(&answer)) {
          status = stream->Finish();
          if (status.ok()) {
            status =
                grpc::Status(grpc::StatusCode::UNAVAILABLE, "the stream ended");
          }
          stream.reset();
          break;
        }
        if (!answer.error_message().empty()) {
          status =
              grpc::Status(grpc::StatusCode::UNKNOWN, answer.error_message());
          break;
        }
        trips.push_back(absl::ToDoubleMilliseconds(absl::Now() - r0));
        continue;
      }
      grpc::ClientContext context;
      context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
      if (!plan.token.empty()) {
        context.AddMetadata("authorization", "Bearer " + plan.token);
      }
      inference::ModelInferResponse response;
      const absl::Time r0 = absl::Now();
      status = stub->ModelInfer(&context, r, &response);
      if (!status.ok()) break;
      trips.push_back(absl::ToDoubleMilliseconds(absl::Now() - r0));
    }
    if (!status.ok()) {
      tally.Error(proto::FromGrpcStatus(status));
      if (plan.stream && stream == nullptr) break;  // the stream is gone
      continue;
    }
    steps.push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
    ++tally.done;
  }
  if (stream != nullptr) {
    stream->WritesDone();
    stream->Finish();
  }
  tally.Merge(steps, trips, {});
}

// --rpc=health: Check calls back to back on the client's channel.
void HealthLoadThread(const BenchPlan& plan, client::RouterClient& client,
                      absl::Time end, Tally& tally) {
  auto stub = grpc::health::v1::Health::NewStub(client.channel());
  grpc::health::v1::HealthCheckRequest request;
  std::vector<double> steps;
  while (MoreSteps(plan, end, tally)) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
    grpc::health::v1::HealthCheckResponse response;
    const absl::Time t0 = absl::Now();
    const grpc::Status status = stub->Check(&context, request, &response);
    if (!status.ok()) {
      tally.Error(proto::FromGrpcStatus(status));
      continue;
    }
    steps.push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
    ++tally.done;
  }
  tally.Merge(steps, {}, {});
}

// Progress once a second on stderr until `end` or until the step budget is
// spent (checked every 20 ms, so that a short run's time is its own).
void ShowProgress(const BenchPlan& plan, absl::Time start, absl::Time end,
                  const Tally& tally) {
  int64_t last = 0;
  absl::Time next = start + absl::Seconds(1);
  for (int second = 1; absl::Now() < end;) {
    absl::SleepFor(std::min(absl::Milliseconds(20), end - absl::Now()));
    const int64_t done = tally.done.load();
    const bool spent =
        plan.max_steps > 0 && done + tally.errors.load() >= plan.max_steps;
    if (absl::Now() >= next || spent || absl::Now() >= end) {
      std::fprintf(stderr, "  %3ds  %lld steps (%lld/s)  %lld errors\n",
                   second++, static_cast<long long>(done),
                   static_cast<long long>(done - last),
                   static_cast<long long>(tally.errors.load()));
      last = done;
      next += absl::Seconds(1);
    }
    if (spent) break;
  }
}

absl::Status Report(const BenchPlan& plan, const Tally& tally, double seconds) {
  const std::vector<double> step_ms = tally.SortedSteps();
  const std::vector<double> trip_ms = tally.SortedTrips();
  const std::vector<double> touched_mb = tally.SortedTouchedMb();
  const int64_t done = tally.done.load(), errors = tally.errors.load();
  const double tokens = static_cast<double>(done) * plan.batch * plan.tokens;
  std::printf(
      "  %lld ok, %lld errors in %.1f s: %.1f steps/s, %.0f tokens/s\n"
      "  latency ms: p50 %.3f  p90 %.3f  p99 %.3f  max %.3f\n",
      static_cast<long long>(done), static_cast<long long>(errors), seconds,
      done / seconds, tokens / seconds, Percentile(step_ms, 0.5),
      Percentile(step_ms, 0.9), Percentile(step_ms, 0.99),
      step_ms.empty() ? 0.0 : step_ms.back());
  if (plan.layers.size() > 1) {
    std::printf("  per layer round trip ms: p50 %.3f  p99 %.3f\n",
                Percentile(trip_ms, 0.5), Percentile(trip_ms, 0.99));
  }
  if (!touched_mb.empty() && touched_mb.back() > 0) {
    std::printf(
        "  expert weights read by the slowest worker per step, MB: p50 %.1f  "
        "max %.1f\n",
        Percentile(touched_mb, 0.5), touched_mb.back());
  }
  if (errors > 0) std::printf("  last error: %s\n", tally.last_error().c_str());
  const std::string json_out = absl::GetFlag(FLAGS_json_out);
  if (json_out.empty()) return absl::OkStatus();
  std::FILE* f = std::fopen(json_out.c_str(), "w");
  if (f == nullptr) {
    return absl::PermissionDeniedError("cannot write " + json_out);
  }
  std::fprintf(
      f,
      "{\"shape\": [%lld, %lld, %lld], \"layers_per_step\": %zu, "
      "\"concurrency\": %d, \"ok\": %lld, \"errors\": %lld, \"seconds\": "
      "%.3f, \"requests_per_s\": %.3f, \"tokens_per_s\": %.1f, \"p50_ms\": "
      "%.3f, \"p90_ms\": %.3f, \"p99_ms\": %.3f, \"max_ms\": %.3f, "
      "\"trip_p50_ms\": %.3f, \"trip_p99_ms\": %.3f, "
      "\"slowest_worker_weight_mb_p50\": %.3f}\n",
      static_cast<long long>(plan.batch), static_cast<long long>(plan.tokens),
      static_cast<long long>(plan.dim), plan.layers.size(), plan.concurrency,
      static_cast<long long>(done), static_cast<long long>(errors), seconds,
      done / seconds, tokens / seconds, Percentile(step_ms, 0.5),
      Percentile(step_ms, 0.9), Percentile(step_ms, 0.99),
      step_ms.empty() ? 0.0 : step_ms.back(), Percentile(trip_ms, 0.5),
      Percentile(trip_ms, 0.99), Percentile(touched_mb, 0.5));
  std::fclose(f);
  return absl::OkStatus();
}

}  // namespace

absl::Status RunBench() {
  MOE_ASSIGN_OR_RETURN(std::string target, TargetFromFlags("bench"));
  MOE_ASSIGN_OR_RETURN(client::ClientOptions options, ClientOptionsFromFlags());
  options.max_attempts = 1;
  auto client = client::RouterClient::Create(target, options);
  MOE_ASSIGN_OR_RETURN(moe::v1::ModelInfo info, client->GetModelInfo());
  MOE_ASSIGN_OR_RETURN(BenchPlan plan, PlanFromFlags(info));
  plan.target = target;
  plan.token = options.token;
  const std::string length = plan.max_steps > 0
                                 ? absl::StrCat(plan.max_steps, " steps")
                                 : absl::FormatDuration(plan.duration);
  if (plan.health) {
    std::printf(
        "bench: %s, grpc.health.v1 Check (gRPC's unary round trip), "
        "concurrency %d, %s\n",
        target.c_str(), plan.concurrency, length.c_str());
  } else {
    std::printf(
        "bench: %s, %s x [%lld, %lld, %lld], %zu layer(s) per step, "
        "concurrency %d, %s\n",
        target.c_str(),
        plan.stream  ? "ModelStreamInfer"
        : plan.infer ? "ModelInfer"
                     : "Forward",
        static_cast<long long>(plan.batch), static_cast<long long>(plan.tokens),
        static_cast<long long>(plan.dim), plan.layers.size(), plan.concurrency,
        length.c_str());
  }
  Tally tally;
  const absl::Time start = absl::Now();
  const absl::Time end = start + plan.duration;
  std::vector<std::thread> threads;
  for (int t = 0; t < plan.concurrency; ++t) {
    threads.emplace_back([&, t] {
      if (plan.health) {
        HealthLoadThread(plan, *client, end, tally);
      } else if (plan.infer) {
        InferLoadThread(plan, *client, t, end, tally);
      } else {
        LoadThread(plan, *client, t, end, tally);
      }
    });
  }
  ShowProgress(plan, start, end, tally);
  for (std::thread& t : threads) t.join();
  MOE_RETURN_IF_ERROR(
      Report(plan, tally, absl::ToDoubleSeconds(absl::Now() - start)));
  return tally.errors.load() == 0
             ? absl::OkStatus()
             : absl::UnavailableError("some requests failed");
}

}  // namespace moe::cli
