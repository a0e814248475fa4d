#include "testing/scrape.h"

#include <httplib.h>

namespace moe::testing {

std::optional<std::string> ScrapeText(const std::string& address) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) return std::nullopt;
  httplib::Client http(address.substr(0, colon),
                       std::stoi(address.substr(colon + 1)));
  auto res = http.Get("/metrics");
  if (!res || res->status != 200) return std::nullopt;
  return res->body;
}

std::vector<cli::MetricSample> Scrape(const std::string& address) {
  const std::optional<std::string> text = ScrapeText(address);
  return text ? cli::ParseMetricsText(*text) : std::vector<cli::MetricSample>{};
}

double ScrapeSum(const std::string& address, const std::string& metric,
                 const std::map<std::string, std::string>& labels) {
  const std::optional<std::string> text = ScrapeText(address);
  return text ? cli::SumSamples(cli::ParseMetricsText(*text), metric, labels)
              : -1;
}

}  // namespace moe::testing
