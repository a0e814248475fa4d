// A small parser of the Prometheus text exposition format, and the
// arithmetic moe-client stats needs (sums by label, histogram quantiles).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace moe::cli {

struct MetricSample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

std::vector<MetricSample> ParseMetricsText(absl::string_view text);

// Sum of the samples called `name` whose labels include `match`.
double SumSamples(const std::vector<MetricSample>& samples,
                  const std::string& name,
                  const std::map<std::string, std::string>& match = {});

// Sums grouped by the value of `label`.
std::map<std::string, double> SumBy(const std::vector<MetricSample>& samples,
                                    const std::string& name,
                                    const std::string& label);

// The q-quantile of a histogram given the cumulative bucket counts by upper
// bound (le, "+Inf" last), interpolating linearly inside a bucket as
// Prometheus' histogram_quantile does. 0 when empty.
double HistogramQuantile(double q, const std::map<double, double>& buckets);

}  // namespace moe::cli
