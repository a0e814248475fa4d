#include "server/server_runner.h"

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

#include "absl/strings/str_cat.h"
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
                           std::unique_ptr<grpc::Server> server, int port)
    : options_(std::move(options)), server_(std::move(server)), port_(port) {}

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
  if (options.rpc_metrics != nullptr) {
    std::vector<
        std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>>
        interceptors;
    interceptors.push_back(options.rpc_metrics->InterceptorFactory());
    builder.experimental().SetInterceptorCreators(std::move(interceptors));
  }
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
      new ServerRunner(options, std::move(server), port));
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
  server_->Shutdown(absl::ToChronoTime(absl::Now() + options_.grace));
  server_->Wait();
  if (health_server_ != nullptr) {
    health_server_->Shutdown(absl::ToChronoTime(absl::Now()));
    health_server_->Wait();
  }
  MOE_LOG(INFO) << "stopped";
}

}  // namespace moe::server
