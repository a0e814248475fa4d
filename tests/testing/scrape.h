// A component's /metrics, read over HTTP as Prometheus scrapes it, for the
// integration tests.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "client/cli/metrics_text.h"

namespace moe::testing {

// The body of GET /metrics at HOST:PORT; nullopt when no 200 answer came.
std::optional<std::string> ScrapeText(const std::string& address);

// Its samples; none when no 200 answer came.
std::vector<cli::MetricSample> Scrape(const std::string& address);

// The sum of the samples of `metric` whose labels include `labels`; -1
// when /metrics could not be read.
double ScrapeSum(const std::string& address, const std::string& metric,
                 const std::map<std::string, std::string>& labels = {});

}  // namespace moe::testing
