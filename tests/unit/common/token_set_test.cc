#include "common/token_set.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <thread>
#include <vector>

#include "testing/fake_clock.h"
#include "testing/golden.h"

namespace moe::common {
namespace {

using Verdict = TokenSet::Verdict;

void Write(const std::string& path, const std::string& text) {
  std::ofstream(path + ".tmp") << text;
  std::filesystem::rename(path + ".tmp", path);
}

TEST(TokenSetTest, AcceptsTheFilesTokensOnly) {
  const std::string path = testing::TempDir() + "/tokens-a";
  Write(path, "# comment\n\n  alpha  \nbeta\n");
  testing::FakeClock clock;
  auto tokens = TokenSet::FromFile(path, absl::Seconds(1), &clock);
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  EXPECT_EQ((*tokens)->size(), 2u);
  EXPECT_EQ((*tokens)->Check("Bearer alpha"), Verdict::kAccepted);
  EXPECT_EQ((*tokens)->Check("bearer beta"), Verdict::kAccepted);
  EXPECT_EQ((*tokens)->Check(""), Verdict::kMissing);
  EXPECT_EQ((*tokens)->Check("Bearer alph"), Verdict::kUnknown);
  EXPECT_EQ((*tokens)->Check("Bearer "), Verdict::kUnknown);
  EXPECT_EQ((*tokens)->Check("Basic alpha"), Verdict::kUnknown);
  EXPECT_EQ((*tokens)->Check("alpha"), Verdict::kUnknown);
  EXPECT_EQ((*tokens)->Check("Bearer # comment"), Verdict::kUnknown);
}

TEST(TokenSetTest, ReloadsWhenTheFileChangesAndKeepsTokensOfABadFile) {
  const std::string path = testing::TempDir() + "/tokens-b";
  Write(path, "old\n");
  testing::FakeClock clock;
  auto tokens = TokenSet::FromFile(path, absl::Seconds(1), &clock);
  ASSERT_TRUE(tokens.ok());
  Write(path, "new\n");
  // Not re-read before `recheck` has passed.
  EXPECT_EQ((*tokens)->Check("Bearer old"), Verdict::kAccepted);
  clock.Advance(absl::Seconds(2));
  EXPECT_EQ((*tokens)->Check("Bearer new"), Verdict::kAccepted);
  EXPECT_EQ((*tokens)->Check("Bearer old"), Verdict::kUnknown);
  // An empty file is a mistake: the tokens before it stay.
  Write(path, "# nothing\n");
  clock.Advance(absl::Seconds(2));
  EXPECT_EQ((*tokens)->Check("Bearer new"), Verdict::kAccepted);
  // So does a missing one.
  std::filesystem::remove(path);
  clock.Advance(absl::Seconds(2));
  EXPECT_EQ((*tokens)->Check("Bearer new"), Verdict::kAccepted);
}

// What a caller sends (moe-balancer's admin token): the file's first token,
// in the same format the servers read.
TEST(TokenSetTest, ReadFirstTokenSkipsCommentsAndBlankLines) {
  const std::string path = testing::TempDir() + "/tokens-first";
  Write(path, "# the admin token\n\n  first  \nsecond\n");
  auto token = ReadFirstToken(path, "--admin_token_file");
  ASSERT_TRUE(token.ok()) << token.status();
  EXPECT_EQ(*token, "first");
  Write(path, "# nothing\n\n");
  EXPECT_NE(ReadFirstToken(path, "--admin_token_file")
                .status()
                .message()
                .find("--admin_token_file: " + path + " holds no token"),
            std::string::npos);
}

// gRPC's C++ library aborts the process on a header value it refuses:
// every sender checks its token first.
TEST(TokenSetTest, OnlyPrintableAsciiTokensCanBeSent) {
  EXPECT_TRUE(CheckSendableToken("").ok());
  EXPECT_TRUE(CheckSendableToken("abc-DEF_123.~ !").ok());
  for (const std::string& bad :
       {std::string("tok\n"), std::string("a\tb"), std::string("t\xc3\xb6ken"),
        std::string("a\0b", 3), std::string("\x7f")}) {
    const absl::Status s = CheckSendableToken(bad);
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
    EXPECT_NE(s.message().find("printable ASCII"), std::string::npos) << s;
  }
  EXPECT_NE(CheckSendableToken("tok\n").message().find("byte 0x0a at offset 3"),
            std::string::npos);
  const std::string path = testing::TempDir() + "/tokens-unsendable";
  Write(path, "t\x01ken\n");
  const absl::Status read = ReadFirstToken(path, "--admin_token_file").status();
  EXPECT_TRUE(absl::IsInvalidArgument(read)) << read;
  EXPECT_NE(read.message().find("--admin_token_file: " + path +
                                ": the bearer token holds byte 0x01"),
            std::string::npos)
      << read;
}

TEST(TokenSetTest, AnUnreadableOrEmptyFileIsAnErrorAtStart) {
  EXPECT_EQ(TokenSet::FromFile(testing::TempDir() + "/nope").status().code(),
            absl::StatusCode::kInvalidArgument);
  const std::string path = testing::TempDir() + "/tokens-c";
  Write(path, "\n# only comments\n");
  auto tokens = TokenSet::FromFile(path);
  EXPECT_EQ(tokens.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(tokens.status().message().find("holds no token"),
            std::string::npos);
}

TEST(TokenSetTest, ChecksFromManyThreadsWhileTheFileChanges) {
  const std::string path = testing::TempDir() + "/tokens-d";
  Write(path, "stay\n");
  auto tokens = TokenSet::FromFile(path, absl::ZeroDuration());
  ASSERT_TRUE(tokens.ok());
  std::vector<std::thread> threads;
  std::atomic<int> refused{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 500; ++i) {
        if ((*tokens)->Check("Bearer stay") != Verdict::kAccepted) ++refused;
      }
    });
  }
  for (int i = 0; i < 50; ++i)
    Write(path, "stay\nother" + std::to_string(i) + "\n");
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(refused.load(), 0);
}

}  // namespace
}  // namespace moe::common
