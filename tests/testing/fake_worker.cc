#include "testing/fake_worker.h"

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"

namespace moe::testing {

float ExpertScale(common::ExpertKey key) {
  return 1.0f + static_cast<float>(key.expert) + 100.0f * key.layer;
}

common::ModelSpec TwoLayerSpec(int64_t dim) {
  common::ModelSpec spec;
  spec.name = "fake";
  spec.dim = dim;
  common::LayerConfig c;
  c.dim = dim;
  c.num_experts = 4;
  spec.layers = {{"layer0", c}, {"layer1", c}};
  return spec;
}

absl::Status ScalingShard::RunChecked(
    const experts::TokenRows& tokens,
    absl::Span<const common::ExpertSegment> segments, float* out,
    experts::RunStats* /*stats*/) const {
  std::vector<float> in(static_cast<size_t>(tokens.rows * dim_));
  common::ConvertToFloat32(tokens.dtype, tokens.data,
                           static_cast<int64_t>(in.size()), in.data());
  for (const common::ExpertSegment& s : segments) {
    const float scale = ExpertScale(s.key);
    for (int64_t i = s.offset * dim_; i < (s.offset + s.count) * dim_; ++i) {
      out[i] = in[i] * scale;
    }
  }
  return absl::OkStatus();
}

class FakeWorker::Handle : public router::WorkerCall {
 public:
  Handle(FakeWorker* worker, int index) : worker_(worker), index_(index) {}
  void Cancel() override {
    std::shared_ptr<Call> call;
    {
      absl::MutexLock lock(&worker_->mu_);
      call = worker_->calls_[index_];
      if (call->finished) return;
      call->cancelled = true;
      call->finished = true;
    }
    call->done(absl::CancelledError("cancelled"), grpc::ByteBuffer());
  }

 private:
  FakeWorker* worker_;
  int index_;
};

FakeWorker::FakeWorker(std::string address, int64_t dim,
                       moe::v1::ShardInfo info)
    : address_(std::move(address)), dim_(dim) {
  absl::MutexLock lock(&mu_);
  info_ = std::move(info);
}

std::shared_ptr<router::WorkerCall> FakeWorker::StartRunExperts(
    grpc::ByteBuffer request, absl::Time deadline,
    const router::WorkerCallMetadata& metadata, Done done) {
  int index;
  bool reply;
  {
    absl::MutexLock lock(&mu_);
    auto call = std::make_shared<Call>();
    call->deadline = deadline;
    call->metadata = metadata;
    call->request = std::move(request);
    call->done = std::move(done);
    calls_.push_back(call);
    index = static_cast<int>(calls_.size()) - 1;
    reply = auto_reply_;
  }
  if (reply) Reply(index);
  return std::make_shared<Handle>(this, index);
}

absl::StatusOr<moe::v1::ShardInfo> FakeWorker::GetShardInfo(absl::Time) {
  absl::MutexLock lock(&mu_);
  if (!probe_error_.ok()) return probe_error_;
  return info_;
}

void FakeWorker::SetShardInfo(moe::v1::ShardInfo info) {
  absl::MutexLock lock(&mu_);
  info_ = std::move(info);
  probe_error_ = absl::OkStatus();
}

void FakeWorker::SetProbeError(absl::Status error) {
  absl::MutexLock lock(&mu_);
  probe_error_ = std::move(error);
}

void FakeWorker::SetReplySliceBytes(int64_t bytes) {
  absl::MutexLock lock(&mu_);
  reply_slice_bytes_ = bytes;
}

void FakeWorker::SetAutoReply(bool on) {
  absl::MutexLock lock(&mu_);
  auto_reply_ = on;
}

int FakeWorker::calls() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(calls_.size());
}

bool FakeWorker::WaitForCalls(int n, absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return static_cast<int>(calls_.size()) >= n;
  };
  return mu_.AwaitWithTimeout(absl::Condition(&enough), timeout);
}

std::vector<common::ExpertSegment> FakeWorker::Segments(int i) const {
  grpc::ByteBuffer request;
  {
    absl::MutexLock lock(&mu_);
    request = calls_[i]->request;
  }
  auto view = proto::RunExpertsRequestView::Parse(request, dim_, 1 << 30, 64);
  return view.ok() ? view->segments() : std::vector<common::ExpertSegment>{};
}

bool FakeWorker::cancelled(int i) const {
  absl::MutexLock lock(&mu_);
  return calls_[i]->cancelled;
}

std::vector<std::string> FakeWorker::RequestIds(int i) const {
  absl::MutexLock lock(&mu_);
  return calls_[i]->metadata.request_ids;
}

router::WorkerCallMetadata FakeWorker::Metadata(int i) const {
  absl::MutexLock lock(&mu_);
  return calls_[i]->metadata;
}

grpc::ByteBuffer FakeWorker::Outputs(const grpc::ByteBuffer& request) const {
  auto view = proto::RunExpertsRequestView::Parse(request, dim_, 1 << 30, 64);
  if (!view.ok()) return grpc::ByteBuffer();
  std::string scratch;
  const float* in = static_cast<const float*>(view->TokenData(&scratch));
  proto::RunExpertsResponseWriter out(common::DType::kFloat32, view->rows(),
                                      dim_);
  ScalingShard shard(dim_);
  shard
      .Run({common::DType::kFloat32, in, view->rows()}, view->segments(),
           static_cast<float*>(out.data()))
      .IgnoreError();
  grpc::ByteBuffer whole = out.Finish();
  int64_t slice_bytes;
  {
    absl::MutexLock lock(&mu_);
    slice_bytes = reply_slice_bytes_;
  }
  if (slice_bytes <= 0) return whole;
  std::vector<grpc::Slice> parts;
  if (!whole.Dump(&parts).ok()) return grpc::ByteBuffer();
  std::string bytes;
  for (const grpc::Slice& part : parts) {
    bytes.append(reinterpret_cast<const char*>(part.begin()), part.size());
  }
  std::vector<grpc::Slice> sliced;
  for (size_t at = 0; at < bytes.size(); at += slice_bytes) {
    const size_t n = std::min<size_t>(slice_bytes, bytes.size() - at);
    sliced.emplace_back(bytes.data() + at, n);
  }
  return grpc::ByteBuffer(sliced.data(), sliced.size());
}

void FakeWorker::Reply(int i) {
  std::shared_ptr<Call> call;
  {
    absl::MutexLock lock(&mu_);
    call = calls_[i];
    if (call->finished) return;
    call->finished = true;
  }
  call->done(absl::OkStatus(), Outputs(call->request));
}

void FakeWorker::Fail(int i, absl::Status error) {
  std::shared_ptr<Call> call;
  {
    absl::MutexLock lock(&mu_);
    call = calls_[i];
    if (call->finished) return;
    call->finished = true;
  }
  call->done(std::move(error), grpc::ByteBuffer());
}

moe::v1::ShardInfo MakeShardInfo(
    const common::ModelSpec& spec, const std::string& fingerprint,
    const std::vector<std::vector<int64_t>>& experts) {
  moe::v1::ShardInfo info;
  info.set_model_name(spec.name);
  info.set_fingerprint(fingerprint);
  info.set_dim(spec.dim);
  for (size_t l = 0; l < spec.layers.size(); ++l) {
    moe::v1::LayerShard* layer = info.add_layers();
    layer->set_name(spec.layers[l].name);
    layer->set_kind(common::LayerKindName(spec.layers[l].config.kind));
    layer->set_total_experts(spec.layers[l].config.total_experts());
    layer->set_expert_hidden(spec.layers[l].config.expert_hidden());
    if (l < experts.size()) {
      for (int64_t e : experts[l]) layer->add_expert_ids(e);
    }
  }
  info.set_device("fake");
  return info;
}

}  // namespace moe::testing
