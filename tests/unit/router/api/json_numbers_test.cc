#include "router/api/json_numbers.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/float_bits.h"
#include "router/api/open_inference_json.h"
#include "testing/message_bytes.h"

namespace moe::router {
namespace {

std::string Written(float v) {
  std::string out;
  AppendFloat32Json(v, &out);
  return out;
}

// Both readings of a body, the numbers lifted or parsed as JSON values:
// the same request, or the same refusal. True where it was read.
bool ExpectSameReading(const std::string& body, const std::string& length) {
  const auto lifted = ModelInferFromJson(body, length, "m", "");
  const auto parsed =
      ModelInferFromJson(body, length, "m", "", DataNumbers::kJsonValues);
  EXPECT_EQ(lifted.status(), parsed.status()) << body;
  if (!lifted.ok() || !parsed.ok()) return false;
  EXPECT_EQ(moe::testing::MessageBytes(lifted->request),
            moe::testing::MessageBytes(parsed->request))
      << body;
  return true;
}

TEST(JsonNumbersTest, LiftsTheInputsDataAndLeavesTheRest) {
  const std::string body =
      R"({"id": "[1]", "inputs": [{"name": "u", "shape": [1, 2],)"
      R"( "data": [ -0 , -0.0 ]}, {"shape": [1, 2, 2], "data": [[1, 2.5e+1],)"
      R"( [[3E-1], 18446744073709551617]], "name": "x"}],)"
      R"( "parameters": {"data": [5]}, "data": [6]})";
  const LiftedInputData lifted = LiftInputData(body);
  EXPECT_EQ(lifted.json,
            R"({"id": "[1]", "inputs": [{"name": "u", "shape": [1, 2],)"
            R"( "data": []}, {"shape": [1, 2, 2], "data": [], "name": "x"}],)"
            R"( "parameters": {"data": [5]}, "data": [6]})");
  ASSERT_EQ(lifted.values.size(), 2u);
  ASSERT_TRUE(lifted.Lifted(0));
  ASSERT_TRUE(lifted.Lifted(1));
  EXPECT_FALSE(lifted.Lifted(2));
  // "-0" is an integer zero to the JSON parser (+0), "-0.0" a float.
  ASSERT_EQ(lifted.values[0]->size(), 2u);
  EXPECT_EQ(common::Float32Bits((*lifted.values[0])[0]),
            common::Float32Bits(0.0f));
  EXPECT_EQ(common::Float32Bits((*lifted.values[0])[1]),
            common::Float32Bits(-0.0f));
  EXPECT_EQ(*lifted.values[1],
            (std::vector<float>{1.0f, 25.0f, 0.3f, 18446744073709551617.0f}));
}

TEST(JsonNumbersTest, LeavesWhatTheParserMustRead) {
  const auto one = [](const std::string& data) {
    return LiftInputData(R"({"inputs": [{"name": "x", "data": )" + data +
                         "}]}");
  };
  std::string deep = "1";
  for (int i = 0; i < kMaxDataDepth; ++i) deep = "[" + deep + "]";
  // 16 arrays: the number sits at depth 16; one more is past the bound.
  EXPECT_TRUE(one(deep).Lifted(0));
  EXPECT_FALSE(one("[" + deep + "]").Lifted(0));
  for (const char* data :
       {R"([1, "2"])", "[1, true]", "[1, null]", "[1, {}]", "[1,]",
        "[,1]",        "[1 2]",     "[01]",      "[1.]",    "[.5]",
        "[+1]",        "[1e]",      "[-]",       "[NaN]",   "[1e39]",
        "[-3.5e38]",   "[1e400]",   "[0x10]",    "[1",      "5",
        R"("x")"}) {
    EXPECT_FALSE(one(data).Lifted(0)) << data;
  }
  // An escaped key may spell "data" or "inputs", a key given twice is the
  // parser's to choose: nothing is lifted from such a body.
  for (const char* body :
       {R"({"inputs": [{"data": [1]}], "input\u0073": []})",
        R"({"inputs": [{"d\u0061ta": [2], "data": [1]}]})",
        R"({"inputs": [{"data": [1], "data": [2]}]})",
        R"({"inputs": [{"data": [1]}], "inputs": [{"data": [2]}]})",
        R"({"inputs": [{"data": [1]})", R"({"inputs": [{"data": [1]}]])",
        R"({"inputs": [{"data": [1], "name": "x\"}]})"}) {
    const LiftedInputData lifted = LiftInputData(body);
    EXPECT_TRUE(lifted.json.empty()) << body;
    EXPECT_TRUE(lifted.values.empty()) << body;
  }
  // A byte-order mark before the body (the parser skips it).
  const std::string bom =
      "\xEF\xBB\xBF"
      R"({"inputs": [{"data": [1, 2]}]})";
  EXPECT_TRUE(LiftInputData(bom).Lifted(0));
  EXPECT_TRUE(
      ExpectSameReading("\xEF\xBB\xBF"
                        R"({"inputs": [{"name": "x", "shape": [2],)"
                        R"( "datatype": "FP32", "data": [1, 2]}]})",
                        ""));
  // A NUL byte in a literal ends nothing early (and loops nowhere).
  const char kNul[] = "{\"inputs\": [{\"data\": [1]}], \"x\": tr\0ue}";
  const std::string nul(kNul, sizeof(kNul) - 1);
  EXPECT_TRUE(LiftInputData(nul).Lifted(0));
  EXPECT_FALSE(ExpectSameReading(nul, ""));
  // Elements of "inputs" that are not objects keep their places.
  const LiftedInputData lifted =
      LiftInputData(R"({"inputs": [7, "s", [1], {"data": [3]}]})");
  EXPECT_FALSE(lifted.Lifted(2));
  ASSERT_TRUE(lifted.Lifted(3));
  EXPECT_EQ(*lifted.values[3], std::vector<float>{3.0f});
}

// A random number as a client might write it.
std::string RandomNumber(std::mt19937& rng) {
  std::uniform_int_distribution<int> form(0, 9);
  std::normal_distribution<double> normal(0, 100);
  char b[64];
  switch (form(rng)) {
    case 0:
      return std::to_string(static_cast<int64_t>(normal(rng) * 1e6));
    case 1:
      return "-0";
    case 2:
      return "1e" + std::to_string(static_cast<int>(normal(rng)));
    case 3:
      std::snprintf(b, sizeof(b), "%.3E", normal(rng));
      return b;
    case 4:
      return "18446744073709551616";
    case 5:
      return std::to_string(std::uniform_int_distribution<uint64_t>()(rng));
    case 6:
      std::snprintf(b, sizeof(b), "%.9g", static_cast<float>(normal(rng)));
      return b;
    default:
      std::snprintf(b, sizeof(b), "%.17g", normal(rng));
      return b;
  }
}

// A "data" array, nested at random; `*numbers` counts its numbers.
std::string RandomData(std::mt19937& rng, int depth, int* numbers) {
  std::uniform_int_distribution<int> pick(0, 9);
  std::vector<std::string> parts;
  const int n = pick(rng);
  for (int i = 0; i < n; ++i) {
    const int what = pick(rng);
    if (what == 0 && depth < 18) {
      parts.push_back(RandomData(rng, depth + 1, numbers));
    } else if (what == 1 && pick(rng) == 0) {
      parts.push_back(pick(rng) < 5 ? "\"1\"" : "true");
    } else {
      parts.push_back(RandomNumber(rng));
      ++*numbers;
    }
  }
  return "[" + absl::StrJoin(parts, pick(rng) < 8 ? ", " : " ,\n\t") + "]";
}

TEST(JsonNumbersTest, BothReadingsGiveTheSameRequest) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> pick(0, 99);
  int served = 0;
  for (int i = 0; i < 3000; ++i) {
    // Shapes that fit the data's numbers: most bodies are read through.
    int x = 0, u = 0;
    const std::string x_data = RandomData(rng, 0, &x);
    const std::string u_data = RandomData(rng, 0, &u);
    std::string body =
        absl::StrCat(R"({"inputs": [{"name": "x", "shape": [1, 1, )", x,
                     R"(], "datatype": "FP32", "data": )", x_data,
                     R"(}, {"name": "second_choice_uniforms", "shape": [1, )",
                     u, R"(], "datatype": "FP32", "data": )", u_data,
                     R"(}], "outputs": [{"name": "y"}]})");
    // Some bodies are cut, or have a byte changed or deleted.
    const int how = pick(rng);
    if (how < 10) {
      body.resize(std::uniform_int_distribution<size_t>(0, body.size())(rng));
    } else if (how < 30) {
      const size_t at =
          std::uniform_int_distribution<size_t>(0, body.size() - 1)(rng);
      if (how < 20) {
        body[at] = "[]{},:\"\\-0e. x"[pick(rng) % 15];
      } else {
        body.erase(at, 1);
      }
    }
    served += ExpectSameReading(body, "") ? 1 : 0;
    ASSERT_FALSE(::testing::Test::HasFailure()) << "body " << i;
  }
  // Both outcomes were compared often.
  EXPECT_GT(served, 1000);
  EXPECT_LT(served, 2900);
}

TEST(JsonNumbersTest, EveryFloat32ReadsBackAsItself) {
  // A sample of every float32 here (a stride prime to the bit fields);
  // MOE_EVERY_FLOAT32=1 checks all 2^32 (about ten minutes).
  const char* every = std::getenv("MOE_EVERY_FLOAT32");
  const uint64_t stride = every != nullptr && every[0] == '1' ? 1 : 4099;
  uint64_t checked = 0;
  const auto check = [&checked](uint32_t bits) {
    const float f = common::Float32FromBits(bits);
    if (!std::isfinite(f)) return;
    const std::string s = Written(f);
    // Read as a double then cast (Python's json, then numpy's float32).
    const double d = std::strtod(s.c_str(), nullptr);
    ASSERT_EQ(common::Float32Bits(static_cast<float>(d)), bits) << s;
    // Read as a float32.
    ASSERT_EQ(common::Float32Bits(std::strtof(s.c_str(), nullptr)), bits) << s;
    ++checked;
  };
  for (uint64_t b = 0; b <= 0xffffffffu; b += stride) {
    check(static_cast<uint32_t>(b));
    if (::testing::Test::HasFatalFailure()) return;
  }
  // The two whose shortest float32 digits a double reads wrong, and their
  // neighbours.
  for (uint32_t base : {0x15ae43fdu, 0x95ae43fdu}) {
    for (uint32_t b = base - 2; b <= base + 2; ++b) check(b);
  }
  EXPECT_GT(checked, 1000000u);
  EXPECT_EQ(Written(common::Float32FromBits(0x15ae43fdu)),
            "7.038530691851209e-26");
  EXPECT_EQ(Written(0.1f), "0.1");
  EXPECT_EQ(Written(-2.0f), "-2.0");
  EXPECT_EQ(Written(-0.0f), "-0.0");
  EXPECT_EQ(Written(1e20f), "1e+20");
  EXPECT_EQ(Written(16777216.0f), "16777216.0");
  EXPECT_EQ(Written(std::nanf("")), "null");
  EXPECT_EQ(Written(-INFINITY), "null");
}

}  // namespace
}  // namespace moe::router
