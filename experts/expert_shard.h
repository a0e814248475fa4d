// ExpertShard: the experts a process hosts (a worker's share of every layer,
// or all of them for the in-process engine) and the one way to run them:
// segments of token rows, each through its expert, float32 outputs row for
// row. Implementations: CpuExpertShard (LibTorch, experts/cpu_expert_shard.h)
// and, where CUDA is built, the GPU shard (experts/cuda/).
//
// The interface speaks raw rows, so the worker service and the router's
// in-process backend need no LibTorch of their own.
//
// Thread-safety: implementations are immutable after creation; Run() may be
// called concurrently.
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "common/dtype.h"
#include "common/expert_segment.h"
#include "common/expert_set.h"
#include "experts/device.h"

namespace moe::experts {

// `rows` token rows of dim() elements of `dtype` (kFloat32, kBFloat16 or
// kFloat16), contiguous at `data`.
struct TokenRows {
  common::DType dtype = common::DType::kFloat32;
  const void* data = nullptr;
  int64_t rows = 0;
};

// What one Run() measured.
struct RunStats {
  // Each segment's compute seconds (on a GPU, its share of the call's).
  std::vector<double> segment_seconds;
  // The whole call's compute seconds (on a GPU: its kernels and GEMMs).
  double compute_seconds = 0;
  // Host -> device and device -> host copies (GPU shards only).
  double copy_in_seconds = 0;
  double copy_out_seconds = 0;
  // GPU shards: the call's passes that ran on the small-rows kernels and
  // on the GEMMs (docs/gpu.md, "What a call does").
  int64_t small_rows_passes = 0;
  int64_t gemm_passes = 0;

  // Adds `o`'s call-wide figures (all but segment_seconds) to these.
  void AddTotals(const RunStats& o) {
    compute_seconds += o.compute_seconds;
    copy_in_seconds += o.copy_in_seconds;
    copy_out_seconds += o.copy_out_seconds;
    small_rows_passes += o.small_rows_passes;
    gemm_passes += o.gemm_passes;
  }
};

class ExpertShard {
 public:
  virtual ~ExpertShard() = default;

  virtual bool Hosts(common::ExpertKey key) const = 0;
  // The hosted experts.
  virtual common::ExpertSet experts() const = 0;
  virtual int64_t dim() const = 0;
  // Bytes of parameters held (in the compute dtype).
  virtual int64_t weight_bytes() const = 0;
  virtual Device device() const = 0;
  // kFloat32 or kBFloat16.
  virtual common::DType compute_dtype() const = 0;
  // Device memory held (GPU shards: their arena), 0 on the CPU.
  virtual int64_t device_memory_bytes() const { return 0; }
  // The most rows one Run() should be given: callers split bigger blocks
  // (ExpertService does), so that a call's working memory is bounded by
  // this many rows, not by the call. Any number by default.
  virtual int64_t max_rows_per_run() const {
    return std::numeric_limits<int64_t>::max();
  }

  // OK when every segment names a hosted expert and lies within `rows`
  // rows; else FailedPrecondition (an expert not hosted: a router asks a
  // replica) or InvalidArgument (rows), naming segments[i]. Run() checks
  // this.
  absl::Status CheckSegments(
      int64_t rows, absl::Span<const common::ExpertSegment> segments) const;

  // Runs rows [s.offset, s.offset + s.count) of `tokens` through expert
  // s.key for every segment and writes the float32 results to the same rows
  // of `out` ([tokens.rows, dim()]); rows no segment covers are left as
  // they are. With `stats`, it receives what the call measured.
  // FailedPrecondition (naming the segment) for an expert not hosted,
  // InvalidArgument for a negative count or offset, or rows outside the block
  // (checked without overflow); Internal for a failure of the library
  // underneath.
  absl::Status Run(const TokenRows& tokens,
                   absl::Span<const common::ExpertSegment> segments, float* out,
                   RunStats* stats = nullptr) const;

 protected:
  // Run() after its checks passed, with stats->segment_seconds (if any)
  // sized and zeroed.
  virtual absl::Status RunChecked(
      const TokenRows& tokens, absl::Span<const common::ExpertSegment> segments,
      float* out, RunStats* stats) const = 0;
};

}  // namespace moe::experts
