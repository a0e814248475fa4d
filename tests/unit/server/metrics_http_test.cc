// MetricsHttpServer on 127.0.0.1: it serves the registry, and clients that
// send their requests too slowly cannot hold every thread of its pool from
// a scrape (common::ConnectionDeadlines).
#include "server/metrics_http.h"

#include <gtest/gtest.h>
#include <httplib.h>
#include <prometheus/counter.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "testing/loopback.h"

namespace moe::server {
namespace {

TEST(MetricsHttpServerTest, SlowSendersCannotHoldEveryThreadFromAScrape) {
  auto registry = std::make_shared<prometheus::Registry>();
  prometheus::BuildCounter()
      .Name("moe_test_total")
      .Help("A counter.")
      .Register(*registry)
      .Add({})
      .Increment(3);
  absl::StatusOr<std::unique_ptr<MetricsHttpServer>> server =
      MetricsHttpServer::Start("127.0.0.1", 0, registry, absl::Seconds(1));
  ASSERT_TRUE(server.ok()) << server.status();
  const int port = (*server)->port();

  // Every thread of the pool holds a head that never ends: a byte of it
  // every 300 ms (each read well within httplib's own timeout of 5 s), for
  // at most 30 s or until the server ends the connection.
  std::vector<int> slow;
  for (size_t i = 0; i < MetricsHttpServer::kThreads; ++i) {
    const int fd = testing::ConnectLoopback(port);
    ASSERT_GE(fd, 0);
    ASSERT_TRUE(testing::SendAll(fd, "GET /metrics HTTP/1.1\r\nX-Slow: "));
    slow.push_back(fd);
  }
  std::vector<absl::Duration> ended(slow.size(), absl::InfiniteDuration());
  const absl::Time start = absl::Now();
  std::thread trickle([&] {
    while (absl::Now() - start < absl::Seconds(30)) {
      bool any = false;
      for (size_t i = 0; i < slow.size(); ++i) {
        if (ended[i] != absl::InfiniteDuration()) continue;
        if (send(slow[i], "a", 1, MSG_NOSIGNAL) == 1) {
          any = true;
        } else {
          ended[i] = absl::Now() - start;
        }
      }
      if (!any) return;
      absl::SleepFor(absl::Milliseconds(300));
    }
  });
  absl::SleepFor(absl::Milliseconds(300));
  httplib::Client http("127.0.0.1", port);
  http.set_read_timeout(25, 0);
  const absl::Time asked = absl::Now();
  auto scrape = http.Get("/metrics");
  const absl::Duration waited = absl::Now() - asked;
  trickle.join();
  for (int fd : slow) close(fd);
  ASSERT_TRUE(scrape) << "no scrape behind " << slow.size() << " slow senders";
  EXPECT_EQ(scrape->status, 200);
  EXPECT_NE(scrape->body.find("moe_test_total 3"), std::string::npos)
      << scrape->body;
  // Once the 5 s keep-alive and the 1 s timeout have passed, not after the
  // 30 s of sending.
  EXPECT_GE(waited, absl::Seconds(4));
  EXPECT_LT(waited, absl::Seconds(15));
  // Each slow connection was closed from the server's side.
  for (const absl::Duration d : ended) EXPECT_LT(d, absl::Seconds(15));
}

// httplib 0.11 reads a body for POST, PUT, PATCH and DELETE, without a
// Content-Length until the client closes: such a request waited for the
// deadline and got no answer. Only GET and HEAD are served; others are
// answered 405 from their heads, and the connection serves on.
TEST(MetricsHttpServerTest, OnlyGetAndHeadAreServed) {
  auto registry = std::make_shared<prometheus::Registry>();
  absl::StatusOr<std::unique_ptr<MetricsHttpServer>> server =
      MetricsHttpServer::Start("127.0.0.1", 0, registry, absl::Seconds(10));
  ASSERT_TRUE(server.ok()) << server.status();
  for (const char* method : {"POST", "PUT", "PATCH", "DELETE"}) {
    const int fd = testing::ConnectLoopback((*server)->port());
    ASSERT_GE(fd, 0);
    const absl::Time start = absl::Now();
    ASSERT_TRUE(testing::SendAll(
        fd, absl::StrCat(method, " /metrics HTTP/1.1\r\nHost: a\r\n\r\n")));
    std::string head;
    EXPECT_EQ(testing::ReadAnswer(fd, nullptr, &head), 405) << method;
    EXPECT_LT(absl::Now() - start, absl::Seconds(5)) << method;
    EXPECT_NE(head.find("Allow: GET, HEAD"), std::string::npos) << head;
    ASSERT_TRUE(
        testing::SendAll(fd, "GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n"));
    EXPECT_EQ(testing::ReadAnswer(fd, nullptr), 200) << method;
    close(fd);
  }
  httplib::Client http("127.0.0.1", (*server)->port());
  auto head = http.Head("/metrics");
  ASSERT_TRUE(head);
  EXPECT_EQ(head->status, 200);
}

}  // namespace
}  // namespace moe::server
