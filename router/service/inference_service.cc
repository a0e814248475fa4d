#include "router/service/inference_service.h"

#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <utility>

#include "absl/synchronization/mutex.h"
#include "common/status_macros.h"
#include "moe_version.h"
#include "proto/grpc_status.h"
#include "router/api/open_inference.h"

namespace moe::router {
namespace {

grpc::ServerUnaryReactor* Answer(grpc::CallbackServerContext* context,
                                 const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(proto::ToGrpcStatus(status));
  return reactor;
}

// A call that needs the token, answered with `of(router, request)`.
template <typename Request, typename Response, typename Of>
grpc::ServerUnaryReactor* AnswerWithToken(const RouterService& router,
                                          grpc::CallbackServerContext* context,
                                          const Request& request,
                                          Response* response, Of of) {
  absl::Status status = router.Authorize(*context);
  if (!status.ok()) return Answer(context, status);
  absl::StatusOr<Response> answer = of(router, request);
  if (answer.ok()) *response = *std::move(answer);
  return Answer(context, answer.status());
}

// What `request` asks of the served model: the forward into
// `asked`, the model's name and version; NOT_FOUND for an unknown model,
// INVALID_ARGUMENT naming what is wrong with its inputs or parameters.
absl::Status Translate(const RouterService& router,
                       const inference::ModelInferRequest& request,
                       OipInferRequest* asked, std::string* model_name,
                       std::string* version) {
  const ModelEngine& model = router.runner().model();
  MOE_ASSIGN_OR_RETURN(
      int layer, FindOipModel(model.spec(), model.fingerprint(),
                              request.model_name(), request.model_version()));
  MOE_ASSIGN_OR_RETURN(*asked, FromModelInfer(request, model.spec(), layer));
  *model_name = OipModelName(model.spec(), layer);
  *version = model.fingerprint();
  return absl::OkStatus();
}

}  // namespace

// One ModelInfer call: the translated forward, answered in OIP terms.
class InferenceService::InferCall : public grpc::ServerUnaryReactor {
 public:
  InferCall(grpc::CallbackServerContext* context, common::Clock* clock,
            const inference::ModelInferRequest* request,
            inference::ModelInferResponse* response)
      : job(
            context, clock->Now(), "ModelInfer", Protocol::kOipGrpc,
            [this, clock, request, response]() -> absl::Status {
              MOE_ASSIGN_OR_RETURN(
                  *response,
                  ToModelInfer(&job.response, asked, model_name, version,
                               request->id(), clock->Now() >= job.deadline()));
              return absl::OkStatus();
            },
            [this](absl::Status status) {
              Finish(proto::ToGrpcStatus(status));
            },
            request->id()) {}
  void OnCancel() override { job.Cancel(); }
  void OnDone() override { delete this; }

  RouterService::Job job;
  OipInferRequest asked;
  std::string model_name;
  std::string version;
};

grpc::ServerUnaryReactor* InferenceService::ServerLive(
    grpc::CallbackServerContext* context,
    const inference::ServerLiveRequest* /*request*/,
    inference::ServerLiveResponse* response) {
  response->set_live(true);
  return Answer(context, absl::OkStatus());
}

std::string WhyLayerNotReady(const RouterService& router, int layer) {
  if (!router.pool().ready()) return "the router is not ready";
  const size_t missing = router.pool().Uncovered().ids(layer).size();
  if (missing == 0) return "";
  return absl::StrCat(
      missing, missing == 1 ? " of its experts has" : " of its experts have",
      " no worker up");
}

absl::StatusOr<inference::RepositoryIndexResponse> RepositoryIndexOf(
    const RouterService& router,
    const inference::RepositoryIndexRequest& request) {
  const ModelEngine& model = router.runner().model();
  return OipRepositoryIndex(
      request, model.spec(), model.fingerprint(),
      [&router](int layer) { return WhyLayerNotReady(router, layer); });
}

absl::StatusOr<inference::ModelStatisticsResponse> ModelStatisticsOf(
    const RouterService& router,
    const inference::ModelStatisticsRequest& request) {
  const ModelEngine& model = router.runner().model();
  return OipModelStatistics(
      request, model.spec(), model.fingerprint(),
      [&router](int layer, inference::ModelStatistics* stats) {
        router.statistics().Fill(layer, stats);
      });
}

absl::StatusOr<inference::ModelMetadataResponse> ModelMetadataOf(
    const RouterService& router,
    const inference::ModelMetadataRequest& request) {
  const ModelEngine& model = router.runner().model();
  MOE_ASSIGN_OR_RETURN(
      int layer, FindOipModel(model.spec(), model.fingerprint(), request.name(),
                              request.version()));
  return OipModelMetadata(model.spec(), model.fingerprint(), layer);
}

absl::StatusOr<inference::ModelConfigResponse> ModelConfigOf(
    const RouterService& router, const inference::ModelConfigRequest& request) {
  inference::ModelMetadataRequest metadata;
  metadata.set_name(request.name());
  metadata.set_version(request.version());
  MOE_ASSIGN_OR_RETURN(inference::ModelMetadataResponse m,
                       ModelMetadataOf(router, metadata));
  return OipModelConfig(m);
}

grpc::ServerUnaryReactor* InferenceService::ModelStatistics(
    grpc::CallbackServerContext* context,
    const inference::ModelStatisticsRequest* request,
    inference::ModelStatisticsResponse* response) {
  return AnswerWithToken(*router_, context, *request, response,
                         ModelStatisticsOf);
}

grpc::ServerUnaryReactor* InferenceService::ServerReady(
    grpc::CallbackServerContext* context,
    const inference::ServerReadyRequest* /*request*/,
    inference::ServerReadyResponse* response) {
  response->set_ready(router_->pool().ready());
  return Answer(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* InferenceService::ModelReady(
    grpc::CallbackServerContext* context,
    const inference::ModelReadyRequest* request,
    inference::ModelReadyResponse* response) {
  const ModelEngine& model = router_->runner().model();
  absl::StatusOr<int> layer = FindOipModel(model.spec(), model.fingerprint(),
                                           request->name(), request->version());
  if (!layer.ok()) return Answer(context, layer.status());
  response->set_ready(WhyLayerNotReady(*router_, *layer).empty());
  return Answer(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* InferenceService::RepositoryIndex(
    grpc::CallbackServerContext* context,
    const inference::RepositoryIndexRequest* request,
    inference::RepositoryIndexResponse* response) {
  return AnswerWithToken(*router_, context, *request, response,
                         RepositoryIndexOf);
}

grpc::ServerUnaryReactor* InferenceService::ServerMetadata(
    grpc::CallbackServerContext* context,
    const inference::ServerMetadataRequest* /*request*/,
    inference::ServerMetadataResponse* response) {
  absl::Status status = router_->Authorize(*context);
  if (status.ok()) *response = OipServerMetadata(kVersion);
  return Answer(context, status);
}

grpc::ServerUnaryReactor* InferenceService::ModelMetadata(
    grpc::CallbackServerContext* context,
    const inference::ModelMetadataRequest* request,
    inference::ModelMetadataResponse* response) {
  return AnswerWithToken(*router_, context, *request, response,
                         ModelMetadataOf);
}

grpc::ServerUnaryReactor* InferenceService::ModelConfig(
    grpc::CallbackServerContext* context,
    const inference::ModelConfigRequest* request,
    inference::ModelConfigResponse* response) {
  return AnswerWithToken(*router_, context, *request, response, ModelConfigOf);
}

grpc::ServerUnaryReactor* InferenceService::ModelInfer(
    grpc::CallbackServerContext* context,
    const inference::ModelInferRequest* request,
    inference::ModelInferResponse* response) {
  auto* call = new InferCall(context, router_->clock(), request, response);
  absl::Status status = router_->Authorize(*context);
  if (status.ok()) {
    status = Translate(*router_, *request, &call->asked, &call->model_name,
                       &call->version);
  }
  if (status.ok()) {
    call->job.LimitTime(call->asked.timeout);
    call->job.request = std::move(call->asked.forward);
  }
  router_->Serve(&call->job, std::move(status));
  return call;
}

// One ModelStreamInfer stream. Each request is served as soon as it is
// read, up to kMaxInFlight of them at once (then the stream is not read,
// and gRPC's flow control holds the client back, until the oldest answer
// is written); the answers are written in the requests' order. The stream
// finishes once, when no request of it is being served and no answer is
// being written: after the client's last request is answered (OK), once a
// write fails (the client went away; the answers still to write are
// dropped), or when the service ends its streams (EndStreams: once the
// requests already read are answered; one read meanwhile is answered
// UNAVAILABLE). gRPC runs OnDone only after every reaction returned; a
// job's done is not a reaction, so it finishes the stream or starts a
// write as its very last step.
class InferenceService::StreamCall
    : public grpc::ServerBidiReactor<inference::ModelInferRequest,
                                     inference::ModelStreamInferResponse> {
 public:
  // Requests of one stream served at once.
  static constexpr size_t kMaxInFlight = 32;

  StreamCall(grpc::CallbackServerContext* context, InferenceService* service)
      : context_(context), service_(service), router_(service->router_) {}

  // Once registered with the service: starts the stream, or ends it when
  // the service is ending its streams or the token is wrong.
  void Start(bool ending) {
    absl::Status status = ending ? Ending() : router_->Authorize(*context_);
    {
      absl::MutexLock lock(&mu_);
      if (status.ok() && ending_) status = Ending();  // End() came first
      if (!status.ok()) {
        // Before the handler returned: gRPC holds the Finish until then.
        finished_ = true;
        Finish(proto::ToGrpcStatus(status));
        return;
      }
      started_ = true;
      read_busy_ = true;
    }
    ReadNext();
  }
  // The service ends its streams.
  void End() {
    absl::MutexLock lock(&mu_);
    ending_ = true;
    if (!started_) return;  // Start() ends it
    // Called under the service's lock, which OnDone takes first: finishing
    // here, under mu_, is safe.
    if (std::optional<grpc::Status> s = TakeFinishLocked()) Finish(*s);
  }

  void OnReadDone(bool ok) override {
    Item* item = nullptr;
    Item* write = nullptr;
    bool read = false;
    {
      absl::MutexLock lock(&mu_);
      if (!ok) {
        read_busy_ = false;
        read_closed_ = true;
        if (std::optional<grpc::Status> s = TakeFinishLocked()) Finish(*s);
        return;
      }
      items_.push_back(std::move(next_));
      item = items_.back().get();
      if (ending_ || broken_) {
        // Read after the stream began to end: answered, not served.
        read_busy_ = false;
        FailLocked(item, Ending());
        write = TakeWriteLocked();
        if (write == nullptr) {
          if (std::optional<grpc::Status> s = TakeFinishLocked()) Finish(*s);
          return;
        }
      } else {
        ++unanswered_;
        read = read_busy_ = MayReadLocked();
      }
    }
    if (write != nullptr) {
      StartWrite(&write->response);
      return;
    }
    // The next read first: a small forward may run inline in Serve, on
    // this thread, until its workers answer.
    if (read) ReadNext();
    Serve(item);
  }
  void OnWriteDone(bool ok) override {
    Item* write = nullptr;
    bool read = false;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (!ok) {
        broken_ = true;
        failure_ = grpc::Status(grpc::StatusCode::CANCELLED,
                                "ModelStreamInfer: the stream closed before "
                                "an answer was written");
      } else {
        // Freed at the next write's end: the job's done that started this
        // write may still be returning.
        last_written_ = std::move(items_.front());
        items_.pop_front();
        write = TakeWriteLocked();
      }
      if (write == nullptr) {
        if (std::optional<grpc::Status> s = TakeFinishLocked()) {
          Finish(*s);
          return;
        }
      }
      if (!read_busy_ && MayReadLocked()) read = read_busy_ = true;
    }
    if (write != nullptr) StartWrite(&write->response);
    if (read) ReadNext();
  }
  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    for (const auto& item : items_) {
      if (item->job != nullptr && !item->answered) item->job->Cancel();
    }
  }
  void OnDone() override {
    {
      absl::MutexLock lock(&service_->mu_);
      service_->streams_.erase(this);
    }
    delete this;
  }

 private:
  // One request of the stream, from its read until its answer is written.
  struct Item {
    inference::ModelInferRequest request;
    OipInferRequest asked;
    std::unique_ptr<RouterService::Job> job;
    inference::ModelStreamInferResponse response;
    bool answered = false;  // response is final
  };

  static absl::Status Ending() {
    return absl::UnavailableError(
        "ModelStreamInfer: the router is shutting down; open a new stream");
  }

  void ReadNext() {
    next_ = std::make_unique<Item>();
    StartRead(&next_->request);
  }

  // Whether the stream should read another request now.
  bool MayReadLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !ending_ && !broken_ && !read_closed_ && !finished_ &&
           items_.size() < kMaxInFlight;
  }
  // The oldest answer, when it is ready and no write is out; the caller
  // writes it (after unlocking).
  Item* TakeWriteLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (writing_ || broken_ || finished_ || items_.empty() ||
        !items_.front()->answered) {
      return nullptr;
    }
    writing_ = true;
    return items_.front().get();
  }
  // The status to finish the stream with, when it is time (the caller
  // finishes it): nothing served, nothing being written, and the client
  // done, the service ending, or a write failed.
  std::optional<grpc::Status> TakeFinishLocked()
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_ || unanswered_ > 0 || writing_) return std::nullopt;
    std::optional<grpc::Status> status;
    if (broken_) {
      status = failure_;
    } else if (items_.empty() && read_closed_) {
      status = grpc::Status::OK;
    } else if (items_.empty() && ending_) {
      status = proto::ToGrpcStatus(Ending());
    }
    if (status) finished_ = true;
    return status;
  }
  // `item`'s answer is the error `status`.
  void FailLocked(Item* item, const absl::Status& status,
                  absl::string_view model_name = {},
                  absl::string_view version = {})
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    item->response.Clear();
    item->response.set_error_message(absl::StrCat(
        absl::StatusCodeToString(status.code()), ": ", status.message()));
    inference::ModelInferResponse* r = item->response.mutable_infer_response();
    r->set_model_name(model_name.empty() ? item->request.model_name()
                                         : std::string(model_name));
    r->set_model_version(std::string(version));
    r->set_id(item->request.id());
    item->answered = true;
  }

  // The job of `item` is done with `status`: its answer is ready; written
  // now if it is the oldest, and the stream finished if that was all.
  void Answered(Item* item, const absl::Status& status,
                const std::string& model_name, const std::string& version) {
    Item* write = nullptr;
    std::optional<grpc::Status> finish;
    {
      absl::MutexLock lock(&mu_);
      if (!status.ok()) {
        FailLocked(item, status, model_name, version);
      } else {
        item->answered = true;
      }
      --unanswered_;
      write = TakeWriteLocked();
      if (write == nullptr) finish = TakeFinishLocked();
    }
    // The last steps: the stream may be gone once they return.
    if (write != nullptr) {
      StartWrite(&write->response);
    } else if (finish) {
      Finish(*finish);
    }
  }

  void Serve(Item* item) {
    std::string model_name, version;
    absl::Status status =
        Translate(*router_, item->request, &item->asked, &model_name, &version);
    common::Clock* clock = router_->clock();
    RouterService::Job* job = nullptr;
    {
      absl::MutexLock lock(&mu_);
      item->job = std::make_unique<RouterService::Job>(
          *context_, clock->Now(), "ModelStreamInfer", Protocol::kOipGrpc,
          [context = context_] { return context->IsCancelled(); },
          [item, clock, model_name, version]() -> absl::Status {
            MOE_ASSIGN_OR_RETURN(
                *item->response.mutable_infer_response(),
                ToModelInfer(&item->job->response, item->asked, model_name,
                             version, item->request.id(),
                             clock->Now() >= item->job->deadline()));
            return absl::OkStatus();
          },
          [this, item, model_name, version](absl::Status s) {
            Answered(item, s, model_name, version);
          },
          item->request.id());
      job = item->job.get();
    }
    if (status.ok()) {
      job->LimitTime(item->asked.timeout);
      job->request = std::move(item->asked.forward);
    }
    // Nothing of `item` is touched after this: it may be answered, written
    // and freed before Serve returns.
    router_->Serve(job, std::move(status));
  }

  grpc::CallbackServerContext* const context_;
  InferenceService* const service_;
  RouterService* const router_;
  // The request being read: the reads come one after another.
  std::unique_ptr<Item> next_;
  absl::Mutex mu_;
  // The requests read and not yet written, in the stream's order.
  std::deque<std::unique_ptr<Item>> items_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<Item> last_written_ ABSL_GUARDED_BY(mu_);
  size_t unanswered_ ABSL_GUARDED_BY(mu_) = 0;  // jobs not done
  // A read is out, or its OnReadDone has yet to decide on the next one.
  bool read_busy_ ABSL_GUARDED_BY(mu_) = false;
  bool read_closed_ ABSL_GUARDED_BY(mu_) = false;  // the client's last
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool broken_ ABSL_GUARDED_BY(mu_) = false;  // a write failed
  grpc::Status failure_ ABSL_GUARDED_BY(mu_);
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool ending_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

grpc::ServerBidiReactor<inference::ModelInferRequest,
                        inference::ModelStreamInferResponse>*
InferenceService::ModelStreamInfer(grpc::CallbackServerContext* context) {
  auto* stream = new StreamCall(context, this);
  bool ending = false;
  {
    absl::MutexLock lock(&mu_);
    streams_.insert(stream);
    ending = ending_;
  }
  // An EndStreams from now on reaches it through End().
  stream->Start(ending);
  return stream;
}

void InferenceService::EndStreams() {
  // Under the lock, so that no stream is deleted meanwhile (OnDone takes
  // it; gRPC never runs OnDone inline in Finish).
  absl::MutexLock lock(&mu_);
  ending_ = true;
  for (StreamCall* stream : streams_) stream->End();
}

}  // namespace moe::router
