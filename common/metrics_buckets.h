// Histogram bucket boundaries shared by every process's metrics.
#pragma once

#include <vector>

namespace moe::common {

// Latency buckets in seconds, 0.5 ms to 30 s.
inline std::vector<double> LatencyBucketsSeconds() {
  return {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
          0.25,   0.5,   1.0,    2.5,   5.0,  10.0,  30.0};
}

}  // namespace moe::common
