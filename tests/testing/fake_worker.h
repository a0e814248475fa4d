// FakeWorker: a router::WorkerTransport that stands for an expert worker in
// unit tests of the pool, the batcher and the remote backend. Its probes
// answer a configurable ShardInfo (or error); its RunExperts calls are
// recorded and finish when the test says so, with outputs of a known
// function of the rows (ScaledOutput), or at once in auto-reply mode.
//
// Thread-safety: all methods may be called concurrently.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/model_spec.h"
#include "experts/expert_shard.h"
#include "proto/expert_wire.h"
#include "router/remote/worker_transport.h"

namespace moe::testing {

// What a fake expert computes: row * (1 + expert + 100 * layer).
float ExpertScale(common::ExpertKey key);

// A model of two layers ("layer0", "layer1") of 4 experts of `dim`, for
// fakes that need no weights.
common::ModelSpec TwoLayerSpec(int64_t dim);

// An ExpertShard that computes ExpertScale, for expected results through a
// LocalExpertBackend and for unit tests of the worker service. It hosts
// `hosted`, or every expert when that is empty; any token dtype.
class ScalingShard : public experts::ExpertShard {
 public:
  explicit ScalingShard(int64_t dim, common::ExpertSet hosted = {})
      : dim_(dim), hosted_(std::move(hosted)) {}
  bool Hosts(common::ExpertKey key) const override {
    return hosted_.empty() || hosted_.Contains(key);
  }
  common::ExpertSet experts() const override { return hosted_; }
  int64_t dim() const override { return dim_; }
  int64_t weight_bytes() const override { return 0; }
  experts::Device device() const override { return experts::Device::Cpu(); }
  common::DType compute_dtype() const override {
    return common::DType::kFloat32;
  }

 protected:
  absl::Status RunChecked(const experts::TokenRows& tokens,
                          absl::Span<const common::ExpertSegment> segments,
                          float* out, experts::RunStats* stats) const override;

 private:
  int64_t dim_;
  common::ExpertSet hosted_;
};

class FakeWorker : public router::WorkerTransport {
 public:
  struct Call {
    absl::Time deadline;
    router::WorkerCallMetadata metadata;
    grpc::ByteBuffer request;
    Done done;
    bool cancelled = false;
    bool finished = false;
  };

  FakeWorker(std::string address, int64_t dim, moe::v1::ShardInfo info);

  const std::string& address() const override { return address_; }
  std::shared_ptr<router::WorkerCall> StartRunExperts(
      grpc::ByteBuffer request, absl::Time deadline,
      const router::WorkerCallMetadata& metadata, Done done) override;
  absl::StatusOr<moe::v1::ShardInfo> GetShardInfo(absl::Time deadline) override;

  void SetShardInfo(moe::v1::ShardInfo info);
  void SetProbeError(absl::Status error);
  // Answer every call at once (with ScaledOutput).
  void SetAutoReply(bool on);
  // Hand answers over in slices of `bytes` (0: as written), the way gRPC
  // delivers a large received message: rows straddle slices and most start
  // at an address that is not a multiple of 4.
  void SetReplySliceBytes(int64_t bytes);

  int calls() const;
  // Waits (real time) until `n` calls were started.
  bool WaitForCalls(int n, absl::Duration timeout = absl::Seconds(10));
  // The segments of call i, parsed.
  std::vector<common::ExpertSegment> Segments(int i) const;
  bool cancelled(int i) const;
  // The request IDs call i was sent for.
  std::vector<std::string> RequestIds(int i) const;
  // Everything call i carried besides its bytes.
  router::WorkerCallMetadata Metadata(int i) const;
  // Finishes call i: OK with the outputs of ExpertScale, or `error`.
  void Reply(int i);
  void Fail(int i, absl::Status error);

 private:
  class Handle;
  grpc::ByteBuffer Outputs(const grpc::ByteBuffer& request) const;

  const std::string address_;
  const int64_t dim_;
  mutable absl::Mutex mu_;
  moe::v1::ShardInfo info_ ABSL_GUARDED_BY(mu_);
  absl::Status probe_error_ ABSL_GUARDED_BY(mu_);
  bool auto_reply_ ABSL_GUARDED_BY(mu_) = false;
  int64_t reply_slice_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::shared_ptr<Call>> calls_ ABSL_GUARDED_BY(mu_);
};

// The ShardInfo of a worker of `spec` (fingerprint `fingerprint`) hosting
// `experts` (by layer index).
moe::v1::ShardInfo MakeShardInfo(
    const common::ModelSpec& spec, const std::string& fingerprint,
    const std::vector<std::vector<int64_t>>& experts);

}  // namespace moe::testing
