#include "common/safetensors.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "common/json_number.h"
#include "testing/golden.h"

namespace moe::common {
namespace {

HostTensor Floats(std::vector<int64_t> shape, std::vector<float> values) {
  HostTensor t;
  t.dtype = DType::kFloat32;
  t.shape = std::move(shape);
  t.data.assign(reinterpret_cast<const char*>(values.data()),
                values.size() * sizeof(float));
  return t;
}

std::string WriteBytes(const std::string& name, const std::string& bytes) {
  const std::string path = testing::TempDir() + "/" + name;
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

// A file with the given header JSON and `data_size` zero bytes of data.
std::string FileWithHeader(const std::string& name, const std::string& json,
                           size_t data_size) {
  std::string bytes;
  const uint64_t len = json.size();
  for (int i = 0; i < 8; ++i)
    bytes.push_back(static_cast<char>(len >> (8 * i)));
  bytes += json;
  bytes.append(data_size, '\0');
  return WriteBytes(name, bytes);
}

absl::Status OpenStatus(const std::string& path) {
  return SafetensorsReader::Open(path).status();
}

TEST(SafetensorsTest, RoundTripsTensorsAndMetadata) {
  SafetensorsWriter writer;
  writer.SetMetadata("config_json", "{\"dim\": 2}");
  ASSERT_TRUE(writer.Add("b", Floats({2, 2}, {1, 2, 3, 4})).ok());
  HostTensor idx;
  idx.dtype = DType::kInt64;
  idx.shape = {};
  idx.data.assign(8, '\0');
  idx.data[0] = 7;
  ASSERT_TRUE(writer.Add("a.scalar", idx).ok());
  HostTensor empty;
  empty.dtype = DType::kBFloat16;
  empty.shape = {0, 3};
  ASSERT_TRUE(writer.Add("c.empty", empty).ok());
  const std::string path = testing::TempDir() + "/roundtrip.safetensors";
  ASSERT_TRUE(writer.WriteFile(path).ok());

  auto reader = SafetensorsReader::Open(path);
  ASSERT_TRUE(reader.ok()) << reader.status();
  EXPECT_EQ((*reader)->metadata().at("config_json"), "{\"dim\": 2}");
  ASSERT_EQ((*reader)->tensors().size(), 3u);
  EXPECT_EQ((*reader)->tensors()[0].name, "a.scalar");
  auto b = (*reader)->Read("b");
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(b->shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(b->data, Floats({2, 2}, {1, 2, 3, 4}).data);
  auto a = (*reader)->Read("a.scalar");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->dtype, DType::kInt64);
  EXPECT_TRUE(a->shape.empty());
  EXPECT_EQ(a->data[0], 7);
  auto c = (*reader)->Read("c.empty");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->dtype, DType::kBFloat16);
  EXPECT_TRUE(c->data.empty());
  EXPECT_EQ((*reader)->Read("nope").status().code(),
            absl::StatusCode::kNotFound);
}

TEST(SafetensorsTest, ReadsEveryGoldenFile) {
  for (const std::string& name : testing::GoldenCases()) {
    auto reader = SafetensorsReader::Open(testing::GoldenPath(name));
    ASSERT_TRUE(reader.ok()) << reader.status();
    EXPECT_TRUE((*reader)->metadata().count("config_json")) << name;
    EXPECT_NE((*reader)->Find("input.x"), nullptr) << name;
  }
}

TEST(SafetensorsTest, WriterRejectsMismatchedSizesAndDuplicates) {
  SafetensorsWriter writer;
  EXPECT_FALSE(writer.Add("x", Floats({3}, {1, 2})).ok());
  EXPECT_TRUE(writer.Add("x", Floats({2}, {1, 2})).ok());
  EXPECT_FALSE(writer.Add("x", Floats({2}, {1, 2})).ok());
  EXPECT_FALSE(writer.Add("", Floats({2}, {1, 2})).ok());
}

TEST(SafetensorsTest, MissingFileIsNotFound) {
  absl::Status s = OpenStatus("/nonexistent/dir/x.safetensors");
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(s.message().find("/nonexistent/dir/x.safetensors"),
            std::string::npos);
}

TEST(SafetensorsTest, FileShorterThanLengthPrefix) {
  absl::Status s = OpenStatus(WriteBytes("short.safetensors", "abc"));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("short.safetensors"), std::string::npos);
}

TEST(SafetensorsTest, HeaderLongerThanFile) {
  std::string bytes(8, '\0');
  bytes[0] = static_cast<char>(200);
  bytes += "{}";
  absl::Status s = OpenStatus(WriteBytes("long_header.safetensors", bytes));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("longer than the rest of the file"),
            std::string::npos)
      << s;
}

TEST(SafetensorsTest, HugeHeaderLengthIsRejectedWithoutAllocating) {
  std::string bytes(8, '\xff');
  absl::Status s = OpenStatus(WriteBytes("huge.safetensors", bytes + "{}"));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("exceeds the limit"), std::string::npos) << s;
}

TEST(SafetensorsTest, TruncatedDataSection) {
  // Declares 16 bytes of data; the file holds 8.
  absl::Status s = OpenStatus(FileWithHeader(
      "truncated.safetensors",
      R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("tensor \"w\""), std::string::npos) << s;
  EXPECT_NE(s.message().find("past the data section"), std::string::npos) << s;
}

TEST(SafetensorsTest, OverlappingTensors) {
  absl::Status s = OpenStatus(FileWithHeader(
      "overlap.safetensors",
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
      12));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("overlaps"), std::string::npos) << s;
  EXPECT_NE(s.message().find("\"b\""), std::string::npos) << s;
}

TEST(SafetensorsTest, UnknownDType) {
  absl::Status s = OpenStatus(FileWithHeader(
      "dtype.safetensors",
      R"({"w":{"dtype":"F8_E9","shape":[1],"data_offsets":[0,1]}})", 1));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("tensor \"w\": unknown dtype \"F8_E9\""),
            std::string::npos)
      << s;
}

TEST(SafetensorsTest, ShapeSizeMismatch) {
  absl::Status s = OpenStatus(FileWithHeader(
      "shape.safetensors",
      R"({"w":{"dtype":"F32","shape":[3,2],"data_offsets":[0,16]}})", 16));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("needs 24 bytes but data_offsets span 16"),
            std::string::npos)
      << s;
}

TEST(SafetensorsTest, MalformedHeaders) {
  const char* cases[] = {
      "not json",
      "[1, 2]",
      R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}})",
      R"({"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})",
      R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}})",
      R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0]}})",
      R"({"w":{"shape":[1],"data_offsets":[0,4]}})",
      R"({"w":5})",
      R"({"__metadata__":{"k":1}})",
      R"({"w":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,4]}})",
  };
  int i = 0;
  for (const char* json : cases) {
    auto header = ParseSafetensorsHeader(json, 64, "case.safetensors");
    EXPECT_EQ(header.status().code(), absl::StatusCode::kInvalidArgument)
        << "case " << i << ": " << json;
    EXPECT_NE(header.status().message().find("case.safetensors"),
              std::string::npos);
    ++i;
  }
}

// The one header parser (common/safetensors_header.h), strict JSON: what
// nlohmann-json accepted before it, and nothing a JSON parser must refuse.
TEST(SafetensorsHeaderTest, DecodesEveryJsonEscapeAndSkipsUnknownKeys) {
  const std::string json =
      R"({"__metadata__":{"config_json":"{\"dim\": 4, \"a\\b\": \"\u00e9\ud83d\ude00\t/\/\"}"},)"
      R"( "w" : {"dtype":"F32", "shape":[2], "data_offsets":[0, 8],)"
      R"( "extra": [true, false, null, -1.5e-3, {"x": [[]]}, "\n"]}})";
  SafetensorsHeader header;
  std::string error;
  ASSERT_TRUE(ParseSafetensorsHeaderJson(json, 8, &header, &error)) << error;
  EXPECT_EQ(header.metadata.at("config_json"),
            "{\"dim\": 4, \"a\\b\": \"\xc3\xa9\xf0\x9f\x98\x80\t//\"}");
  ASSERT_EQ(header.tensors.size(), 1u);
  EXPECT_EQ(header.tensors[0].name, "w");
  EXPECT_EQ(header.tensors[0].shape, (std::vector<int64_t>{2}));
  EXPECT_EQ(header.tensors[0].end, 8u);
}

TEST(SafetensorsHeaderTest, RefusesWhatStrictJsonRefuses) {
  const std::string w =
      R"("w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]})";
  const std::vector<std::string> cases = {
      "{" + w + "," + w + "}",  // duplicate key
      "{" + w + "} x",          // text after the object
      "{" + w + ",}",           // trailing comma
      R"({"w":{"dtype":"F32","shape":[01],"data_offsets":[0,4]}})",
      "{\"a\x01\":1}",     // control character in a string
      "{\"\xff\":1}",      // not UTF-8
      "{\"\xc0\xaf\":1}",  // overlong UTF-8
      R"({"\ud800":1})",   // lone surrogate
      R"({"\x":1})",       // unknown escape
      R"({"a":tru})",
      R"({"a":"unterminated})",
      std::string(100, '[') + std::string(100, ']'),  // nested too deeply
      R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,18446744073709551616]}})",
      R"({"":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
  };
  for (const std::string& json : cases) {
    SafetensorsHeader header;
    std::string error;
    EXPECT_FALSE(ParseSafetensorsHeaderJson(json, 64, &header, &error)) << json;
    EXPECT_EQ(error.rfind("malformed safetensors file: ", 0), 0u) << error;
  }
}

TEST(JsonNumberTest, ScansJsonsGrammarAndSaysWhereItStops) {
  struct Case {
    std::string text;
    bool ok;
    size_t end;  // past the number, or where a digit was wanted
    bool integer;
  };
  const std::vector<Case> cases = {
      {"0", true, 1, true},          {"-0", true, 2, true},
      {"12,", true, 2, true},        {"-7]", true, 2, true},
      {"0.5", true, 3, false},       {"1e5", true, 3, false},
      {"1E+05 ", true, 5, false},    {"-2.50e-3}", true, 8, false},
      {"01", true, 1, true},  // a number, "0"; what follows is the caller's
      {"0x1", true, 1, true},        {"1.5.", true, 3, false},
      {"-", false, 1, false},        {"-a", false, 1, false},
      {"+1", false, 0, false},       {".5", false, 0, false},
      {"1.", false, 2, false},       {"1.e3", false, 2, false},
      {"1e", false, 2, false},       {"1e+", false, 3, false},
      {"2E-x", false, 3, false},     {"", false, 0, false},
      {"Infinity", false, 0, false}, {"NaN", false, 0, false},
  };
  for (const Case& c : cases) {
    const JsonNumberScan scan = ScanJsonNumber(c.text, 0);
    EXPECT_EQ(scan.ok, c.ok) << c.text;
    EXPECT_EQ(scan.end, c.end) << c.text;
    if (c.ok) EXPECT_EQ(scan.integer, c.integer) << c.text;
  }
  // From the middle of a text, never reading past its end.
  const std::string text = "[1,-25.0e1]";
  const JsonNumberScan scan = ScanJsonNumber(text, 3);
  EXPECT_TRUE(scan.ok);
  EXPECT_EQ(scan.end, 10u);
  EXPECT_FALSE(scan.integer);
  EXPECT_FALSE(ScanJsonNumber(std::string_view("1e+5", 3), 0).ok);
}

TEST(SafetensorsHeaderTest, NamesTheByteWhereANumberLacksADigit) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"__metadata__":{"a":-})", "expected a digit at byte 22"},
      {R"({"__metadata__":{"a":1.})", "expected a digit at byte 23"},
      {R"({"__metadata__":{"a":1e+})", "expected a digit at byte 24"},
  };
  for (const auto& [json, want] : cases) {
    SafetensorsHeader header;
    std::string error;
    EXPECT_FALSE(ParseSafetensorsHeaderJson(json, 64, &header, &error)) << json;
    EXPECT_NE(error.find(want), std::string::npos) << error;
  }
}

TEST(SafetensorsHeaderTest, FindsOverlapsBeyondTheNextTensor) {
  // a spans b and c; c overlaps a but not b, its neighbour by offset.
  const std::string json =
      R"({"a":{"dtype":"U8","shape":[100],"data_offsets":[0,100]},)"
      R"("b":{"dtype":"U8","shape":[10],"data_offsets":[10,20]},)"
      R"("c":{"dtype":"U8","shape":[10],"data_offsets":[50,60]}})";
  SafetensorsHeader header;
  std::string error;
  EXPECT_FALSE(ParseSafetensorsHeaderJson(json, 100, &header, &error));
  EXPECT_NE(error.find("overlaps tensor \"a\""), std::string::npos) << error;
}

}  // namespace
}  // namespace moe::common
