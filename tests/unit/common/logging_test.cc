#include "common/logging.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace moe::common {
namespace {

const absl::Time kWhen = absl::FromUnixMillis(1796529740123);  // 2026-12-06

TEST(LogFormatTest, TextIsOneLineWithContinuationsAndEscapes) {
  EXPECT_EQ(FormatLogLine(LogFormat::kText, LogLevel::kWarning, "moe-router",
                          kWhen, "two\nlines, a \x01 byte"),
            "2026-12-06T04:02:20.123Z W moe-router: two\n    lines, a \\x01 "
            "byte\n");
}

TEST(LogFormatTest, JsonIsOneObjectPerLineWhateverTheMessageHolds) {
  const std::string message = "quote \" backslash \\ tab \t break \n nul " +
                              std::string(1, '\0') +
                              " caf\xc3\xa9 not-utf8 \xff\xfe end";
  const std::string line = FormatLogLine(LogFormat::kJson, LogLevel::kError,
                                         "moe-expert", kWhen, message);
  ASSERT_EQ(line.back(), '\n');
  EXPECT_EQ(line.find('\n'), line.size() - 1) << line;
  const nlohmann::json j = nlohmann::json::parse(line);
  EXPECT_EQ(j["time"], "2026-12-06T04:02:20.123Z");
  EXPECT_EQ(j["level"], "ERROR");
  EXPECT_EQ(j["program"], "moe-expert");
  // Everything but the bytes that are not UTF-8, which become U+FFFD.
  EXPECT_EQ(j["message"],
            "quote \" backslash \\ tab \t break \n nul " +
                std::string(1, '\0') +
                " caf\xc3\xa9 not-utf8 \xef\xbf\xbd\xef\xbf\xbd end");
  // The fields in the order people read them.
  EXPECT_EQ(line.rfind("{\"time\":\"2026-12-06T04:02:20.123Z\",\"level\":"
                       "\"ERROR\",\"program\":\"moe-expert\",\"message\":",
                       0),
            0u)
      << line;
  EXPECT_EQ(nlohmann::json::parse(FormatLogLine(
                LogFormat::kJson, LogLevel::kInfo, "moe", kWhen, ""))["level"],
            "INFO");
}

TEST(LogFormatTest, FieldsStandBeforeTheMessageInJsonAndOnlyThere) {
  const std::vector<LogField> fields = {{"request_id", "abc-1"}};
  EXPECT_EQ(FormatLogLine(LogFormat::kJson, LogLevel::kInfo, "moe-router",
                          kWhen, "Forward abc-1: OK", fields),
            "{\"time\":\"2026-12-06T04:02:20.123Z\",\"level\":\"INFO\","
            "\"program\":\"moe-router\",\"request_id\":\"abc-1\","
            "\"message\":\"Forward abc-1: OK\"}\n");
  EXPECT_EQ(FormatLogLine(LogFormat::kText, LogLevel::kInfo, "moe-router",
                          kWhen, "Forward abc-1: OK", fields),
            "2026-12-06T04:02:20.123Z I moe-router: Forward abc-1: OK\n");
}

TEST(LogFormatTest, ParsesTextAndJsonOnly) {
  EXPECT_EQ(ParseLogFormat("text").value(), LogFormat::kText);
  EXPECT_EQ(ParseLogFormat("json").value(), LogFormat::kJson);
  for (const char* bad : {"", "JSON", "xml", "json "}) {
    const auto parsed = ParseLogFormat(bad);
    ASSERT_FALSE(parsed.ok()) << bad;
    EXPECT_NE(parsed.status().message().find("must be text or json"),
              absl::string_view::npos)
        << parsed.status();
  }
}

}  // namespace
}  // namespace moe::common
