// LayerStatistics: what the router has served of each layer of its model
// since it started, for the Open Inference Protocol's statistics extension
// (inference.GRPCInferenceService/ModelStatistics and REST GET
// /v2/models[/NAME]/stats, as Triton answers them; docs/open_inference.md):
// per layer, the requests that succeeded and failed with their summed
// durations, the sequences served (inference_count: x's first dimension),
// the forwards run (execution_count), and where a successful forward's time
// went: queue (arrival to the engine: parsing, admission, waiting for a
// forward thread), compute_input (the router's work before the worker
// calls: checks, feed-forward before, norm, gates, capacity, the dispatch
// plan), compute_infer (the worker calls, with combining their outputs as
// they come) and compute_output (feed-forward after, residual, the answer's
// encoding); the same three by batch size, for at most kMaxBatchSizes
// sizes per layer (later sizes are counted in the totals only).
//
// Thread-safety: Record and Fill may be called concurrently (a mutex per
// layer).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/btree_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "inference/open_inference_grpc.pb.h"

namespace moe::router {

class LayerStatistics {
 public:
  static constexpr int kMaxBatchSizes = 64;

  // How one request of a layer ended.
  struct Outcome {
    bool ok = false;
    int64_t batch_size = 0;  // x's first dimension
    absl::Duration total;    // from its arrival to its answer
    absl::Time end;          // when it was answered (last_inference)
    // A successful forward's stages (zero where not known).
    absl::Duration queue, input, infer, output;
  };

  explicit LayerStatistics(int layers);

  // One request of layer `layer` (ignored when out of range).
  void Record(int layer, const Outcome& outcome);
  // Layer `layer`'s counts into `stats` (not its name or version).
  void Fill(int layer, inference::ModelStatistics* stats) const;

 private:
  struct Sum {
    uint64_t count = 0;
    uint64_t ns = 0;
    void Add(absl::Duration d);
    void To(inference::StatisticDuration* out) const;
  };
  struct Stages {
    Sum input, infer, output;
  };
  struct Layer {
    mutable absl::Mutex mu;
    uint64_t last_inference_ms ABSL_GUARDED_BY(mu) = 0;
    uint64_t inference_count ABSL_GUARDED_BY(mu) = 0;
    uint64_t execution_count ABSL_GUARDED_BY(mu) = 0;
    Sum success ABSL_GUARDED_BY(mu);
    Sum fail ABSL_GUARDED_BY(mu);
    Sum queue ABSL_GUARDED_BY(mu);
    Stages stages ABSL_GUARDED_BY(mu);
    absl::btree_map<int64_t, Stages> batches ABSL_GUARDED_BY(mu);
  };

  std::vector<std::unique_ptr<Layer>> layers_;
};

}  // namespace moe::router
