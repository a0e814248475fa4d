#include "server/server_runner.h"

#include <grpc/grpc.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/impl/server_builder_option.h>
#include <grpcpp/impl/server_builder_plugin.h>
#include <grpcpp/resource_quota.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <limits>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/notification.h"
#include "common/cli/command_line.h"
#include "common/logging.h"
#include "proto/grpc_logging.h"
#include "server/metrics_http.h"

namespace moe::server {
namespace {

// Takes gRPC's reflection plugin off a server being built: linking the
// reflection library registers it for every ServerBuilder of the process.
class WithoutReflection final : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>*
                         plugins) override {
    plugins->erase(
        std::remove_if(plugins->begin(), plugins->end(),
                       [](const std::unique_ptr<grpc::ServerBuilderPlugin>& p) {
                         return p->name() == "proto_server_reflection";
                       }),
        plugins->end());
  }
};

// Everything on the health-only port but grpc.health.v1: UNIMPLEMENTED,
// saying so. (It also gives that server the callback queue gRPC needs to
// serve its default health service without any other service.)
class HealthOnly final : public grpc::CallbackGenericService {
 public:
  grpc::ServerGenericBidiReactor* CreateReactor(
      grpc::GenericCallbackServerContext* context) override {
    class Refusal final : public grpc::ServerGenericBidiReactor {
     public:
      explicit Refusal(const std::string& method) {
        Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED,
                            "this port serves grpc.health.v1 only, not " +
                                method.substr(0, 128)));
      }
      void OnDone() override { delete this; }
    };
    return new Refusal(context->method());
  }
};

constexpr absl::string_view kHealthWatch = "/grpc.health.v1.Health/Watch";

// Counts the calls of a server from the moment gRPC hands one to a handler
// until it ends (gRPC makes an interceptor for each call and destroys it
// with the call), but for health watches: a watch carries no work, and the
// stop has told it NOT_SERVING.
class CallCounter final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  explicit CallCounter(std::atomic<int64_t>* calls) : calls_(calls) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    if (absl::string_view(info->method()) == kHealthWatch) return nullptr;
    class Counted final : public grpc::experimental::Interceptor {
     public:
      explicit Counted(std::atomic<int64_t>* calls) : calls_(calls) {
        calls_->fetch_add(1, std::memory_order_relaxed);
      }
      ~Counted() override { calls_->fetch_sub(1, std::memory_order_relaxed); }
      void Intercept(
          grpc::experimental::InterceptorBatchMethods* methods) override {
        methods->Proceed();
      }

     private:
      std::atomic<int64_t>* calls_;
    };
    return new Counted(calls_);
  }

 private:
  std::atomic<int64_t>* calls_;
};

int Millis(absl::Duration d) {
  return static_cast<int>(std::min<int64_t>(absl::ToInt64Milliseconds(d),
                                            std::numeric_limits<int>::max()));
}

// Listening, message sizes, connection limits; reflection only if asked.
void Configure(grpc::ServerBuilder& builder, bool reflection,
               const ConnectionLimits& limits) {
  // gRPC would otherwise share a busy port with its owner (SO_REUSEPORT)
  // and split the traffic between the two processes.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  if (!reflection) builder.SetOption(std::make_unique<WithoutReflection>());
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS,
                             Millis(limits.max_idle));
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS,
                             Millis(limits.max_age));
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
                             Millis(limits.age_grace));
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                             limits.max_concurrent_streams);
  builder.AddChannelArgument(GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS,
                             Millis(limits.handshake_timeout));
  // Keepalive pings: a client may ping every 10 s while calls are open, not
  // more often and not while none are (two strikes close the connection).
  builder.AddChannelArgument(
      GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 2);
}

}  // namespace

void BlockShutdownSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  // A peer that closes its connection while an HTTP answer is written
  // (/metrics, the REST port: cpp-httplib writes without MSG_NOSIGNAL, and
  // through OpenSSL for HTTPS) must cost an EPIPE, not the process.
  signal(SIGPIPE, SIG_IGN);
}

int ServerMain(int argc, char** argv, const char* program, const char* usage,
               absl::FunctionRef<absl::Status()> run) {
  BlockShutdownSignals();
  cli::ParseCommandLine(argc, argv, program, usage);
  proto::RouteGrpcLogs();
  return cli::ExitCode(run());
}

bool ShutdownRequested(absl::Duration wait) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  const int64_t nanos = absl::ToInt64Nanoseconds(wait);
  timespec ts{static_cast<time_t>(nanos / 1000000000),
              static_cast<long>(nanos % 1000000000)};
  return sigtimedwait(&set, nullptr, &ts) > 0;
}

ServerRunner::ServerRunner(ServerOptions options,
                           std::unique_ptr<std::atomic<int64_t>> calls,
                           std::unique_ptr<grpc::Server> server, int port)
    : options_(std::move(options)),
      calls_(std::move(calls)),
      server_(std::move(server)),
      port_(port) {}

ServerRunner::~ServerRunner() { Shutdown(); }

absl::StatusOr<std::unique_ptr<ServerRunner>> ServerRunner::Start(
    const ServerOptions& options, const std::vector<grpc::Service*>& services) {
  grpc::EnableDefaultHealthCheckService(true);
  if (options.reflection) {
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  }
  const int64_t quota_bytes =
      options.memory_quota_bytes > 0
          ? options.memory_quota_bytes
          : kMemoryQuotaMessages * options.max_receive_bytes;
  if (quota_bytes < 2 * options.max_receive_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("--grpc_memory_bytes=", quota_bytes,
                     " is less than two messages of the receive limit (2 x ",
                     options.max_receive_bytes,
                     " bytes): the largest calls could not be "
                     "received"));
  }
  grpc::ServerBuilder builder;
  Configure(builder, options.reflection, options.limits);
  grpc::ResourceQuota quota("moe-server");
  quota.Resize(static_cast<size_t>(quota_bytes));
  builder.SetResourceQuota(quota);
  int port = 0;
  const std::string address = absl::StrCat(options.host, ":", options.port);
  builder.AddListeningPort(address,
                           options.credentials != nullptr
                               ? options.credentials
                               : grpc::InsecureServerCredentials(),
                           &port);
  constexpr int64_t kMaxGrpcBytes = std::numeric_limits<int>::max();
  builder.SetMaxReceiveMessageSize(
      static_cast<int>(std::min(options.max_receive_bytes, kMaxGrpcBytes)));
  builder.SetMaxSendMessageSize(
      static_cast<int>(std::min(options.max_send_bytes, kMaxGrpcBytes)));
  // The runner counts calls in flight (its stop closes connections left
  // idle); the counter outlives the server (a runner owns both).
  auto calls = std::make_unique<std::atomic<int64_t>>(0);
  std::vector<
      std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
      interceptors;
  interceptors.push_back(std::make_unique<CallCounter>(calls.get()));
  if (options.rpc_metrics != nullptr) {
    interceptors.push_back(options.rpc_metrics->InterceptorFactory());
  }
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  for (grpc::Service* service : services) builder.RegisterService(service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", address,
                     ": address already in use (another process holds port ",
                     options.port, "?) or not available on this host"));
  }
  if (options.credentials == nullptr) {
    MOE_LOG(WARNING) << "serving " << options.host << ":" << port
                     << " in plaintext (no --tls_cert_file): anyone who can "
                        "reach it can call it";
  }
  MOE_LOG(INFO) << "gRPC holds at most " << (quota_bytes >> 20)
                << " MiB of incoming messages (--grpc_memory_bytes); past "
                   "it, calls are cancelled RESOURCE_EXHAUSTED";
  auto runner = std::unique_ptr<ServerRunner>(
      new ServerRunner(options, std::move(calls), std::move(server), port));
  if (options.health_port >= 0) {
    absl::Status health = runner->StartHealthListener();
    if (!health.ok()) return health;
  }
  runner->SetServing(false);
  if (!options.port_file.empty()) {
    absl::Status status = WritePortFile(options.port_file, port);
    if (!status.ok()) return status;
  }
  return runner;
}

absl::Status ServerRunner::StartHealthListener() {
  grpc::ServerBuilder builder;
  const std::string address =
      absl::StrCat(options_.host, ":", options_.health_port);
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(),
                           &health_port_);
  // Health, and nothing else: never reflection.
  Configure(builder, /*reflection=*/false, options_.limits);
  health_only_ = std::make_unique<HealthOnly>();
  builder.RegisterCallbackGenericService(health_only_.get());
  // Health requests are a few bytes.
  builder.SetMaxReceiveMessageSize(4096);
  health_server_ = builder.BuildAndStart();
  if (health_server_ == nullptr || health_port_ == 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ", address, " (--health_port): address in use?"));
  }
  MOE_LOG(INFO) << "plaintext health (grpc.health.v1 only) on " << options_.host
                << ":" << health_port_;
  if (!options_.health_port_file.empty()) {
    return WritePortFile(options_.health_port_file, health_port_);
  }
  return absl::OkStatus();
}

std::string ServerRunner::address() const {
  return absl::StrCat(options_.host, ":", port_);
}

void ServerRunner::SetServing(bool serving) {
  for (grpc::Server* server : {server_.get(), health_server_.get()}) {
    if (server == nullptr) continue;
    grpc::HealthCheckServiceInterface* health = server->GetHealthCheckService();
    if (health == nullptr) continue;
    health->SetServingStatus(serving);
    for (const std::string& name : options_.health_services) {
      health->SetServingStatus(name, serving);
    }
  }
}

int ServerRunner::WaitForShutdownSignal() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  int sig = 0;
  while (sigwait(&set, &sig) != 0) {
  }
  DrainAndShutdown(sig);
  return sig;
}

void ServerRunner::DrainAndShutdown(int sig) {
  MOE_LOG(INFO) << "received " << (sig == SIGTERM ? "SIGTERM" : "SIGINT")
                << ": draining (health NOT_SERVING; serving "
                << absl::FormatDuration(options_.drain) << " more, then up to "
                << absl::FormatDuration(options_.grace)
                << " for in-flight calls)";
  SetServing(false);
  if (options_.drain > absl::ZeroDuration()) {
    absl::SleepFor(options_.drain);
    MOE_LOG(INFO) << "drain time over: no longer taking calls";
  }
  Shutdown();
}

void ServerRunner::Shutdown() {
  if (shut_down_) return;
  shut_down_ = true;
  SetServing(false);
  if (options_.on_shutdown) options_.on_shutdown();
  // gRPC's stop is a GOAWAY and a ping on every connection, and it waits,
  // up to `grace`, for each to answer the ping and close, calls or none
  // (health watches too, which it would cut at `grace`).
  // An idle gRPC client answers only when it next polls its connection
  // (every 5 s: the C core's backup poller), and one that never reads
  // holds the stop for 20 s (gRPC's own bound on that wait). So once no call
  // has been in flight for kIdleClose, the connections left are closed: nothing
  // is cut, and their clients connect again (elsewhere) for their next call.
  constexpr absl::Duration kIdleClose = absl::Milliseconds(250);
  absl::Notification stopped;
  std::thread closer([&] {
    absl::Time idle_since = absl::InfiniteFuture();
    while (!stopped.WaitForNotificationWithTimeout(absl::Milliseconds(10))) {
      const absl::Time now = absl::Now();
      if (calls_->load(std::memory_order_relaxed) > 0) {
        idle_since = absl::InfiniteFuture();
      } else if (idle_since == absl::InfiniteFuture()) {
        idle_since = now;
      } else if (now - idle_since >= kIdleClose) {
        MOE_LOG(INFO) << "no call in flight: closing the connections still "
                         "open (idle clients that have not yet answered the "
                         "server's GOAWAY) and health watches";
        grpc_server_cancel_all_calls(server_->c_server());
        return;
      }
    }
  });
  server_->Shutdown(absl::ToChronoTime(absl::Now() + options_.grace));
  stopped.Notify();
  closer.join();
  server_->Wait();
  if (health_server_ != nullptr) {
    health_server_->Shutdown(absl::ToChronoTime(absl::Now()));
    health_server_->Wait();
  }
  MOE_LOG(INFO) << "stopped";
}

}  // namespace moe::server
