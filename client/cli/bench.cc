// moe-client bench: closed-loop load on a router. `--concurrency` threads
// each send requests back to back for `--duration` seconds (or until
// `--requests`), with progress every second, then throughput and latency
// percentiles. Inputs vary: each request takes one of `--distinct_inputs`
// seeded tensors in turn. With --all_layers a step is one forward through
// every layer in order (the attention side's decode step); the latency is
// then per step, and per layer round trip beside it. When the router goes
// away the threads back off (100 ms doubling to 2 s) instead of spinning.
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/cli/client_flags.h"
#include "client/cli/commands.h"
#include "client/cli/forward_flags.h"
#include "common/random_input.h"
#include "common/status_macros.h"
#include "proto/tensor_codec.h"

ABSL_FLAG(int, concurrency, 1, "bench: requests in flight at once.");
ABSL_FLAG(double, duration, 10, "bench: seconds to run.");
ABSL_FLAG(int64_t, requests, 0,
          "bench: stop after this many requests (0: run --duration).");
ABSL_FLAG(std::string, shape, "1x32", "bench: input shape BxN.");
ABSL_FLAG(int, distinct_inputs, 16,
          "bench: distinct seeded inputs the requests cycle through.");
ABSL_FLAG(bool, all_layers, false,
          "bench: a step is one forward through every layer, in order.");
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
};

absl::StatusOr<BenchPlan> PlanFromFlags(const moe::v1::ModelInfo& info) {
  BenchPlan plan;
  MOE_ASSIGN_OR_RETURN(auto bn,
                       ParseBxN(absl::GetFlag(FLAGS_shape), "--shape"));
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
  const int distinct = std::max(1, absl::GetFlag(FLAGS_distinct_inputs));
  plan.requests.resize(distinct);
  for (int i = 0; i < distinct; ++i) {
    MOE_RETURN_IF_ERROR(proto::EncodeTensor(
        common::RandomNormalTensor({plan.batch, plan.tokens, plan.dim},
                                   InputSeedFromFlags() + i),
        plan.requests[i].mutable_x()));
    *plan.requests[i].mutable_options() = routing;
  }
  plan.concurrency = std::max(1, absl::GetFlag(FLAGS_concurrency));
  plan.duration = absl::Seconds(absl::GetFlag(FLAGS_duration));
  plan.max_steps = absl::GetFlag(FLAGS_requests);
  return plan;
}

// What the load threads measured, merged as each thread ends.
class Tally {
 public:
  void Merge(const std::vector<double>& steps,
             const std::vector<double>& trips) {
    absl::MutexLock lock(&mu_);
    step_ms_.insert(step_ms_.end(), steps.begin(), steps.end());
    trip_ms_.insert(trip_ms_.end(), trips.begin(), trips.end());
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
  std::string last_error_ ABSL_GUARDED_BY(mu_);
};

// One closed-loop client thread: steps back to back until `end` (or the
// step budget); backs off while the router is UNAVAILABLE.
void LoadThread(const BenchPlan& plan, client::RouterClient& client, int t,
                absl::Time end, Tally& tally) {
  std::vector<double> steps, trips;
  absl::Duration backoff = absl::Milliseconds(100);
  auto more = [&] {
    return absl::Now() < end &&
           (plan.max_steps <= 0 || tally.started.fetch_add(1) < plan.max_steps);
  };
  for (int64_t i = t; more(); i += plan.concurrency) {
    moe::v1::ForwardRequest request = plan.requests[i % plan.requests.size()];
    const absl::Time t0 = absl::Now();
    absl::Status status;
    for (const std::string& layer : plan.layers) {
      request.set_layer(layer);
      const absl::Time r0 = absl::Now();
      absl::StatusOr<moe::v1::ForwardResponse> r = client.Forward(request);
      status = !r.ok()         ? r.status()
               : r->degraded() ? client::DegradedError(*r)
                               : absl::OkStatus();
      if (!status.ok()) break;
      trips.push_back(absl::ToDoubleMilliseconds(absl::Now() - r0));
    }
    if (status.ok()) {
      steps.push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
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
  tally.Merge(steps, trips);
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
      "\"trip_p50_ms\": %.3f, \"trip_p99_ms\": %.3f}\n",
      static_cast<long long>(plan.batch), static_cast<long long>(plan.tokens),
      static_cast<long long>(plan.dim), plan.layers.size(), plan.concurrency,
      static_cast<long long>(done), static_cast<long long>(errors), seconds,
      done / seconds, tokens / seconds, Percentile(step_ms, 0.5),
      Percentile(step_ms, 0.9), Percentile(step_ms, 0.99),
      step_ms.empty() ? 0.0 : step_ms.back(), Percentile(trip_ms, 0.5),
      Percentile(trip_ms, 0.99));
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
  std::printf(
      "bench: %s, x [%lld, %lld, %lld], %zu layer(s) per step, "
      "concurrency %d, %s\n",
      target.c_str(), static_cast<long long>(plan.batch),
      static_cast<long long>(plan.tokens), static_cast<long long>(plan.dim),
      plan.layers.size(), plan.concurrency,
      plan.max_steps > 0 ? absl::StrCat(plan.max_steps, " steps").c_str()
                         : absl::FormatDuration(plan.duration).c_str());
  Tally tally;
  const absl::Time start = absl::Now();
  const absl::Time end = start + plan.duration;
  std::vector<std::thread> threads;
  for (int t = 0; t < plan.concurrency; ++t) {
    threads.emplace_back([&, t] { LoadThread(plan, *client, t, end, tally); });
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
