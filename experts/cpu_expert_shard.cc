#include "experts/cpu_expert_shard.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <chrono>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"
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
// The GEGLU hidden block of one Run() ([rows, 2h]) stays within this, so
// that with the 16-bit token and output buffers it is kept.
constexpr int64_t kPartHiddenBytes = int64_t{24} << 20;

int64_t RoundUpToPowerOfTwo(int64_t n) {
  int64_t p = 1;
  while (p < n) p *= 2;
  return p;
}

// Segment i's time since `start`, into `stats` (if any).
void RecordSegment(std::chrono::steady_clock::time_point start, size_t i,
                   RunStats* stats) {
  if (stats == nullptr) return;
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  stats->segment_seconds[i] = seconds;
  stats->compute_seconds += seconds;
}

}  // namespace

CpuExpertShard::CpuExpertShard(
    std::map<common::ExpertKey, common::ExpertWeights> experts, int64_t dim,
    int64_t weight_bytes, common::DType compute, int threads,
    int64_t max_rows_per_run)
    : experts_(std::move(experts)),
      dim_(dim),
      weight_bytes_(weight_bytes),
      compute_(compute),
      threads_(threads),
      max_rows_per_run_(max_rows_per_run) {
  if (compute_ == common::DType::kFloat32) {
    for (const auto& [key, w] : experts_) skinny_[key] = SkinnyWeights(w);
  }
}

absl::StatusOr<std::unique_ptr<CpuExpertShard>> CpuExpertShard::Create(
    std::map<common::ExpertKey, common::ExpertWeights> experts,
    const CpuShardOptions& options) {
  if (experts.empty()) {
    return absl::InvalidArgumentError("CpuExpertShard: no experts given");
  }
  if (options.compute != common::DType::kFloat32 &&
      options.compute != common::DType::kBFloat16) {
    return absl::InvalidArgumentError(
        "CpuExpertShard: the compute dtype must be float32 or bfloat16");
  }
  const at::ScalarType type =
      options.compute == common::DType::kBFloat16 ? at::kBFloat16 : at::kFloat;
  int threads = 1;
  if (options.compute == common::DType::kBFloat16) {
    threads = options.threads > 0
                  ? options.threads
                  : static_cast<int>(std::thread::hardware_concurrency());
  }
  threads = std::max(1, threads);
  int64_t dim = 0, bytes = 0;
  MOE_RETURN_IF_ERROR(common::TorchCall("CpuExpertShard::Create", [&] {
    dim = experts.begin()->second.w1.size(1);
    for (auto& [key, w] : experts) {
      // Converted one tensor at a time: the float32 original is freed as
      // its bfloat16 copy replaces it.
      for (at::Tensor* t : {&w.w1, &w.b1, &w.mult_bias, &w.w2, &w.b2}) {
        *t = t->to(at::kCPU, type).contiguous();
        bytes += static_cast<int64_t>(t->nbytes());
      }
    }
    // float32: one, since its GEMMs run on OpenBLAS's own threads. Set
    // again in each thread that runs experts (RunChecked; see
    // common::UseIntraOpThreads).
    at::set_num_threads(threads);
  }));
  int64_t widest = 1;  // the largest hidden size
  for (const auto& [key, w] : experts) {
    const int64_t h = w.mult_bias.numel();
    widest = std::max(widest, h);
    if (w.w1.dim() != 2 || w.w1.size(0) != 2 * h || w.w1.size(1) != dim ||
        w.b1.numel() != 2 * h || w.w2.dim() != 2 || w.w2.size(0) != dim ||
        w.w2.size(1) != h || w.b2.numel() != dim) {
      return absl::InvalidArgumentError(absl::StrCat(
          "CpuExpertShard: expert ", key.expert, " of layer ", key.layer,
          " has shapes inconsistent with dim ", dim, " and hidden ", h));
    }
  }
  // A power of two rows (the scratch grows in powers of two), at least 256.
  const int64_t element = options.compute == common::DType::kBFloat16 ? 2 : 4;
  int64_t part = 256;
  while (part * 2 * 2 * widest * element <= kPartHiddenBytes) part *= 2;
  return std::unique_ptr<CpuExpertShard>(new CpuExpertShard(
      std::move(experts), dim, bytes, options.compute, threads, part));
}

common::ExpertSet CpuExpertShard::experts() const {
  common::ExpertSet out;
  for (const auto& [key, w] : experts_) out.Add(key);
  return out;
}

CpuExpertShard::Scratch CpuExpertShard::TakeScratch() const {
  absl::MutexLock lock(&scratch_mu_);
  if (scratch_.empty()) return Scratch();
  Scratch s = std::move(scratch_.back());
  scratch_.pop_back();
  return s;
}

void CpuExpertShard::ReturnScratch(Scratch s) const {
  int64_t bytes = 0;
  for (const at::Tensor* t : {&s.hidden, &s.out, &s.tokens}) {
    if (t->defined()) bytes += static_cast<int64_t>(t->nbytes());
  }
  if (bytes == 0 || bytes > kMaxKeptScratchBytes) return;
  absl::MutexLock lock(&scratch_mu_);
  scratch_.push_back(std::move(s));
}

bool CpuExpertShard::RunsSkinny(
    absl::Span<const common::ExpertSegment> segments) const {
  if (skinny_.empty() || !SkinnyLinearAvailable()) return false;
  for (const common::ExpertSegment& s : segments) {
    if (s.count > kSkinnyMaxRows) return false;
  }
  return true;
}

void CpuExpertShard::RunSkinny(const TokenRows& tokens,
                               absl::Span<const common::ExpertSegment> segments,
                               float* out, RunStats* stats) const {
  // Kept per thread between calls (small: at most kSkinnyMaxRows rows of
  // [2h] per segment; tokens converted only when they arrive in 16 bits).
  thread_local std::vector<float> converted, hidden;
  const float* x = static_cast<const float*>(tokens.data);
  if (tokens.dtype != common::DType::kFloat32) {
    converted.resize(static_cast<size_t>(tokens.rows * dim_));
    common::ConvertToFloat32(tokens.dtype, tokens.data, tokens.rows * dim_,
                             converted.data());
    x = converted.data();
  }
  for (size_t i = 0; i < segments.size(); ++i) {
    const common::ExpertSegment& s = segments[i];
    if (s.count == 0) continue;
    const auto start = std::chrono::steady_clock::now();
    const SkinnyExpert& e = skinny_.at(s.key);
    const size_t need = static_cast<size_t>(s.count * 2 * e.hidden);
    if (hidden.size() < need) hidden.resize(need);
    SkinnyGeglu(e, x + s.offset * dim_, s.count, hidden.data(),
                out + s.offset * dim_);
    RecordSegment(start, i, stats);
  }
  if (converted.capacity() > (size_t{1} << 20)) {
    std::vector<float>().swap(converted);  // not kept past 4 MiB
  }
}

absl::Status CpuExpertShard::RunChecked(
    const TokenRows& tokens, absl::Span<const common::ExpertSegment> segments,
    float* out, RunStats* stats) const {
  if (tokens.rows == 0) return absl::OkStatus();
  if (RunsSkinny(segments)) {
    RunSkinny(tokens, segments, out, stats);
    return absl::OkStatus();
  }
  return common::TorchCall("expert forward", [&] {
    c10::InferenceMode guard;
    common::UseIntraOpThreads(threads_);
    const at::ScalarType compute =
        compute_ == common::DType::kBFloat16 ? at::kBFloat16 : at::kFloat;
    const at::ScalarType arrived =
        tokens.dtype == common::DType::kFloat32    ? at::kFloat
        : tokens.dtype == common::DType::kBFloat16 ? at::kBFloat16
                                                   : at::kHalf;
    at::Tensor x = at::from_blob(const_cast<void*>(tokens.data),
                                 {tokens.rows, dim_}, arrived);
    at::Tensor y = at::from_blob(out, {tokens.rows, dim_}, at::kFloat);
    // Scratch of an earlier call (kept by the shard, grown as needed), so
    // that calls of every size reuse one buffer.
    Scratch scratch = TakeScratch();
    struct GiveBack {
      const CpuExpertShard* shard;
      Scratch* scratch;
      ~GiveBack() { shard->ReturnScratch(std::move(*scratch)); }
    } give_back{this, &scratch};
    if (x.scalar_type() != compute) {
      // Converted into a kept buffer, not a new tensor per call.
      if (!scratch.tokens.defined() || scratch.tokens.size(0) < tokens.rows) {
        scratch.tokens = at::empty({RoundUpToPowerOfTwo(tokens.rows), dim_},
                                   x.options().dtype(compute));
      }
      x = scratch.tokens.narrow(0, 0, tokens.rows).copy_(x);
    }
    for (size_t i = 0; i < segments.size(); ++i) {
      const common::ExpertSegment& s = segments[i];
      if (s.count == 0) continue;
      const auto start = std::chrono::steady_clock::now();
      at::Tensor rows = y.narrow(0, s.offset, s.count);
      if (compute == at::kFloat) {
        GegluForwardInto(experts_.at(s.key), x.narrow(0, s.offset, s.count),
                         scratch.hidden, rows);
      } else {
        // The bfloat16 result of the segment, then float32 into `out`.
        if (!scratch.out.defined() || scratch.out.size(0) < s.count) {
          scratch.out =
              at::empty({RoundUpToPowerOfTwo(s.count), dim_}, x.options());
        }
        at::Tensor result = scratch.out.narrow(0, 0, s.count);
        GegluForwardInto(experts_.at(s.key), x.narrow(0, s.offset, s.count),
                         scratch.hidden, result);
        rows.copy_(result);
      }
      RecordSegment(start, i, stats);
    }
  });
}

}  // namespace moe::experts
