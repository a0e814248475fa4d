#include "common/request_id.h"

#include <gtest/gtest.h>

#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"

namespace moe::common {
namespace {

TEST(RequestIdTest, TakesWhatTracingSystemsSendAndNothingElse) {
  for (const char* id :
       {"a", "5f0c2a1e9b7d4c3a", "0af7651916cd43dd8448eb211c80319c",
        "123e4567-e89b-12d3-a456-426614174000", "trace:span/1+x=="}) {
    EXPECT_TRUE(UsableRequestId(id)) << id;
    EXPECT_TRUE(CheckRequestId(id).ok()) << id;
    EXPECT_EQ(RequestIdOrNew(id), id);
  }
  const std::string longest(kMaxRequestIdBytes, 'x');
  EXPECT_TRUE(UsableRequestId(longest));
  for (const std::string& id :
       {std::string(), longest + "x", std::string("two words"),
        std::string("line\nbreak"), std::string("quote\""),
        std::string("nul\0byte", 8), std::string("caf\xc3\xa9"),
        std::string("semi;colon")}) {
    EXPECT_FALSE(UsableRequestId(id)) << id;
    const absl::Status refused = CheckRequestId(id);
    EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << id;
    EXPECT_NE(refused.message().find("bytes of letters, digits"),
              absl::string_view::npos)
        << refused;
    const std::string made = RequestIdOrNew(id);
    EXPECT_NE(made, id);
    EXPECT_TRUE(UsableRequestId(made));
    // A protocol's own ID field stands in for an unusable caller's ID,
    // when it is usable itself.
    EXPECT_EQ(RequestIdOrNew(id, "body-1"), "body-1");
    const std::string neither = RequestIdOrNew(id, id);
    EXPECT_NE(neither, id);
    EXPECT_EQ(neither.size(), 16u);
  }
  EXPECT_EQ(RequestIdOrNew("header-1", "body-1"), "header-1");
}

TEST(RequestIdTest, NewOnesAreSixteenHexDigitsAndDistinctAcrossThreads) {
  constexpr int kThreads = 4, kEach = 5000;
  std::vector<std::vector<std::string>> made(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&made, t] {
      for (int i = 0; i < kEach; ++i) made[t].push_back(NewRequestId());
    });
  }
  for (std::thread& t : threads) t.join();
  std::set<std::string> all;
  for (const auto& ids : made) {
    for (const std::string& id : ids) {
      ASSERT_EQ(id.size(), 16u) << id;
      for (char c : id) {
        ASSERT_TRUE(absl::ascii_isdigit(c) || (c >= 'a' && c <= 'f')) << id;
      }
      all.insert(id);
    }
  }
  EXPECT_EQ(all.size(), size_t{kThreads * kEach});
}

TEST(RequestIdTest, TraceIdOfAW3cTraceparent) {
  EXPECT_EQ(
      TraceIdOf("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
      "0af7651916cd43dd8448eb211c80319c");
  // A later version may add fields; version 00 may not.
  EXPECT_EQ(
      TraceIdOf("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00-x"),
      "0af7651916cd43dd8448eb211c80319c");
  for (const char* bad :
       {"", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
        "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c8031g9-b7ad6b7169203331-01",
        "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x"}) {
    EXPECT_EQ(TraceIdOf(bad), "") << bad;
  }
}

TEST(RequestIdTest, TheCallersIdThenTheBodysThenTheTraceThenANewOne) {
  const std::string traceparent =
      "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
  EXPECT_EQ(RequestIdOrNew("caller", "body", traceparent), "caller");
  EXPECT_EQ(RequestIdOrNew("bad id", "body", traceparent), "body");
  EXPECT_EQ(RequestIdOrNew("", "", traceparent),
            "0af7651916cd43dd8448eb211c80319c");
  const std::string made = RequestIdOrNew("", "", "00-not-a-trace");
  EXPECT_EQ(made.size(), 16u);
  EXPECT_TRUE(UsableRequestId(made));
}

}  // namespace
}  // namespace moe::common
