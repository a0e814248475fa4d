// Mutual TLS on both hops and token auth, with real processes on 127.0.0.1
// and certificates made by openssl (tests/testing/make_test_pki.sh):
//
//   client --mTLS (ca)--> moe-router --mTLS (router_ca)--> moe-expert x2
//
// The router requires client certificates of `ca` and a bearer token; the
// workers require client certificates of `router_ca`, which only the router
// holds. Shown: golden parity with the right credentials; plaintext, TLS
// without a client certificate and a certificate of another CA refused; a
// missing and a wrong token UNAUTHENTICATED (and counted), from the
// headers alone, before the message is read; a worker refusing
// a client that is not a router; the plaintext health port; certificates and
// tokens rotated under load without a failed call, on the REST port too,
// which keeps its certificate while changed files do not load.
#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/router_client.h"
#include "common/request_id.h"
#include "proto/tls.h"
#include "testing/deployment.h"
#include "testing/golden.h"
#include "testing/reference.h"
#include "testing/scrape.h"

namespace moe {
namespace {

using testing::Deployment;
using testing::Request;
using testing::Y;

const std::string kModel = "A_moe_eval_nodrop";

std::string PkiFile(const std::string& name) {
  return testing::TestPkiFile(name);
}

void Copy(const std::string& from, const std::string& to) {
  // Written beside and renamed: a reader never sees half a file.
  std::filesystem::copy_file(from, to + ".tmp",
                             std::filesystem::copy_options::overwrite_existing);
  std::filesystem::rename(to + ".tmp", to);
}

void Write(const std::string& path, const std::string& text) {
  std::ofstream(path + ".tmp") << text;
  std::filesystem::rename(path + ".tmp", path);
}

std::shared_ptr<grpc::ChannelCredentials> Credentials(const std::string& ca,
                                                      const std::string& cert) {
  proto::TlsFiles f;
  f.ca_file = PkiFile(ca + ".crt");
  if (!cert.empty()) {
    f.cert_file = PkiFile(cert + ".crt");
    f.key_file = PkiFile(cert + ".key");
  }
  auto creds = proto::MakeChannelCredentials(f);
  EXPECT_TRUE(creds.ok()) << creds.status();
  return creds.ok() ? *creds : nullptr;
}

client::ClientOptions Options(std::shared_ptr<grpc::ChannelCredentials> creds,
                              const std::string& token = "") {
  client::ClientOptions o;
  o.credentials = std::move(creds);
  o.token = token;
  o.max_attempts = 1;
  o.timeout = absl::Seconds(10);
  return o;
}

// The subject of the certificate `port` presents now (a fresh handshake as
// `client`).
std::string ServedSubject(int port, const std::string& client = "client") {
  std::string out;
  testing::RunProcess(
      {"/bin/sh", "-c",
       "echo | openssl s_client -connect 127.0.0.1:" + std::to_string(port) +
           " -CAfile " + PkiFile("ca.crt") + " -cert " +
           PkiFile(client + ".crt") + " -key " + PkiFile(client + ".key") +
           " 2>/dev/null | openssl x509 -noout -subject"},
      &out);
  return out;
}

// The router's REST port (--http_port_file in the fixture's folder).
int RestPort(const std::string& live) {
  std::ifstream in(live + "/http.port");
  int port = 0;
  in >> port;
  return port;
}

// An HTTPS client of the REST port with `client`'s certificate, checking
// the router's against `ca`.
std::unique_ptr<httplib::SSLClient> RestClient(int port,
                                               const std::string& client) {
  auto c = std::make_unique<httplib::SSLClient>(
      "127.0.0.1", port, PkiFile(client + ".crt"), PkiFile(client + ".key"));
  c->set_ca_cert_path(PkiFile("ca.crt"));
  c->enable_server_certificate_verification(true);
  c->set_connection_timeout(10);
  c->set_read_timeout(10);
  return c;
}

// The sum of the router's samples of `metric` with `labels`; -1 when
// /metrics cannot be read.
double RouterCount(const Deployment& d, const std::string& metric,
                   const std::map<std::string, std::string>& labels) {
  return testing::ScrapeSum(d.router_metrics_address(), metric, labels);
}

double Rejected(const Deployment& d, const std::string& reason) {
  return RouterCount(d, "moe_router_rejected_requests_total",
                     {{"reason", reason}});
}

double Requests(const Deployment& d, const std::string& protocol,
                const std::string& code) {
  return RouterCount(d, "moe_router_requests_total",
                     {{"protocol", protocol}, {"code", code}});
}

// A call that sends its headers and never its message: the status the
// server answers it with within `timeout` (DEADLINE_EXCEEDED when the
// server waits for the message, as a unary handler must).
grpc::Status CallWithoutMessage(const std::string& address,
                                std::shared_ptr<grpc::ChannelCredentials> creds,
                                const std::string& method,
                                const std::string& token,
                                absl::Duration timeout,
                                const std::string& request_id = "") {
  grpc::GenericStub stub(grpc::CreateChannel(address, creds));
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
  if (!request_id.empty()) context.AddMetadata("x-request-id", request_id);
  grpc::CompletionQueue queue;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call =
      stub.PrepareCall(&context, method, &queue);
  void* tag = nullptr;
  bool ok = false;
  call->StartCall(reinterpret_cast<void*>(1));
  queue.Next(&tag, &ok);
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(2));
  while (queue.Next(&tag, &ok) && tag != reinterpret_cast<void*>(2)) {
  }
  queue.Shutdown();
  while (queue.Next(&tag, &ok)) {
  }
  return status;
}

class SecurityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    // The HTTPS clients below write to connections the router refuses.
    signal(SIGPIPE, SIG_IGN);
    live_ = testing::TempDir() + "/live";
    std::filesystem::create_directories(live_);
    Copy(PkiFile("server.crt"), live_ + "/server.crt");
    Copy(PkiFile("server.key"), live_ + "/server.key");
    Write(live_ + "/tokens", "# callers\nt0-first-token\n");
    const std::vector<std::string> server_tls = {
        "--tls_cert_file=" + live_ + "/server.crt",
        "--tls_key_file=" + live_ + "/server.key", "--tls_refresh_seconds=1"};
    std::vector<std::string> worker_flags = server_tls;
    worker_flags.push_back("--tls_client_ca_file=" + PkiFile("router_ca.crt"));
    std::vector<std::string> router_flags = server_tls;
    for (std::string f :
         {"--tls_client_ca_file=" + PkiFile("ca.crt"),
          "--worker_tls_ca_file=" + PkiFile("ca.crt"),
          "--worker_tls_cert_file=" + PkiFile("router_client.crt"),
          "--worker_tls_key_file=" + PkiFile("router_client.key"),
          "--auth_tokens_file=" + live_ + "/tokens",
          std::string("--health_port=0"),
          "--health_port_file=" + live_ + "/health.port",
          std::string("--http_port=0"),
          "--http_port_file=" + live_ + "/http.port"}) {
      router_flags.push_back(f);
    }
    deployment_ = new Deployment(testing::GoldenPath(kModel), {"0-1", "2-3"},
                                 router_flags);
    deployment_->SetWorkerFlags(worker_flags);
    deployment_->SetProbeOptions(
        Options(Credentials("ca", "router_client")),
        Options(Credentials("ca", "client"), "t0-first-token"));
    ASSERT_TRUE(deployment_->StartWorker(0).ok())
        << deployment_->worker(0).Log();
    ASSERT_TRUE(deployment_->StartWorker(1).ok())
        << deployment_->worker(1).Log();
    absl::Status router = deployment_->StartRouter();
    ASSERT_TRUE(router.ok()) << router << deployment_->router().Log();
  }
  static void TearDownTestSuite() {
    delete deployment_;
    deployment_ = nullptr;
  }

  // x and options of the golden case, and its expected y.
  static moe::v1::ForwardRequest GoldenRequest() {
    auto golden = testing::ReadAllTensors(testing::GoldenPath(kModel));
    return Request(golden.at("input.x"), moe::v1::RoutingOptions());
  }
  static at::Tensor GoldenY() {
    return testing::ReadAllTensors(testing::GoldenPath(kModel)).at("output.y");
  }

  absl::StatusOr<moe::v1::ForwardResponse> Forward(
      const client::ClientOptions& o) {
    return client::RouterClient::Create(deployment_->router_address(), o)
        ->Forward(GoldenRequest());
  }

  static std::string live_;
  static Deployment* deployment_;
};

std::string SecurityTest::live_;
Deployment* SecurityTest::deployment_ = nullptr;

// The Open Inference Protocol's REST port takes the gRPC port's TLS: HTTPS
// with a client certificate of `ca` and the token; plaintext, no client
// certificate, or no token are refused.
TEST_F(SecurityTest, TheRestPortIsHttpsWithTheSameCredentials) {
  const int port = RestPort(live_);
  ASSERT_GT(port, 0);
  std::unique_ptr<httplib::SSLClient> good = RestClient(port, "client");
  auto ready = good->Get("/v2/health/ready");
  ASSERT_TRUE(ready) << httplib::to_string(ready.error());
  EXPECT_EQ(ready->status, 200);
  auto no_token = good->Get("/v2");
  ASSERT_TRUE(no_token);
  EXPECT_EQ(no_token->status, 401);
  auto metadata =
      good->Get("/v2", {{"Authorization", "Bearer t0-first-token"}});
  ASSERT_TRUE(metadata);
  EXPECT_EQ(metadata->status, 200) << metadata->body;
  // No client certificate: the handshake fails.
  httplib::SSLClient anonymous("127.0.0.1", port);
  anonymous.set_ca_cert_path(PkiFile("ca.crt"));
  anonymous.enable_server_certificate_verification(true);
  EXPECT_FALSE(anonymous.Get("/v2/health/live"));
  // A client certificate of another CA (the routers' toward the workers).
  EXPECT_FALSE(RestClient(port, "router_client")->Get("/v2/health/live"));
  // Plaintext: no HTTP answer.
  httplib::Client plain("127.0.0.1", port);
  plain.set_connection_timeout(5);
  plain.set_read_timeout(5);
  auto res = plain.Get("/v2/health/live");
  EXPECT_TRUE(!res || res->status != 200);
}

TEST_F(SecurityTest, TheRightCredentialsGetGoldenParity) {
  auto r = Forward(Options(Credentials("ca", "client"), "t0-first-token"));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->degraded());
  EXPECT_LE(testing::MaxAbsDiff(Y(*r), GoldenY()), 1e-5);
}

TEST_F(SecurityTest, PlaintextIsRefused) {
  auto r = Forward(Options(nullptr, "t0-first-token"));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
}

TEST_F(SecurityTest, TlsWithoutAClientCertificateIsRefused) {
  auto r = Forward(Options(Credentials("ca", ""), "t0-first-token"));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
}

TEST_F(SecurityTest, ACertificateOfAnotherCaIsRefused) {
  auto r = Forward(Options(Credentials("ca", "stranger"), "t0-first-token"));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
}

TEST_F(SecurityTest, AMissingOrWrongTokenIsUnauthenticatedAndCounted) {
  const double before = Rejected(*deployment_, "unauthenticated");
  auto missing = Forward(Options(Credentials("ca", "client")));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(std::string(missing.status().message()),
              ::testing::HasSubstr("requires a token"));
  // Refused at its headers: the router names the request, the client's
  // error says it once.
  const std::string message(missing.status().message());
  EXPECT_EQ(message.find("[request "), message.rfind("[request ")) << message;
  auto wrong = Forward(Options(Credentials("ca", "client"), "t0-first-tokem"));
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(std::string(wrong.status().message()),
              ::testing::Not(::testing::HasSubstr("t0-first")));
  EXPECT_EQ(Rejected(*deployment_, "unauthenticated"), before + 2);
  // The token never reaches the log.
  EXPECT_FALSE(absl::StrContains(deployment_->router().Log(), "t0-first"));
}

// gRPC reads a unary call's whole message before its handler runs: a
// Forward or ModelInfer without a token is refused from its headers alone
// (router/service/token_gate.h), so a caller who is not one costs the
// router no message. Shown with calls that never send one: refused at
// once, where an accepted caller's call waits for its message.
TEST_F(SecurityTest, ACallWithoutATokenIsRefusedBeforeItsMessageIsRead) {
  const std::string address = deployment_->router_address();
  const auto creds = Credentials("ca", "client");
  const double rejected = Rejected(*deployment_, "unauthenticated");
  const double forwards = Requests(*deployment_, "moe.v1", "UNAUTHENTICATED");
  const double infers = Requests(*deployment_, "oip_grpc", "UNAUTHENTICATED");
  const absl::Time start = absl::Now();
  grpc::Status missing =
      CallWithoutMessage(address, creds, "/moe.v1.Router/Forward", "",
                         absl::Seconds(20), "gate-trace-5");
  EXPECT_EQ(missing.error_code(), grpc::StatusCode::UNAUTHENTICATED)
      << missing.error_message();
  EXPECT_THAT(missing.error_message(),
              ::testing::HasSubstr("this router requires a token"));
  grpc::Status wrong = CallWithoutMessage(
      address, creds, "/inference.GRPCInferenceService/ModelInfer",
      "t0-first-tokem", absl::Seconds(20));
  EXPECT_EQ(wrong.error_code(), grpc::StatusCode::UNAUTHENTICATED)
      << wrong.error_message();
  EXPECT_THAT(wrong.error_message(),
              ::testing::HasSubstr("not one this router accepts"));
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  // The answer names the request as the log does: the caller's ID, or the
  // one the router made (gRPC sends no metadata with such a refusal).
  EXPECT_THAT(missing.error_message(),
              ::testing::EndsWith(" [request gate-trace-5]"));
  const std::string wrong_message = wrong.error_message();
  const size_t at = wrong_message.rfind(" [request ");
  ASSERT_NE(at, std::string::npos) << wrong_message;
  const std::string made_id =
      wrong_message.substr(at + 10, wrong_message.size() - at - 11);
  EXPECT_TRUE(common::UsableRequestId(made_id)) << wrong_message;
  // Counted as the handlers count a refusal.
  EXPECT_EQ(Rejected(*deployment_, "unauthenticated"), rejected + 2);
  EXPECT_EQ(Requests(*deployment_, "moe.v1", "UNAUTHENTICATED"), forwards + 1);
  EXPECT_EQ(Requests(*deployment_, "oip_grpc", "UNAUTHENTICATED"), infers + 1);
  // Logged by the caller's request ID.
  EXPECT_THAT(
      deployment_->router().Log(),
      ::testing::HasSubstr("Forward gate-trace-5 refused at its headers"));
  EXPECT_THAT(deployment_->router().Log(),
              ::testing::HasSubstr(absl::StrCat("ModelInfer ", made_id,
                                                " refused at its headers")));
  // With the token the router waits for the message.
  grpc::Status member =
      CallWithoutMessage(address, creds, "/moe.v1.Router/Forward",
                         "t0-first-token", absl::Seconds(1));
  EXPECT_EQ(member.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
      << member.error_message();
  // GetModelInfo answers callers without a token (the model, not the
  // workers): the gate lets it through to its handler.
  grpc::Status info = CallWithoutMessage(
      address, creds, "/moe.v1.Router/GetModelInfo", "", absl::Seconds(1));
  EXPECT_EQ(info.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED)
      << info.error_message();
}

TEST_F(SecurityTest, WorkerAddressesOnlyForCallersWithAToken) {
  auto anonymous = client::RouterClient::Create(
      deployment_->router_address(), Options(Credentials("ca", "client")));
  auto info = anonymous->GetModelInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_TRUE(info->workers_hidden());
  EXPECT_EQ(info->workers_size(), 0);
  EXPECT_EQ(info->dim(), 16);
  auto member = client::RouterClient::Create(
      deployment_->router_address(),
      Options(Credentials("ca", "client"), "t0-first-token"));
  info = member->GetModelInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->workers_size(), 2);
}

TEST_F(SecurityTest, WorkersServeOnlyRouters) {
  const std::string worker =
      "127.0.0.1:" + std::to_string(deployment_->worker_port(0));
  // A client certificate of the callers' CA is not a router's.
  EXPECT_FALSE(client::CheckHealth(worker, absl::Seconds(3), "",
                                   Options(Credentials("ca", "client")))
                   .ok());
  EXPECT_FALSE(
      client::CheckHealth(worker, absl::Seconds(3), "", Options(nullptr)).ok());
  auto router =
      client::CheckHealth(worker, absl::Seconds(3), "",
                          Options(Credentials("ca", "router_client")));
  ASSERT_TRUE(router.ok()) << router.status();
  EXPECT_EQ(*router, grpc::health::v1::HealthCheckResponse::SERVING);
}

TEST_F(SecurityTest, ThePlaintextHealthPortCarriesHealthOnly) {
  auto port = testing::WaitForPortFile(live_ + "/health.port", absl::Seconds(5),
                                       nullptr);
  ASSERT_TRUE(port.ok()) << port.status();
  const std::string address = "127.0.0.1:" + std::to_string(*port);
  auto health = client::CheckHealth(address, absl::Seconds(3), "moe.v1.Router");
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, grpc::health::v1::HealthCheckResponse::SERVING);
  auto forward = client::RouterClient::Create(address, Options(nullptr))
                     ->Forward(GoldenRequest());
  EXPECT_EQ(forward.status().code(), absl::StatusCode::kUnimplemented)
      << forward.status();
  // Saying why (it was an empty message once).
  EXPECT_THAT(std::string(forward.status().message()),
              ::testing::HasSubstr("this port serves grpc.health.v1 only, not "
                                   "/moe.v1.Router/Forward"));
}

// Changes the live files; every test runs in a process (and deployment)
// of its own.
TEST_F(SecurityTest, CertificatesAndTokensRotateUnderLoadWithoutAFailedCall) {
  const std::string address = deployment_->router_address();
  const int router_port = std::stoi(address.substr(address.find(':') + 1));
  const int rest_port = RestPort(live_);
  ASSERT_THAT(ServedSubject(router_port), ::testing::HasSubstr("server-1"));
  ASSERT_THAT(ServedSubject(rest_port), ::testing::HasSubstr("server-1"));
  std::atomic<bool> stop{false};
  std::atomic<int> ok{0}, failed{0}, rest_ok{0};
  std::string first_error;
  std::mutex mu;
  std::vector<std::thread> load;
  const absl::Time limit = absl::Now() + absl::Seconds(30);
  // The REST port under load too: a fresh HTTPS client every few requests.
  load.emplace_back([&] {
    while (!stop.load() && absl::Now() < limit) {
      std::unique_ptr<httplib::SSLClient> rest =
          RestClient(rest_port, "client");
      for (int i = 0; i < 5 && !stop.load(); ++i) {
        auto r = rest->Get("/v2/models/" + kModel + "/ready",
                           {{"Authorization", "Bearer t0-first-token"}});
        if (r && r->status == 200) {
          ++rest_ok;
          continue;
        }
        ++failed;
        std::lock_guard<std::mutex> lock(mu);
        if (first_error.empty()) {
          first_error =
              "REST: " + (r ? std::to_string(r->status) + " " + r->body
                            : httplib::to_string(r.error()));
        }
      }
    }
  });
  for (int t = 0; t < 2; ++t) {
    load.emplace_back([&] {
      // A fresh client (a fresh handshake) every few calls, so that new
      // connections during the rotation are covered too.
      while (!stop.load() && absl::Now() < limit) {
        auto client = client::RouterClient::Create(
            deployment_->router_address(),
            Options(Credentials("ca", "client"), "t0-first-token"));
        for (int i = 0; i < 5 && !stop.load(); ++i) {
          auto r = client->Forward(GoldenRequest());
          if (r.ok() && !r->degraded()) {
            ++ok;
            continue;
          }
          ++failed;
          std::lock_guard<std::mutex> lock(mu);
          if (first_error.empty()) {
            first_error = r.ok() ? "degraded" : r.status().ToString();
          }
        }
      }
    });
  }
  while (ok.load() < 20 && absl::Now() < limit) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  // Rotate every server's certificate (key first: both files change within
  // one refresh) and the router's tokens.
  Copy(PkiFile("server2.key"), live_ + "/server.key");
  Copy(PkiFile("server2.crt"), live_ + "/server.crt");
  Write(live_ + "/tokens", "t0-first-token\nt1-second-token\n");
  bool rotated = false;
  while (!rotated && absl::Now() < limit) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    rotated = absl::StrContains(ServedSubject(router_port), "server-2");
  }
  EXPECT_TRUE(rotated) << "the router still serves the old certificate";
  bool rest_rotated = false;
  while (!rest_rotated && absl::Now() < limit) {
    rest_rotated = absl::StrContains(ServedSubject(rest_port), "server-2");
    if (!rest_rotated)
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_TRUE(rest_rotated) << "the REST port still serves the old certificate";
  const int before = ok.load(), rest_before = rest_ok.load();
  while ((ok.load() < before + 20 || rest_ok.load() < rest_before + 20) &&
         absl::Now() < limit) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  stop = true;
  for (std::thread& t : load) t.join();
  EXPECT_EQ(failed.load(), 0) << first_error;
  EXPECT_GE(ok.load(), before + 20);
  EXPECT_GE(rest_ok.load(), rest_before + 20);
  EXPECT_THAT(deployment_->router().Log(),
              ::testing::HasSubstr("the changed files are in use"));
  // The new token works; the workers serve the new certificate too. Each
  // process checks its files on its own clock (--tls_refresh_seconds): a
  // worker may take the new one after the router did (a sanitizer build's
  // fresh-clone run once looked too soon).
  auto r = Forward(Options(Credentials("ca", "client"), "t1-second-token"));
  EXPECT_TRUE(r.ok()) << r.status();
  std::string worker_subject;
  for (const absl::Time until = absl::Now() + absl::Seconds(30);
       absl::Now() < until;) {
    worker_subject =
        ServedSubject(deployment_->worker_port(0), "router_client");
    if (absl::StrContains(worker_subject, "server-2")) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_THAT(worker_subject, ::testing::HasSubstr("server-2"));
}

// TLS files that cannot serve stop a server at start, with exit 1 and a
// line naming the flag and the file.
TEST(TlsFilesTest, FilesThatCannotServeStopTheServerNamingTheFlagAndFile) {
  const std::string junk = testing::TempDir() + "/junk.pem";
  Write(junk, "not a certificate\n");
  const std::string cert = PkiFile("server.crt"), key = PkiFile("server.key");
  const std::string model = testing::GoldenPath(kModel);
  struct Case {
    std::string binary;
    std::vector<std::string> flags;
    std::string says;
  };
  const std::vector<Case> cases = {
      {"moe-router",
       {"--tls_cert_file=" + cert, "--tls_key_file=" + PkiFile("server2.key")},
       "--tls_key_file: " + PkiFile("server2.key") +
           " is not the key of --tls_cert_file " + cert},
      {"moe-router",
       {"--tls_cert_file=" + cert, "--tls_key_file=" + key,
        "--tls_client_ca_file=" + junk},
       "--tls_client_ca_file: " + junk + " holds no PEM certificate"},
      {"moe-router",
       {"--tls_cert_file=/nonexistent.crt", "--tls_key_file=" + key},
       "--tls_cert_file: cannot read /nonexistent.crt"},
      {"moe-router",
       {"--tls_cert_file=" + cert},
       "--tls_cert_file and --tls_key_file go together"},
      {"moe-router",
       {"--worker_tls_ca_file=" + junk},
       "--worker_tls_ca_file: " + junk + " holds no PEM certificate"},
      {"moe-expert",
       {"--tls_cert_file=" + junk, "--tls_key_file=" + key},
       "--tls_cert_file: " + junk + " holds no PEM certificate"},
  };
  for (const Case& c : cases) {
    std::vector<std::string> argv = {testing::BinaryPath(c.binary),
                                     "--checkpoint=" + model, "--port=0",
                                     "--metrics_port=-1"};
    if (c.binary == "moe-router") argv.push_back("--workers=127.0.0.1:1");
    argv.insert(argv.end(), c.flags.begin(), c.flags.end());
    std::string log;
    EXPECT_EQ(testing::RunProcess(argv, &log), 1) << c.says << "\n" << log;
    EXPECT_THAT(log, ::testing::HasSubstr(c.says)) << log;
  }
}

// A rotation that leaves the files unusable for a while (the key written,
// the certificate not yet): the REST port keeps the certificate it has,
// serving, says why once, and takes the files when they make a pair again.
TEST_F(SecurityTest, TheRestPortKeepsItsCertificateWhileTheNewFilesDoNotLoad) {
  const int port = RestPort(live_);
  ASSERT_GT(port, 0);
  ASSERT_THAT(ServedSubject(port), ::testing::HasSubstr("server-1"));
  Copy(PkiFile("server2.key"), live_ + "/server.key");
  // Past several refreshes (--tls_refresh_seconds=1), each handshake a look.
  for (const absl::Time until = absl::Now() + absl::Seconds(4);
       absl::Now() < until;) {
    auto r = RestClient(port, "client")->Get("/v2/health/live");
    ASSERT_TRUE(r) << httplib::to_string(r.error());
    EXPECT_EQ(r->status, 200);
    EXPECT_THAT(ServedSubject(port), ::testing::HasSubstr("server-1"));
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  const std::string log = deployment_->router().Log();
  const std::string refusal =
      "keeping the previous certificate: --tls_key_file: " + live_ +
      "/server.key is not the key of --tls_cert_file";
  EXPECT_THAT(log, ::testing::HasSubstr(refusal));
  int said = 0;
  for (size_t at = log.find(refusal); at != std::string::npos;
       at = log.find(refusal, at + 1)) {
    ++said;
  }
  EXPECT_EQ(said, 1) << log;
  Copy(PkiFile("server2.crt"), live_ + "/server.crt");
  std::string subject;
  for (const absl::Time until = absl::Now() + absl::Seconds(30);
       absl::Now() < until;) {
    subject = ServedSubject(port);
    if (absl::StrContains(subject, "server-2")) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  EXPECT_THAT(subject, ::testing::HasSubstr("server-2"));
  auto r = RestClient(port, "client")->Get("/v2/health/live");
  ASSERT_TRUE(r) << httplib::to_string(r.error());
  EXPECT_EQ(r->status, 200);
}

}  // namespace
}  // namespace moe
