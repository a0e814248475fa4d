#include "router/engine/expert_backend.h"

#include <ATen/ATen.h>

#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/host_tensor.h"

namespace moe::router {

absl::Status ExpertBackend::RunAndCombine(
    const at::Tensor& tokens, absl::Span<const experts::ExpertSegment> segments,
    const CombineTarget& target, std::vector<int64_t>* unavailable,
    int64_t* combine_us) {
  at::Tensor out;
  absl::Status status = RunExperts(tokens, segments, &out, unavailable);
  if (!status.ok()) return status;
  const int64_t n = static_cast<int64_t>(target.rows.size());
  const int64_t d = target.y->size(1);
  if (!out.defined() || out.dim() != 2 || out.size(0) != n ||
      out.size(1) != d) {
    return absl::InternalError(absl::StrCat(
        "expert backend returned shape ",
        out.defined() ? common::ShapeToString(std::vector<int64_t>(
                            out.sizes().begin(), out.sizes().end()))
                      : "(none)",
        ", expected [", n, ", ", d, "]"));
  }
  const auto start = std::chrono::steady_clock::now();
  at::Tensor rows = at::empty({n}, at::kLong);
  at::Tensor weights = at::empty({n, 1}, at::kFloat);
  if (n > 0) {
    std::memcpy(rows.data_ptr<int64_t>(), target.rows.data(),
                n * sizeof(int64_t));
    std::memcpy(weights.data_ptr<float>(), target.weights.data(),
                n * sizeof(float));
  }
  // y[t] += G · Expert(x[t]) for every kept choice.
  target.y->index_add_(0, rows, out.to(at::kFloat).mul(weights));
  *combine_us = std::chrono::duration_cast<std::chrono::microseconds>(
                    std::chrono::steady_clock::now() - start)
                    .count();
  return absl::OkStatus();
}

}  // namespace moe::router
