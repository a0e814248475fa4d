#include "router/service/layer_statistics.h"

#include <algorithm>

namespace moe::router {

void LayerStatistics::Sum::Add(absl::Duration d) {
  ++count;
  ns +=
      static_cast<uint64_t>(std::max<int64_t>(0, absl::ToInt64Nanoseconds(d)));
}

void LayerStatistics::Sum::To(inference::StatisticDuration* out) const {
  out->set_count(count);
  out->set_ns(ns);
}

LayerStatistics::LayerStatistics(int layers) {
  for (int l = 0; l < layers; ++l) layers_.push_back(std::make_unique<Layer>());
}

void LayerStatistics::Record(int layer, const Outcome& outcome) {
  if (layer < 0 || layer >= static_cast<int>(layers_.size())) return;
  Layer& s = *layers_[layer];
  absl::MutexLock lock(&s.mu);
  if (!outcome.ok) {
    s.fail.Add(outcome.total);
    return;
  }
  s.success.Add(outcome.total);
  s.last_inference_ms = static_cast<uint64_t>(
      std::max<int64_t>(0, absl::ToUnixMillis(outcome.end)));
  s.inference_count +=
      static_cast<uint64_t>(std::max<int64_t>(0, outcome.batch_size));
  ++s.execution_count;
  s.queue.Add(outcome.queue);
  auto add = [&outcome](Stages& stages) {
    stages.input.Add(outcome.input);
    stages.infer.Add(outcome.infer);
    stages.output.Add(outcome.output);
  };
  add(s.stages);
  auto it = s.batches.find(outcome.batch_size);
  if (it == s.batches.end() &&
      s.batches.size() < static_cast<size_t>(kMaxBatchSizes)) {
    it = s.batches.emplace(outcome.batch_size, Stages{}).first;
  }
  if (it != s.batches.end()) add(it->second);
}

void LayerStatistics::Fill(int layer, inference::ModelStatistics* stats) const {
  if (layer < 0 || layer >= static_cast<int>(layers_.size())) return;
  const Layer& s = *layers_[layer];
  absl::MutexLock lock(&s.mu);
  stats->set_last_inference(s.last_inference_ms);
  stats->set_inference_count(s.inference_count);
  stats->set_execution_count(s.execution_count);
  inference::InferStatistics* infer = stats->mutable_inference_stats();
  s.success.To(infer->mutable_success());
  s.fail.To(infer->mutable_fail());
  s.queue.To(infer->mutable_queue());
  s.stages.input.To(infer->mutable_compute_input());
  s.stages.infer.To(infer->mutable_compute_infer());
  s.stages.output.To(infer->mutable_compute_output());
  infer->mutable_cache_hit();
  infer->mutable_cache_miss();
  for (const auto& [size, stages] : s.batches) {
    inference::InferBatchStatistics* batch = stats->add_batch_stats();
    batch->set_batch_size(static_cast<uint64_t>(size));
    stages.input.To(batch->mutable_compute_input());
    stages.infer.To(batch->mutable_compute_infer());
    stages.output.To(batch->mutable_compute_output());
  }
}

}  // namespace moe::router
