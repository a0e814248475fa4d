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
#include <mutex>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
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

}  // namespace

absl::Status RunBench() {
  MOE_ASSIGN_OR_RETURN(std::string target, TargetFromFlags("bench"));
  MOE_ASSIGN_OR_RETURN(client::ClientOptions options, ClientOptionsFromFlags());
  options.max_attempts = 1;
  auto client = client::RouterClient::Create(target, options);
  MOE_ASSIGN_OR_RETURN(moe::v1::ModelInfo info, client->GetModelInfo());
  MOE_ASSIGN_OR_RETURN(auto bn,
                       ParseBxN(absl::GetFlag(FLAGS_shape), "--shape"));
  MOE_ASSIGN_OR_RETURN(moe::v1::RoutingOptions routing,
                       RoutingOptionsFromFlags());
  routing.set_return_trace(false);
  std::vector<std::string> layers;
  if (absl::GetFlag(FLAGS_all_layers)) {
    for (const moe::v1::LayerInfo& l : info.layers())
      layers.push_back(l.name());
  } else {
    layers.push_back(LayerFromFlags());
  }
  const int distinct = std::max(1, absl::GetFlag(FLAGS_distinct_inputs));
  std::vector<moe::v1::ForwardRequest> requests(distinct);
  for (int i = 0; i < distinct; ++i) {
    MOE_RETURN_IF_ERROR(proto::EncodeTensor(
        common::RandomNormalTensor({bn.first, bn.second, info.dim()},
                                   InputSeedFromFlags() + i),
        requests[i].mutable_x()));
    *requests[i].mutable_options() = routing;
  }
  const int concurrency = std::max(1, absl::GetFlag(FLAGS_concurrency));
  const absl::Duration duration = absl::Seconds(absl::GetFlag(FLAGS_duration));
  const int64_t max_requests = absl::GetFlag(FLAGS_requests);
  std::printf(
      "bench: %s, x [%lld, %lld, %lld], %zu layer(s) per step, "
      "concurrency %d, %s\n",
      target.c_str(), static_cast<long long>(bn.first),
      static_cast<long long>(bn.second), static_cast<long long>(info.dim()),
      layers.size(), concurrency,
      max_requests > 0 ? absl::StrCat(max_requests, " steps").c_str()
                       : absl::FormatDuration(duration).c_str());
  std::atomic<int64_t> started{0}, done{0}, errors{0};
  std::mutex mu;
  std::vector<double> step_ms, trip_ms;
  std::string last_error;
  const absl::Time start = absl::Now();
  const absl::Time end = start + duration;
  auto more = [&] {
    return absl::Now() < end &&
           (max_requests <= 0 || started.fetch_add(1) < max_requests);
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < concurrency; ++t) {
    threads.emplace_back([&, t] {
      std::vector<double> steps, trips;
      absl::Duration backoff = absl::Milliseconds(100);
      for (int64_t i = t; more(); i += concurrency) {
        moe::v1::ForwardRequest request = requests[i % distinct];
        const absl::Time t0 = absl::Now();
        absl::Status status;
        for (const std::string& layer : layers) {
          request.set_layer(layer);
          const absl::Time r0 = absl::Now();
          absl::StatusOr<moe::v1::ForwardResponse> r = client->Forward(request);
          if (!r.ok()) {
            status = r.status();
            break;
          }
          if (r->degraded()) {
            status = client::DegradedError(*r);
            break;
          }
          trips.push_back(absl::ToDoubleMilliseconds(absl::Now() - r0));
        }
        if (status.ok()) {
          steps.push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
          ++done;
          backoff = absl::Milliseconds(100);
          continue;
        }
        ++errors;
        {
          std::lock_guard<std::mutex> lock(mu);
          last_error = status.ToString();
        }
        if (absl::IsUnavailable(status)) {
          absl::SleepFor(std::min(backoff, end - absl::Now()));
          backoff = std::min(backoff * 2, absl::Seconds(2));
        }
      }
      std::lock_guard<std::mutex> lock(mu);
      step_ms.insert(step_ms.end(), steps.begin(), steps.end());
      trip_ms.insert(trip_ms.end(), trips.begin(), trips.end());
    });
  }
  int64_t last = 0;
  for (int second = 1; absl::Now() < end; ++second) {
    absl::SleepFor(std::min(absl::Seconds(1), end - absl::Now()));
    const int64_t now_done = done.load();
    std::fprintf(stderr, "  %3ds  %lld steps (%lld/s)  %lld errors\n", second,
                 static_cast<long long>(now_done),
                 static_cast<long long>(now_done - last),
                 static_cast<long long>(errors.load()));
    last = now_done;
    if (max_requests > 0 && done.load() + errors.load() >= max_requests) break;
  }
  for (std::thread& t : threads) t.join();
  const double seconds = absl::ToDoubleSeconds(absl::Now() - start);
  std::sort(step_ms.begin(), step_ms.end());
  std::sort(trip_ms.begin(), trip_ms.end());
  const double tokens = static_cast<double>(done.load()) * bn.first * bn.second;
  std::printf(
      "  %lld ok, %lld errors in %.1f s: %.1f steps/s, %.0f tokens/s\n"
      "  latency ms: p50 %.3f  p90 %.3f  p99 %.3f  max %.3f\n",
      static_cast<long long>(done.load()),
      static_cast<long long>(errors.load()), seconds, done.load() / seconds,
      tokens / seconds, Percentile(step_ms, 0.5), Percentile(step_ms, 0.9),
      Percentile(step_ms, 0.99), step_ms.empty() ? 0.0 : step_ms.back());
  if (layers.size() > 1) {
    std::printf("  per layer round trip ms: p50 %.3f  p99 %.3f\n",
                Percentile(trip_ms, 0.5), Percentile(trip_ms, 0.99));
  }
  if (errors.load() > 0) std::printf("  last error: %s\n", last_error.c_str());
  const std::string json_out = absl::GetFlag(FLAGS_json_out);
  if (!json_out.empty()) {
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
        static_cast<long long>(bn.first), static_cast<long long>(bn.second),
        static_cast<long long>(info.dim()), layers.size(), concurrency,
        static_cast<long long>(done.load()),
        static_cast<long long>(errors.load()), seconds, done.load() / seconds,
        tokens / seconds, Percentile(step_ms, 0.5), Percentile(step_ms, 0.9),
        Percentile(step_ms, 0.99), step_ms.empty() ? 0.0 : step_ms.back(),
        Percentile(trip_ms, 0.5), Percentile(trip_ms, 0.99));
    std::fclose(f);
  }
  return errors.load() == 0 ? absl::OkStatus()
                            : absl::UnavailableError("some requests failed");
}

}  // namespace moe::cli
