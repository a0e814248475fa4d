// What a client sends or holds is bounded, with real processes on
// 127.0.0.1: reflection is served only when asked (never on the
// health-only port), an idle connection is closed after the configured
// time, and a layer name is bounded and quoted wherever it is echoed or
// logged (no log line can be forged).
#include <ATen/ATen.h>
#include <gmock/gmock.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/router_client.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "testing/deployment.h"
#include "testing/golden.h"
#include "testing/reference.h"
#include "testing/reflection_client.h"

namespace moe {
namespace {

using ::testing::Contains;
using testing::Deployment;
using ::testing::HasSubstr;

const std::string kModel = "A_moe_eval_nodrop";  // 4 experts, dim 16

std::string Address(int port) { return absl::StrCat("127.0.0.1:", port); }

TEST(LimitsTest, ReflectionIsServedOnlyWhenAsked) {
  const std::string dir = testing::TempDir();
  Deployment d(testing::GoldenPath(kModel), {"0-3", "0-3"});
  ASSERT_TRUE(d.StartWorker(0).ok());  // the default: --reflection=false
  auto none = testing::ListServicesByReflection(Address(d.worker_port(0)));
  EXPECT_EQ(none.status().code(), absl::StatusCode::kUnimplemented)
      << none.status();
  d.SetWorkerFlags({"--reflection=true", "--health_port=0",
                    "--health_port_file=" + dir + "/reflect-health.port"});
  ASSERT_TRUE(d.StartWorker(1).ok());
  auto listed = testing::ListServicesByReflection(Address(d.worker_port(1)));
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_THAT(*listed, Contains("moe.v1.ExpertWorker"));
  // The plaintext health-only port serves health and nothing else.
  auto health_port = testing::WaitForPortFile(dir + "/reflect-health.port",
                                              absl::Seconds(10), &d.worker(1));
  ASSERT_TRUE(health_port.ok()) << health_port.status();
  auto on_health = testing::ListServicesByReflection(Address(*health_port));
  EXPECT_EQ(on_health.status().code(), absl::StatusCode::kUnimplemented)
      << on_health.status();
  ASSERT_TRUE(d.StartRouter().ok()) << d.router().Log();
  auto router = testing::ListServicesByReflection(d.router_address());
  EXPECT_EQ(router.status().code(), absl::StatusCode::kUnimplemented)
      << router.status();
}

// How long a connected channel stays connected after one call, up to
// `limit`: until the server closes it (the channel goes IDLE).
absl::Duration TimeConnected(const std::string& address, absl::Duration limit) {
  auto channel =
      grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  auto stub = grpc::health::v1::Health::NewStub(channel);
  grpc::ClientContext context;
  grpc::health::v1::HealthCheckResponse response;
  EXPECT_TRUE(
      stub->Check(&context, grpc::health::v1::HealthCheckRequest(), &response)
          .ok());
  const absl::Time called = absl::Now();
  grpc_connectivity_state state = channel->GetState(false);
  while (state != GRPC_CHANNEL_IDLE && absl::Now() - called < limit) {
    channel->WaitForStateChange(state, absl::ToChronoTime(called + limit));
    state = channel->GetState(false);
  }
  return absl::Now() - called;
}

TEST(LimitsTest, AnIdleConnectionIsClosedAfterTheLimit) {
  Deployment d(testing::GoldenPath(kModel), {"0-3", "0-3"});
  d.SetWorkerFlags({"--max_connection_idle_seconds=1"});
  ASSERT_TRUE(d.StartWorker(0).ok());
  const absl::Duration closed =
      TimeConnected(Address(d.worker_port(0)), absl::Seconds(10));
  EXPECT_GE(closed, absl::Milliseconds(900));
  EXPECT_LE(closed, absl::Seconds(5));
  // The default (300 s) keeps it.
  d.SetWorkerFlags({});
  ASSERT_TRUE(d.StartWorker(1).ok());
  EXPECT_GE(TimeConnected(Address(d.worker_port(1)), absl::Seconds(3)),
            absl::Seconds(3));
}

TEST(LimitsTest, ALayerNameIsBoundedAndCannotForgeALogLine) {
  Deployment d(testing::GoldenPath(kModel), {"0-3"});
  ASSERT_TRUE(d.StartWorker(0).ok());
  ASSERT_TRUE(d.StartRouter().ok()) << d.router().Log();
  client::ClientOptions once;
  once.max_attempts = 1;
  auto client = client::RouterClient::Create(d.router_address(), once);
  const at::Tensor x =
      testing::ReadAllTensors(testing::GoldenPath(kModel)).at("input.x");
  moe::v1::ForwardRequest request = testing::Request(x, {});
  request.set_layer(std::string(1 << 20, 'a'));  // 1 MiB
  auto big = client->Forward(request);
  EXPECT_EQ(big.status().code(), absl::StatusCode::kInvalidArgument)
      << big.status().ToString().substr(0, 200);
  EXPECT_THAT(std::string(big.status().message()),
              HasSubstr("is not a layer name"));
  EXPECT_LT(big.status().message().size(), 400u);
  const std::string forged = "2026-12-04T00:00:00.000Z I moe-router: FAKE line";
  request.set_layer("x\"\n" + forged);
  auto newline = client->Forward(request);
  EXPECT_EQ(newline.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string log = d.router().Log();
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    EXPECT_FALSE(absl::StartsWith(line, forged)) << "forged: " << line;
  }
  EXPECT_THAT(log, HasSubstr("layer \"x\\\"\\n2026-12-04"));
  // Every log line stays short: the 1 MiB name is cut.
  for (absl::string_view line : absl::StrSplit(log, '\n')) {
    EXPECT_LT(line.size(), 2000u);
  }
}

}  // namespace
}  // namespace moe
