#include "server/main_helpers.h"

#include <gtest/gtest.h>

#include <fstream>

#include "common/cli/command_line.h"
#include "common/id_ranges.h"

namespace moe::server {
namespace {

TEST(IdRangesTest, ParsesAndFoldsIdLists) {
  auto ids = common::ParseIdRanges("0-3,8, 5", 16);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, (std::vector<int64_t>{0, 1, 2, 3, 5, 8}));
  EXPECT_EQ(common::FoldIdRanges(*ids), "0-3,5,8");
  EXPECT_FALSE(common::ParseIdRanges("", 16).ok());
  EXPECT_FALSE(common::ParseIdRanges("3-1", 16).ok());
  EXPECT_FALSE(common::ParseIdRanges("a", 16).ok());
  EXPECT_FALSE(common::ParseIdRanges("1-2-3", 16).ok());
  auto out = common::ParseIdRanges("15-16", 16);
  ASSERT_FALSE(out.ok());
  EXPECT_NE(out.status().message().find("outside the valid ids 0..15"),
            std::string::npos);
}

TEST(MainHelpersTest, HostnamesTemplatesAndWireDTypes) {
  EXPECT_EQ(*OrdinalFromHostname("moe-expert-12"), 12);
  EXPECT_EQ(*OrdinalFromHostname("moe-expert-3.moe-expert.ns.svc"), 3);
  EXPECT_FALSE(OrdinalFromHostname("router").ok());
  auto names = ExpandTemplate("moe-expert-{i}.moe-expert:50052", 2);
  ASSERT_TRUE(names.ok());
  EXPECT_EQ((*names)[1], "moe-expert-1.moe-expert:50052");
  EXPECT_FALSE(ExpandTemplate("moe-expert:50052", 2).ok());
  EXPECT_EQ(*ParseWireDType("bfloat16"), common::DType::kBFloat16);
  EXPECT_FALSE(ParseWireDType("int8").ok());
  EXPECT_FALSE(ParseWireDType("int64").ok());
}

TEST(MainHelpersTest, WorkerAddressesFromEverySource) {
  const std::string file = ::testing::TempDir() + "/workers.txt";
  std::ofstream(file) << "# two more\nc:3, d:4\n\n";
  auto all = WorkerAddresses(" a:1,b:2 ", file, "w-{i}:5", 2);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(*all, (std::vector<std::string>{"a:1", "b:2", "c:3", "d:4", "w-0:5",
                                            "w-1:5"}));
  auto none = WorkerAddresses("", "", "", 0);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(none.status().message().find("--workers"), std::string::npos);
  EXPECT_EQ(WorkerAddresses("", "/nonexistent/w.txt", "", 0).status().code(),
            absl::StatusCode::kNotFound);
  auto bad = WorkerAddresses("", "", "w:5", 2);
  EXPECT_NE(bad.status().message().find("--worker_template"),
            std::string::npos);
}

TEST(CommandLineTest, DashedFlagNamesBecomeUnderscores) {
  char a0[] = "prog", a1[] = "--input-tensor=a-b", a2[] = "--", a3[] = "--x-y";
  char* argv[] = {a0, a1, a2, a3};
  auto args = cli::NormalizeFlagDashes(4, argv);
  EXPECT_EQ(args[1], "--input_tensor=a-b");  // values keep their dashes
  EXPECT_EQ(args[3], "--x-y");               // after "--": untouched
  EXPECT_NE(cli::VersionText("prog").find("prog 0.1.0 (git "),
            std::string::npos);
}

}  // namespace
}  // namespace moe::server
