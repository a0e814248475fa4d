// moe-client stats: a terminal view of a router's metrics, refreshed every
// --interval: requests, latency, drops by reason, per-layer balance, and
// the load per expert of one layer (--layer, else the busiest).
#include <httplib.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <limits>
#include <map>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "client/cli/client_flags.h"
#include "client/cli/commands.h"
#include "client/cli/metrics_text.h"
#include "common/status_macros.h"
#include "proto/cli/forward_flags.h"

ABSL_FLAG(double, interval, 1, "stats: seconds between refreshes.");
ABSL_FLAG(int, iterations, 0,
          "stats: refreshes before exiting (0: until Ctrl-C).");

namespace moe::cli {
namespace {

absl::StatusOr<std::vector<MetricSample>> Scrape(const std::string& host,
                                                 int port) {
  httplib::Client http(host, port);
  http.set_connection_timeout(2);
  http.set_read_timeout(5);
  auto res = http.Get("/metrics");
  if (!res || res->status != 200) {
    return absl::UnavailableError(
        absl::StrCat("cannot read http://", host, ":", port, "/metrics"));
  }
  return ParseMetricsText(res->body);
}

std::map<double, double> Buckets(const std::vector<MetricSample>& m,
                                 const std::string& name) {
  std::map<double, double> out;
  for (const MetricSample& s : m) {
    if (s.name != name) continue;
    auto le = s.labels.find("le");
    if (le == s.labels.end()) continue;
    double bound;
    if (le->second == "+Inf") {
      bound = std::numeric_limits<double>::infinity();
    } else if (!absl::SimpleAtod(le->second, &bound)) {
      continue;
    }
    out[bound] += s.value;
  }
  return out;
}

std::string Bar(double value, double max, int width) {
  const int n = max > 0 ? static_cast<int>(value * width / max + 0.5) : 0;
  return std::string(n, '#') + std::string(width - n, ' ');
}

// One screen from two scrapes `interval` seconds apart.
// Two scrapes `interval` seconds apart.
struct Window {
  const std::vector<MetricSample>& prev;
  const std::vector<MetricSample>& cur;
  double interval;

  double Delta(const std::string& name,
               const std::map<std::string, std::string>& match = {}) const {
    return SumSamples(cur, name, match) - SumSamples(prev, name, match);
  }
  double Rate(const std::string& name,
              const std::map<std::string, std::string>& match = {}) const {
    return Delta(name, match) / interval;
  }
  // Increase of `name` over the window, summed by the values of `label`.
  std::map<std::string, double> DeltaBy(const std::string& name,
                                        const std::string& label) const {
    std::map<std::string, double> out = SumBy(cur, name, label);
    for (const auto& [key, v] : SumBy(prev, name, label)) out[key] -= v;
    return out;
  }
};

void AppendTraffic(const Window& w, std::string& out) {
  const double all = w.Rate("moe_router_requests_total");
  absl::StrAppend(
      &out,
      absl::StrFormat(
          "requests  %.1f/s (errors %.1f/s)   tokens %.0f/s   in "
          "flight %.0f   total %.0f requests   degraded %.1f/s\n",
          all, all - w.Rate("moe_router_requests_total", {{"code", "OK"}}),
          w.Rate("moe_router_tokens_total"),
          SumSamples(w.cur, "moe_router_inflight_requests"),
          SumSamples(w.cur, "moe_router_requests_total"),
          w.Rate("moe_router_degraded_responses_total")));
  std::map<double, double> buckets =
      Buckets(w.cur, "moe_router_request_duration_seconds_bucket");
  const std::map<double, double> before =
      Buckets(w.prev, "moe_router_request_duration_seconds_bucket");
  for (auto& [le, count] : buckets) {
    auto it = before.find(le);
    if (it != before.end()) count -= it->second;
  }
  absl::StrAppend(&out,
                  absl::StrFormat("latency   p50 %.2f ms   p99 %.2f ms   (last "
                                  "interval, from histogram buckets)\n",
                                  HistogramQuantile(0.5, buckets) * 1e3,
                                  HistogramQuantile(0.99, buckets) * 1e3));
}

void AppendDrops(const Window& w, std::string& out) {
  const double kept = w.Delta("moe_router_expert_assignments_total");
  const std::map<std::string, double> dropped =
      w.DeltaBy("moe_router_dropped_assignments_total", "reason");
  double total = kept;
  for (const auto& [reason, d] : dropped) total += d;
  absl::StrAppend(&out, "drops    ");
  for (const auto& [reason, d] : dropped) {
    absl::StrAppend(&out, absl::StrFormat(" %s %.2f%%", reason,
                                          total > 0 ? 100 * d / total : 0.0));
  }
  absl::StrAppend(&out,
                  absl::StrFormat("   tokens that lost every choice %.1f/s\n",
                                  w.Rate("moe_router_dropped_tokens_total")));
}

// One line per layer; returns the layer to show experts of: `chosen`, or
// the busiest.
std::string AppendLayers(const Window& w, const std::string& chosen,
                         std::string& out) {
  std::string busiest = chosen;
  double busiest_rate = -1;
  absl::StrAppend(&out,
                  "layers (tokens/s, balancedness, capacity, balance "
                  "loss, z-loss):\n");
  for (const auto& [layer, tokens] :
       w.DeltaBy("moe_router_tokens_total", "layer")) {
    const double rate = tokens / w.interval;
    if (chosen.empty() && rate > busiest_rate) {
      busiest = layer;
      busiest_rate = rate;
    }
    const std::map<std::string, std::string> l = {{"layer", layer}};
    absl::StrAppend(
        &out, absl::StrFormat(
                  "  %-24s %8.0f   %.3f   %4.0f   %.4f   %.4f\n",
                  layer.empty() ? "(the only layer)" : layer, rate,
                  SumSamples(w.cur, "moe_router_load_balancedness", l),
                  SumSamples(w.cur, "moe_router_expert_capacity_tokens", l),
                  SumSamples(w.cur, "moe_router_balance_loss", l),
                  SumSamples(w.cur, "moe_router_router_z_loss", l)));
  }
  return busiest;
}

void AppendExpertLoad(const Window& w, const std::string& layer,
                      std::string& out) {
  std::map<int, double> load;  // expert -> kept assignments/s, both choices
  for (const MetricSample& s : w.cur) {
    if (s.name != "moe_router_expert_assignments_total") continue;
    auto l = s.labels.find("layer");
    int id;
    if (l == s.labels.end() || l->second != layer ||
        !absl::SimpleAtoi(s.labels.at("expert"), &id)) {
      continue;
    }
    const double before = SumSamples(w.prev, s.name,
                                     {{"layer", layer},
                                      {"expert", s.labels.at("expert")},
                                      {"choice", s.labels.at("choice")}});
    load[id] += (s.value - before) / w.interval;
  }
  double max_load = 0;
  for (const auto& [id, rate] : load) max_load = std::max(max_load, rate);
  absl::StrAppend(&out, "load per expert of layer ",
                  layer.empty() ? "(the only one)" : layer,
                  " (kept assignments/s):\n");
  for (const auto& [id, rate] : load) {
    absl::StrAppend(&out, absl::StrFormat("  expert %3d |%s| %.1f/s\n", id,
                                          Bar(rate, max_load, 40), rate));
  }
}

std::string Render(const std::string& target, int metrics_port, double interval,
                   const std::vector<MetricSample>& prev,
                   const std::vector<MetricSample>& cur,
                   const std::string& chosen_layer) {
  const Window w{prev, cur, interval};
  std::string out = absl::StrCat(
      "moe-serve router ", target, "  (metrics :", metrics_port, ")  ",
      absl::FormatTime("%H:%M:%S", absl::Now(), absl::LocalTimeZone()),
      "  interval ", interval, " s\n");
  AppendTraffic(w, out);
  AppendDrops(w, out);
  AppendExpertLoad(w, AppendLayers(w, chosen_layer, out), out);
  absl::StrAppend(&out, "workers:");
  for (const auto& [worker, up] :
       SumBy(cur, "moe_router_worker_up", "worker")) {
    absl::StrAppend(&out, " ", worker, up > 0 ? " up" : " DOWN", ";");
  }
  absl::StrAppend(&out, "\n");
  // Each worker's share of the time the workers spent on this router's
  // calls: where the load goes (moe-balancer evens it, docs/placement.md).
  // Over the window; with no call in it, since the router started.
  std::map<std::string, double> busy =
      w.DeltaBy("moe_router_worker_rpc_duration_seconds_sum", "worker");
  std::map<std::string, double> calls =
      w.DeltaBy("moe_router_worker_rpc_duration_seconds_count", "worker");
  double total = 0;
  for (const auto& [worker, seconds] : busy) total += seconds;
  const bool since_start = total <= 0;
  if (since_start) {
    busy = SumBy(cur, "moe_router_worker_rpc_duration_seconds_sum", "worker");
    calls =
        SumBy(cur, "moe_router_worker_rpc_duration_seconds_count", "worker");
    total = 0;
    for (const auto& [worker, seconds] : busy) total += seconds;
  }
  if (total > 0) {
    absl::StrAppend(&out, "worker load",
                    since_start ? " since start (share of call time, calls)"
                                : " (share of call time, calls/s)",
                    ":");
    for (const auto& [worker, seconds] : busy) {
      auto it = calls.find(worker);
      const double n = it == calls.end() ? 0.0 : it->second;
      absl::StrAppend(&out, absl::StrFormat(" %s %.0f%% %.1f%s;", worker,
                                            100 * seconds / total,
                                            since_start ? n : n / w.interval,
                                            since_start ? "" : "/s"));
    }
    absl::StrAppend(&out, "\n");
  }
  return out;
}

}  // namespace

absl::Status RunStats() {
  MOE_ASSIGN_OR_RETURN(std::string target, TargetFromFlags("stats"));
  MOE_ASSIGN_OR_RETURN(client::ClientOptions options, ClientOptionsFromFlags());
  MOE_ASSIGN_OR_RETURN(
      moe::v1::ModelInfo info,
      client::RouterClient::Create(target, options)->GetModelInfo());
  if (info.metrics_port() <= 0) {
    return absl::FailedPreconditionError(
        "the router serves no /metrics (started with --metrics_port=-1)");
  }
  const std::string host = target.substr(0, target.rfind(':'));
  const double interval = std::max(0.1, absl::GetFlag(FLAGS_interval));
  const int iterations = absl::GetFlag(FLAGS_iterations);
  const bool tty = ::isatty(STDOUT_FILENO);
  MOE_ASSIGN_OR_RETURN(std::vector<MetricSample> prev,
                       Scrape(host, info.metrics_port()));
  for (int it = 1; iterations <= 0 || it <= iterations; ++it) {
    absl::SleepFor(absl::Seconds(interval));
    MOE_ASSIGN_OR_RETURN(std::vector<MetricSample> cur,
                         Scrape(host, info.metrics_port()));
    std::string screen = tty ? "\033[H\033[2J" : "";
    screen += Render(target, info.metrics_port(), interval, prev, cur,
                     LayerFromFlags());
    std::fputs(screen.c_str(), stdout);
    std::fflush(stdout);
    prev = std::move(cur);
  }
  return absl::OkStatus();
}

}  // namespace moe::cli
