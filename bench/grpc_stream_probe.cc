// grpc-stream-probe: what a unary call costs against one message each way
// on an open bidirectional stream, with gRPC's callback API on loopback, as
// moe-serve's servers use it. Decides whether a streaming Forward would pay
// (BENCHMARKS.md, "Decode latency").
//
//   grpc-stream-probe server PORT
//   grpc-stream-probe client HOST:PORT [BYTES] [N] [unary|stream|both]
//
// The server echoes every message; a call to "/probe/Unary" ends after one.
// The client runs N round trips of BYTES bytes (after 200 to warm up) on
// one channel, polling its own completion queue, and prints p50 and p99 in
// microseconds.
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
constexpr int kWarmUp = 200;

class Echo : public grpc::CallbackGenericService {
  grpc::ServerGenericBidiReactor* CreateReactor(
      grpc::GenericCallbackServerContext* context) override {
    return new Reactor(context->method() == "/probe/Unary");
  }

  class Reactor : public grpc::ServerGenericBidiReactor {
   public:
    explicit Reactor(bool unary) : unary_(unary) { StartRead(&in_); }
    void OnReadDone(bool ok) override {
      if (!ok) {
        Finish(grpc::Status::OK);
        return;
      }
      out_ = in_;
      if (unary_) {
        StartWriteAndFinish(&out_, grpc::WriteOptions(), grpc::Status::OK);
      } else {
        StartWrite(&out_);
      }
    }
    void OnWriteDone(bool ok) override {
      if (!ok) {
        Finish(grpc::Status::CANCELLED);
        return;
      }
      StartRead(&in_);
    }
    void OnDone() override { delete this; }

   private:
    const bool unary_;
    grpc::ByteBuffer in_, out_;
  };
};

grpc::ByteBuffer Bytes(const std::string& s) {
  grpc::Slice slice(s);
  return grpc::ByteBuffer(&slice, 1);
}

// Waits for `want` on `cq`; exits on anything else.
void Await(grpc::CompletionQueue& cq, void* want) {
  void* tag = nullptr;
  bool ok = false;
  if (!cq.Next(&tag, &ok) || tag != want || !ok) {
    std::fprintf(stderr, "grpc-stream-probe: the call failed\n");
    std::exit(1);
  }
}

void Report(const char* what, std::vector<double> us) {
  std::sort(us.begin(), us.end());
  std::printf("%-6s p50 %6.0f us  p99 %6.0f us  (%zu round trips)\n", what,
              us[us.size() / 2], us[us.size() * 99 / 100], us.size());
}

double Since(Clock::time_point start) {
  return std::chrono::duration<double, std::micro>(Clock::now() - start)
      .count();
}

int Client(const std::string& target, int bytes, int n,
           const std::string& mode) {
  auto channel =
      grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  grpc::CompletionQueue cq;
  const std::string payload(static_cast<size_t>(bytes), 'x');
  if (mode != "stream") {
    std::vector<double> us;
    for (int i = 0; i < n + kWarmUp; ++i) {
      grpc::ClientContext context;
      grpc::ByteBuffer response;
      grpc::Status status;
      const Clock::time_point start = Clock::now();
      auto call =
          stub.PrepareUnaryCall(&context, "/probe/Unary", Bytes(payload), &cq);
      call->StartCall();
      call->Finish(&response, &status, &cq);
      Await(cq, &cq);
      if (!status.ok()) {
        std::fprintf(stderr, "grpc-stream-probe: %s\n",
                     status.error_message().c_str());
        return 1;
      }
      if (i >= kWarmUp) us.push_back(Since(start));
    }
    Report("unary", us);
  }
  if (mode != "unary") {
    grpc::ClientContext context;
    auto stream = stub.PrepareCall(&context, "/probe/Stream", &cq);
    int started = 0, wrote = 0, read = 0;
    stream->StartCall(&started);
    Await(cq, &started);
    std::vector<double> us;
    for (int i = 0; i < n + kWarmUp; ++i) {
      const Clock::time_point start = Clock::now();
      stream->Write(Bytes(payload), &wrote);
      Await(cq, &wrote);
      grpc::ByteBuffer response;
      stream->Read(&response, &read);
      Await(cq, &read);
      if (i >= kWarmUp) us.push_back(Since(start));
    }
    Report("stream", us);
    int closed = 0, finished = 0;
    stream->WritesDone(&closed);
    Await(cq, &closed);
    grpc::Status status;
    stream->Finish(&status, &finished);
    Await(cq, &finished);
  }
  cq.Shutdown();
  void* tag = nullptr;
  bool ok = false;
  while (cq.Next(&tag, &ok)) {
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string role = argc > 1 ? argv[1] : "";
  if (role == "server" && argc == 3) {
    Echo echo;
    grpc::ServerBuilder builder;
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
    builder.AddListeningPort(std::string("127.0.0.1:") + argv[2],
                             grpc::InsecureServerCredentials());
    builder.RegisterCallbackGenericService(&echo);
    std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
    if (server == nullptr) {
      std::fprintf(stderr, "grpc-stream-probe: cannot listen on port %s\n",
                   argv[2]);
      return 1;
    }
    server->Wait();
    return 0;
  }
  if (role == "client" && argc >= 3 && argc <= 6) {
    const int bytes = argc > 3 ? std::atoi(argv[3]) : 8192;
    const int n = argc > 4 ? std::atoi(argv[4]) : 4000;
    const std::string mode = argc > 5 ? argv[5] : "both";
    if (bytes < 0 || n < 1 ||
        (mode != "unary" && mode != "stream" && mode != "both")) {
      std::fprintf(stderr, "grpc-stream-probe: bad BYTES, N or mode\n");
      return 2;
    }
    return Client(argv[2], bytes, n, mode);
  }
  std::fprintf(stderr,
               "usage: grpc-stream-probe server PORT\n"
               "       grpc-stream-probe client HOST:PORT [BYTES] [N] "
               "[unary|stream|both]\n");
  return 2;
}
