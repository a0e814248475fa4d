#include "common/json_errors.h"

#include <gtest/gtest.h>

#include <string>

namespace moe::common {
namespace {

TEST(WhyNotJsonTest, SaysWhatAndWhere) {
  EXPECT_EQ(WhyNotJson(""), "it is empty");
  EXPECT_EQ(WhyNotJson(" \n\t"), "it is empty");
  EXPECT_EQ(WhyNotJson("{"),
            "parse error at line 1, column 2: syntax error while parsing "
            "object key - unexpected end of input; expected string literal");
  EXPECT_EQ(WhyNotJson("{\"a\": 1}\n x"),
            "parse error at line 2, column 2: syntax error while parsing "
            "value - invalid literal; expected end of input");
  EXPECT_EQ(WhyNotJson("[1e999]"), "number overflow parsing '1e999'");
}

TEST(WhyNotJsonTest, NamesNanAndInfinityOnlyWhereTheParserStoppedAtThem) {
  const std::string hint = "(NaN and Infinity are not JSON numbers";
  for (const char* text : {"[1, NaN]", "{\"a\": Infinity}", "[-Infinity]"}) {
    EXPECT_NE(WhyNotJson(text).find(hint), std::string::npos) << text;
  }
  // NaN in a string, the error elsewhere: no hint.
  EXPECT_EQ(WhyNotJson("{\"NaN\": x}").find(hint), std::string::npos);
}

TEST(WhyNotJsonTest, QuotesNoneOfTheTextItself) {
  // nlohmann quotes the token it read last: here a megabyte of the caller's
  // string, with a newline and a byte that is not UTF-8 in it.
  const std::string text = "{\"a\": \"" + std::string(1 << 20, 'z') + "\n\xff";
  const std::string why = WhyNotJson(text);
  EXPECT_LE(why.size(), 240u);
  EXPECT_EQ(why.find("zzz"), std::string::npos) << why;
  for (char c : why) EXPECT_TRUE(c >= 0x20 && c < 0x7f) << why;
  // The newline in the string is where the parser stopped.
  EXPECT_EQ(why.rfind("parse error at line 2, column 0: ", 0), 0u) << why;
  // A number's own digits are the one quote kept, bounded.
  EXPECT_LE(WhyNotJson("[1" + std::string(10000, '0') + "]").size(), 240u);
}

}  // namespace
}  // namespace moe::common
