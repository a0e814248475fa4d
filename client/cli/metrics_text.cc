#include "client/cli/metrics_text.h"

#include <limits>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace moe::cli {

std::vector<MetricSample> ParseMetricsText(absl::string_view text) {
  std::vector<MetricSample> out;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line[0] == '#') continue;
    const size_t space = line.rfind(' ');
    if (space == absl::string_view::npos) continue;
    MetricSample s;
    if (!absl::SimpleAtod(line.substr(space + 1), &s.value)) {
      if (line.substr(space + 1) == "+Inf") {
        s.value = std::numeric_limits<double>::infinity();
      } else {
        continue;
      }
    }
    absl::string_view series = line.substr(0, space);
    const size_t brace = series.find('{');
    if (brace == absl::string_view::npos) {
      s.name = std::string(series);
    } else {
      s.name = std::string(series.substr(0, brace));
      absl::string_view labels = series.substr(brace + 1);
      labels = absl::StripSuffix(labels, "}");
      for (absl::string_view kv :
           absl::StrSplit(labels, "\",", absl::SkipEmpty())) {
        const size_t eq = kv.find('=');
        if (eq == absl::string_view::npos) continue;
        absl::string_view v = kv.substr(eq + 1);
        v = absl::StripPrefix(absl::StripSuffix(v, "\""), "\"");
        s.labels[std::string(kv.substr(0, eq))] = std::string(v);
      }
    }
    out.push_back(std::move(s));
  }
  return out;
}

double SumSamples(const std::vector<MetricSample>& samples,
                  const std::string& name,
                  const std::map<std::string, std::string>& match) {
  double total = 0;
  for (const MetricSample& s : samples) {
    if (s.name != name) continue;
    bool ok = true;
    for (const auto& [k, v] : match) {
      auto it = s.labels.find(k);
      ok = ok && it != s.labels.end() && it->second == v;
    }
    if (ok) total += s.value;
  }
  return total;
}

std::map<std::string, double> SumBy(const std::vector<MetricSample>& samples,
                                    const std::string& name,
                                    const std::string& label) {
  std::map<std::string, double> out;
  for (const MetricSample& s : samples) {
    if (s.name != name) continue;
    auto it = s.labels.find(label);
    if (it != s.labels.end()) out[it->second] += s.value;
  }
  return out;
}

double HistogramQuantile(double q, const std::map<double, double>& buckets) {
  if (buckets.empty()) return 0;
  const double total = buckets.rbegin()->second;
  if (total <= 0) return 0;
  const double rank = q * total;
  double prev_le = 0, prev_count = 0;
  for (const auto& [le, count] : buckets) {
    if (count >= rank) {
      if (le == std::numeric_limits<double>::infinity()) return prev_le;
      if (count == prev_count) return le;
      return prev_le +
             (le - prev_le) * (rank - prev_count) / (count - prev_count);
    }
    prev_le = le;
    prev_count = count;
  }
  return prev_le;
}

}  // namespace moe::cli
