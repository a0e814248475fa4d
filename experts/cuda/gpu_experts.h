// GpuExperts: a shard's experts resident on one CUDA device, without
// LibTorch. At start-up it makes one device allocation (the arena: every
// expert's weights once, in the compute dtype, then one workspace per
// stream) and, per stream, a cuBLAS handle, timing events and pinned
// staging buffers; nothing is allocated on the call path. A call copies its
// token rows in through the stream's pinned staging, runs its segments as
// passes (gpu_plan.h: one grouped GEMM for all experts' up projections, the
// fused GEGLU kernel, one grouped GEMM for the down projections, the
// epilogue; a decode-sized pass, whose experts get at most
// GpuOptions::small_rows rows each, runs on the two small-rows kernels of
// geglu_kernels.h instead) and copies the float32 rows it wrote back out.
//
// float32 compute is exact float32 (TF32 off: CUBLAS_COMPUTE_32F, default
// math), so it agrees with the CPU experts to 1e-5; bfloat16 compute holds
// the weights in bfloat16, converts tokens on arrival, accumulates the
// GEMMs in float32 and runs GELU and the products in float32 on bfloat16
// values.
//
// Thread-safety: Run() may be called concurrently; up to `streams` calls
// run at once, each on a stream of its own, and further callers wait for a
// free one.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "experts/cuda/gpu_plan.h"
#include "experts/cuda/gpu_status.h"
#include "experts/cuda/gpu_types.h"
#include "experts/cuda/host_expert.h"

namespace moe::experts::gpu {

struct CublasApi;  // experts/cuda/cublas_api.h

struct GpuOptions {
  int device = 0;                                   // CUDA ordinal
  common::DType compute = common::DType::kFloat32;  // kFloat32 or kBFloat16
  int streams = 2;                                  // calls in flight at once
  int64_t max_rows = 65536;                         // token rows per call
  int64_t max_problems = 4096;  // segments per pass (<= 65535)
  // false: one cublasGemmEx per expert instead of the grouped GEMM (for
  // comparison in moe-gpu-check).
  bool grouped = true;
  // A pass whose problems have at most this many rows each (and whose dim
  // is a multiple of 8) takes the small-rows path: two kernels of ours
  // that stream each weight row once for all of a problem's rows, instead
  // of two GEMMs and two kernels (geglu_kernels.h). 0 turns it off; at
  // most kMaxSmallRows.
  int small_rows = kMaxSmallRows;
};

struct DeviceInfo {
  int ordinal = 0;
  std::string name;
  int major = 0, minor = 0;
  int multiprocessors = 0;
  size_t total_bytes = 0, free_bytes = 0;
};

// Where one call's time went, from CUDA events on its stream.
struct CallTiming {
  double copy_in_seconds = 0;   // pinned staging -> device
  double compute_seconds = 0;   // conversion, GEMMs, kernels
  double copy_out_seconds = 0;  // device -> pinned staging
  int passes = 0;
  int small_rows_passes = 0;  // of passes, on the small-rows kernels
};

// The number of CUDA devices this process sees; 0 with *why saying why
// (no driver, no device, built without CUDA).
int VisibleDevices(std::string* why);

// The device's name, capability, size and free memory.
Status QueryDevice(int ordinal, DeviceInfo* info);

class GpuExperts {
 public:
  // Uploads `experts` (all of one dim; hidden sizes may differ) to device
  // options.device. FailedPrecondition when no such device is visible,
  // ResourceExhausted (naming the device, what was needed and what is
  // free) when the arena or the pinned staging does not fit,
  // InvalidArgument for malformed experts or options.
  static Status Create(const std::vector<HostExpert>& experts,
                       const GpuOptions& options,
                       std::unique_ptr<GpuExperts>* out);
  ~GpuExperts();
  GpuExperts(const GpuExperts&) = delete;
  GpuExperts& operator=(const GpuExperts&) = delete;

  // Runs rows [s.offset, s.offset + s.count) of `tokens` ([rows, dim()] of
  // `dtype`) through expert s.expert (an index into Create's vector) for
  // every segment, writing float32 rows of `out` ([rows, dim()]); rows no
  // segment covers are left as they are, and of overlapping segments the
  // later one wins. REQUIRES: segments lie within the rows and name
  // experts that exist (ExpertShard::Run checks both). InvalidArgument when
  // rows > max_rows; Internal when CUDA or cuBLAS fails.
  Status Run(common::DType dtype, const void* tokens, int64_t rows,
             const std::vector<PlanSegment>& segments, float* out,
             CallTiming* timing) const;

  int64_t dim() const { return dim_; }
  const DeviceInfo& device() const { return device_; }
  const GpuOptions& options() const { return options_; }
  size_t weight_bytes() const { return weight_bytes_; }
  size_t arena_bytes() const { return arena_bytes_; }
  size_t pinned_bytes() const { return pinned_bytes_; }

 private:
  struct Stream;
  GpuExperts(int64_t dim, const GpuOptions& options);
  // "cuda:0 (NVIDIA H200)", for messages.
  std::string Name() const;
  // The arena (weights, then a workspace per stream, whose offsets go to
  // *workspaces), allocated and filled.
  Status PlaceWeights(const std::vector<HostExpert>& experts,
                      std::vector<size_t>* workspaces);
  Status Upload(const std::vector<HostExpert>& experts);
  // A CUDA stream, cuBLAS handle, events and pinned staging per workspace.
  Status CreateStreams(const std::vector<size_t>& workspaces,
                       const CublasApi& blas);
  Status RunOn(Stream& s, common::DType dtype, const void* tokens, int64_t rows,
               const std::vector<PlanSegment>& segments, float* out,
               CallTiming* timing) const;
  // Whether a pass runs on the small-rows kernels (GpuOptions::small_rows).
  bool UsesSmallRows(const PassLaunch& launch) const;
  Stream* Acquire() const;
  void Release(Stream* s) const;

  const int64_t dim_;
  const GpuOptions options_;
  DeviceInfo device_;
  WorkspaceLayout workspace_;
  void* arena_ = nullptr;
  size_t arena_bytes_ = 0;
  size_t weight_bytes_ = 0;
  size_t pinned_bytes_ = 0;
  std::vector<ExpertDevicePtrs> experts_;
  std::vector<int64_t> hidden_;
  std::vector<std::unique_ptr<Stream>> streams_;

  mutable std::mutex mu_;
  mutable std::condition_variable free_cv_;
  mutable std::vector<Stream*> free_;  // guarded by mu_
};

}  // namespace moe::experts::gpu
