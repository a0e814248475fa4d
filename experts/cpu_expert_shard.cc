#include "experts/cpu_expert_shard.h"

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/torch/torch_convert.h"
#include "experts/geglu.h"

namespace moe::experts {
namespace {

// GEGLU scratch larger than this is freed after the call instead of kept:
// one huge call must not pin its working set for the life of the process.
// (Blocks above glibc's mmap threshold, common/allocator.h, go back to the
// kernel when freed.)
constexpr int64_t kMaxKeptScratchBytes = int64_t{32} << 20;

}  // namespace

CpuExpertShard::CpuExpertShard(
    std::map<common::ExpertKey, common::ExpertWeights> experts, int64_t dim,
    int64_t weight_bytes)
    : experts_(std::move(experts)), dim_(dim), weight_bytes_(weight_bytes) {}

absl::StatusOr<std::unique_ptr<CpuExpertShard>> CpuExpertShard::Create(
    std::map<common::ExpertKey, common::ExpertWeights> experts) {
  if (experts.empty()) {
    return absl::InvalidArgumentError("CpuExpertShard: no experts given");
  }
  int64_t dim = 0, bytes = 0;
  MOE_RETURN_IF_ERROR(common::TorchCall("CpuExpertShard::Create", [&] {
    dim = experts.begin()->second.w1.size(1);
    for (auto& [key, w] : experts) {
      for (at::Tensor* t : {&w.w1, &w.b1, &w.mult_bias, &w.w2, &w.b2}) {
        *t = t->to(at::kCPU, at::kFloat).contiguous();
        bytes += static_cast<int64_t>(t->nbytes());
      }
    }
  }));
  for (const auto& [key, w] : experts) {
    const int64_t h = w.mult_bias.numel();
    if (w.w1.dim() != 2 || w.w1.size(0) != 2 * h || w.w1.size(1) != dim ||
        w.b1.numel() != 2 * h || w.w2.dim() != 2 || w.w2.size(0) != dim ||
        w.w2.size(1) != h || w.b2.numel() != dim) {
      return absl::InvalidArgumentError(absl::StrCat(
          "CpuExpertShard: expert ", key.expert, " of layer ", key.layer,
          " has shapes inconsistent with dim ", dim, " and hidden ", h));
    }
  }
  return std::unique_ptr<CpuExpertShard>(
      new CpuExpertShard(std::move(experts), dim, bytes));
}

std::vector<common::ExpertKey> CpuExpertShard::keys() const {
  std::vector<common::ExpertKey> out;
  for (const auto& [key, w] : experts_) out.push_back(key);
  return out;
}

at::Tensor CpuExpertShard::TakeScratch() const {
  absl::MutexLock lock(&scratch_mu_);
  if (scratch_.empty()) return at::Tensor();
  at::Tensor t = std::move(scratch_.back());
  scratch_.pop_back();
  return t;
}

void CpuExpertShard::ReturnScratch(at::Tensor t) const {
  if (!t.defined() || static_cast<int64_t>(t.nbytes()) > kMaxKeptScratchBytes) {
    return;
  }
  absl::MutexLock lock(&scratch_mu_);
  scratch_.push_back(std::move(t));
}

absl::Status CpuExpertShard::RunChecked(
    const TokenRows& tokens, absl::Span<const common::ExpertSegment> segments,
    float* out, std::vector<double>* seconds) const {
  if (tokens.rows == 0) return absl::OkStatus();
  return common::TorchCall("expert forward", [&] {
    c10::InferenceMode guard;
    at::Tensor x;
    if (tokens.dtype == common::DType::kFloat32) {
      x = at::from_blob(const_cast<void*>(tokens.data), {tokens.rows, dim_},
                        at::kFloat);
    } else {
      x = at::from_blob(const_cast<void*>(tokens.data), {tokens.rows, dim_},
                        tokens.dtype == common::DType::kBFloat16 ? at::kBFloat16
                                                                 : at::kHalf)
              .to(at::kFloat);
    }
    at::Tensor y = at::from_blob(out, {tokens.rows, dim_}, at::kFloat);
    // Scratch of an earlier call (kept by the shard, grown as needed), so
    // that calls of every size reuse one buffer.
    at::Tensor hidden = TakeScratch();
    struct GiveBack {
      const CpuExpertShard* shard;
      at::Tensor* hidden;
      ~GiveBack() { shard->ReturnScratch(std::move(*hidden)); }
    } give_back{this, &hidden};
    for (size_t i = 0; i < segments.size(); ++i) {
      const common::ExpertSegment& s = segments[i];
      if (s.count == 0) continue;
      const auto start = std::chrono::steady_clock::now();
      GegluForwardInto(experts_.at(s.key), x.narrow(0, s.offset, s.count),
                       hidden, y.narrow(0, s.offset, s.count));
      if (seconds != nullptr) {
        (*seconds)[i] = std::chrono::duration<double>(
                            std::chrono::steady_clock::now() - start)
                            .count();
      }
    }
  });
}

}  // namespace moe::experts
