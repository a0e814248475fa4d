// The expert worker's Prometheus metrics:
//   moe_expert_tokens_total{layer,expert}
//   moe_expert_forward_duration_seconds{layer,expert}  (histogram, per segment)
//   moe_expert_batch_tokens                            (histogram, per call)
//   moe_expert_call_duration_seconds{stage}            (histogram, per call:
//       stage "compute" = the call's compute, on a GPU its kernels and
//       GEMMs; "copy" = its host <-> device copies, GPU workers only)
//   moe_expert_stage_seconds_total{stage}              where calls spend
//       their time: parse (the request read and checked), copy_in (host to
//       device, GPU workers), compute, copy_out (device to host), serialize
//       (outputs converted to the wire dtype, the response built)
//   moe_expert_device_memory_bytes                     (GPU arena; 0 on CPU)
//   moe_expert_gpu_passes_total{path}                  passes of GPU calls by
//       the path they ran on: "small_rows" (decode-sized, our kernels) or
//       "gemm" (cuBLAS); 0 on CPU workers
//   moe_expert_inflight_requests, moe_expert_ready
//   moe_expert_placement_generation, moe_expert_weight_bytes (placement:
//       the last SetExperts' generation, the weights held)
// Series exist for every hosted expert from the start (and for every expert
// hosted since, after a placement change); their number is
// (hosted experts) x 18 (a counter and a 15-bucket histogram), see
// docs/operations.md, "Cardinality".
//
// Thread-safe.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <cstdint>
#include <map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/expert_segment.h"
#include "common/expert_set.h"
#include "common/model_spec.h"

namespace moe::experts {

class ExpertMetrics {
 public:
  // `registry` must outlive this object.
  ExpertMetrics(prometheus::Registry& registry, const common::ModelSpec& spec,
                const common::ExpertSet& hosted);

  void RecordBatch(int64_t tokens);
  // One call's stages, in seconds (copies: GPU workers only).
  struct CallStages {
    double parse = 0, copy_in = 0, compute = 0, copy_out = 0, serialize = 0;
  };
  void RecordCall(const CallStages& stages, bool gpu);
  // A GPU call's passes by path (RunStats).
  void RecordGpuPasses(int64_t small_rows, int64_t gemm);
  void SetDeviceMemory(int64_t bytes);
  // Series for the experts of `hosted` that have none yet.
  void Host(const common::ExpertSet& hosted);
  void SetPlacement(int64_t generation, int64_t weight_bytes);
  void RecordSegment(common::ExpertKey key, int64_t tokens, double seconds);
  void AddInflight(int delta);
  void SetReady(bool ready);
  // A call ran on the gRPC thread that received it (--inline_max_request_kib).
  void RecordInline() { inline_->Increment(); }

 private:
  struct PerExpert {
    prometheus::Counter* tokens;
    prometheus::Histogram* seconds;
  };
  const common::ModelSpec spec_;
  prometheus::Family<prometheus::Counter>* tokens_family_;
  prometheus::Family<prometheus::Histogram>* seconds_family_;
  absl::Mutex mu_;
  std::map<common::ExpertKey, PerExpert> experts_ ABSL_GUARDED_BY(mu_);
  prometheus::Histogram& batch_;
  prometheus::Histogram* call_compute_;
  prometheus::Histogram* call_copy_;
  prometheus::Counter* stage_[5];  // parse, copy_in, compute, copy_out,
                                   // serialize
  prometheus::Gauge& device_memory_;
  prometheus::Gauge& inflight_;
  prometheus::Gauge& ready_;
  prometheus::Gauge* generation_;
  prometheus::Gauge* weight_bytes_;
  prometheus::Counter* inline_;
  prometheus::Counter* small_rows_passes_;
  prometheus::Counter* gemm_passes_;
};

}  // namespace moe::experts
