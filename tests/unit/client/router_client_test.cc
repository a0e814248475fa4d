#include "client/router_client.h"

#include <string>

#include "absl/synchronization/notification.h"
#include "gtest/gtest.h"

namespace moe::client {
namespace {

// gRPC aborts the process on a header value it refuses: with such a token
// every call fails with INVALID_ARGUMENT before it is made.
TEST(RouterClientTest, CallsWithATokenAHeaderCannotCarryFailAndNothingAborts) {
  ClientOptions options;
  options.token = "tok\n";
  auto client = RouterClient::Create("127.0.0.1:1", options);
  auto forward = client->Forward(moe::v1::ForwardRequest());
  EXPECT_TRUE(absl::IsInvalidArgument(forward.status())) << forward.status();
  auto info = client->GetModelInfo();
  EXPECT_TRUE(absl::IsInvalidArgument(info.status())) << info.status();
  absl::Notification done;
  absl::Status async_status;
  client->ForwardAsync(moe::v1::ForwardRequest(),
                       [&](absl::StatusOr<moe::v1::ForwardResponse> r) {
                         async_status = r.status();
                         done.Notify();
                       });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  EXPECT_TRUE(absl::IsInvalidArgument(async_status)) << async_status;
}

}  // namespace
}  // namespace moe::client
