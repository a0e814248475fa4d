#include "experts/expert_shard.h"

#include <ATen/ATen.h>

#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/torch_convert.h"
#include "experts/geglu.h"

namespace moe::experts {

ExpertShard::ExpertShard(common::ExpertMap experts, c10::Device device,
                         int64_t dim, int64_t hidden, int64_t weight_bytes)
    : experts_(std::move(experts)),
      device_(device),
      dim_(dim),
      hidden_(hidden),
      weight_bytes_(weight_bytes) {}

absl::StatusOr<std::unique_ptr<ExpertShard>> ExpertShard::Create(
    common::ExpertMap experts, c10::Device device) {
  if (experts.empty()) {
    return absl::InvalidArgumentError("ExpertShard: no experts given");
  }
  const common::ExpertWeights& first = experts.begin()->second;
  const int64_t dim = first.w1.size(1);
  const int64_t hidden = first.mult_bias.size(0);
  int64_t bytes = 0;
  MOE_RETURN_IF_ERROR(common::TorchCall("ExpertShard::Create", [&] {
    for (auto& [id, w] : experts) {
      for (at::Tensor* t : {&w.w1, &w.b1, &w.mult_bias, &w.w2, &w.b2}) {
        *t = t->to(device, at::kFloat).contiguous();
        bytes += static_cast<int64_t>(t->nbytes());
      }
    }
  }));
  for (const auto& [id, w] : experts) {
    if (w.w1.dim() != 2 || w.w1.size(0) != 2 * hidden || w.w1.size(1) != dim ||
        w.b1.numel() != 2 * hidden || w.mult_bias.numel() != hidden ||
        w.w2.dim() != 2 || w.w2.size(0) != dim || w.w2.size(1) != hidden ||
        w.b2.numel() != dim) {
      return absl::InvalidArgumentError(absl::StrCat(
          "ExpertShard: expert ", id, " has shapes that differ from expert ",
          experts.begin()->first));
    }
  }
  return std::unique_ptr<ExpertShard>(
      new ExpertShard(std::move(experts), device, dim, hidden, bytes));
}

at::Tensor ExpertShard::TakeScratch() const {
  std::lock_guard<std::mutex> lock(scratch_mu_);
  if (scratch_.empty()) return at::Tensor();
  at::Tensor t = std::move(scratch_.back());
  scratch_.pop_back();
  return t;
}

void ExpertShard::ReturnScratch(at::Tensor t) const {
  if (!t.defined()) return;
  std::lock_guard<std::mutex> lock(scratch_mu_);
  scratch_.push_back(std::move(t));
}

bool ExpertShard::Hosts(int64_t expert_id) const {
  return experts_.count(expert_id) != 0;
}

std::vector<int64_t> ExpertShard::expert_ids() const {
  std::vector<int64_t> ids;
  for (const auto& [id, w] : experts_) ids.push_back(id);
  return ids;
}

absl::Status ExpertShard::Run(const at::Tensor& tokens,
                              absl::Span<const ExpertSegment> segments,
                              at::Tensor* out,
                              std::vector<double>* seconds) const {
  if (tokens.dim() != 2 || tokens.size(1) != dim_) {
    return absl::InvalidArgumentError(
        absl::StrCat("expert tokens must be [T, ", dim_, "], got ",
                     common::ShapeToString(std::vector<int64_t>(
                         tokens.sizes().begin(), tokens.sizes().end()))));
  }
  int64_t total = 0;
  for (const ExpertSegment& s : segments) {
    if (!Hosts(s.expert_id)) {
      return absl::InvalidArgumentError(
          absl::StrCat("expert ", s.expert_id, " is not hosted by this shard"));
    }
    if (s.count < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("expert ", s.expert_id, " has a negative token count"));
    }
    total += s.count;
  }
  if (total != tokens.size(0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("segment counts add up to ", total, " but ",
                     tokens.size(0), " token rows were given"));
  }
  return common::TorchCall("expert forward", [&] {
    at::Tensor x = tokens.to(device_, at::kFloat).contiguous();
    at::Tensor y = out->defined() && out->device() == device_ &&
                           out->scalar_type() == at::kFloat &&
                           out->dim() == 2 && out->size(0) == total &&
                           out->size(1) == dim_ && out->is_contiguous()
                       ? *out
                       : at::empty({total, dim_}, x.options());
    // Scratch of an earlier call (kept by the shard, grown as needed), so
    // that calls of every size reuse one buffer.
    at::Tensor hidden = TakeScratch();
    struct GiveBack {
      const ExpertShard* shard;
      at::Tensor* hidden;
      ~GiveBack() { shard->ReturnScratch(std::move(*hidden)); }
    } give_back{this, &hidden};
    int64_t offset = 0;
    if (seconds != nullptr) seconds->assign(segments.size(), 0.0);
    for (size_t i = 0; i < segments.size(); ++i) {
      const ExpertSegment& s = segments[i];
      if (s.count == 0) continue;
      const auto start = std::chrono::steady_clock::now();
      GegluForwardInto(experts_.at(s.expert_id), x.narrow(0, offset, s.count),
                       hidden, y.narrow(0, offset, s.count));
      if (seconds != nullptr) {
        (*seconds)[i] = std::chrono::duration<double>(
                            std::chrono::steady_clock::now() - start)
                            .count();
      }
      offset += s.count;
    }
    *out = tokens.device() == device_ ? y : y.to(tokens.device());
  });
}

}  // namespace moe::experts
