#include "proto/expert_wire.h"

#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "moe/v1/expert.pb.h"

namespace moe::proto {
namespace {

std::string Flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(buffer.Dump(&slices).ok());
  std::string out;
  for (const grpc::Slice& s : slices) {
    out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return out;
}

// `bytes` cut into slices of `piece` bytes (the last may be shorter).
grpc::ByteBuffer Sliced(const std::string& bytes, size_t piece) {
  std::vector<grpc::Slice> slices;
  for (size_t i = 0; i < bytes.size(); i += piece) {
    slices.emplace_back(bytes.substr(i, piece));
  }
  return grpc::ByteBuffer(slices.data(), slices.size());
}

std::shared_ptr<std::vector<float>> Iota(int64_t n, float start) {
  auto v = std::make_shared<std::vector<float>>(n);
  for (int64_t i = 0; i < n; ++i) (*v)[i] = start + i;
  return v;
}

TEST(ExpertWireTest, WrittenRequestParsesAsTheGeneratedMessage) {
  auto a = Iota(3 * 4, 0), b = Iota(5 * 4, 100);
  RunExpertsRequestWriter writer(common::DType::kFloat32, 4);
  writer.AddFloatRows(a->data() + 4, 2, a);  // rows 1-2 of a
  writer.AddFloatRows(b->data(), 5, b);
  writer.AddSegment({0, 7}, 2);
  writer.AddSegment({3, 300}, 5);  // a two-byte varint, layer 3
  EXPECT_EQ(writer.rows(), 7);
  const grpc::ByteBuffer buffer = writer.Finish(common::DType::kBFloat16);

  moe::v1::RunExpertsRequest request;
  ASSERT_TRUE(request.ParseFromString(Flatten(buffer)));
  EXPECT_EQ(request.tokens().dtype(), moe::v1::FLOAT32);
  ASSERT_EQ(request.tokens().shape_size(), 2);
  EXPECT_EQ(request.tokens().shape(0), 7);
  EXPECT_EQ(request.tokens().shape(1), 4);
  std::vector<float> expected(a->begin() + 4, a->end());
  expected.insert(expected.end(), b->begin(), b->end());
  ASSERT_EQ(request.tokens().data().size(), expected.size() * 4);
  EXPECT_EQ(std::memcmp(request.tokens().data().data(), expected.data(),
                        expected.size() * 4),
            0);
  ASSERT_EQ(request.segments_size(), 2);
  EXPECT_EQ(request.segments(0).expert_id(), 7);
  EXPECT_EQ(request.segments(0).layer(), 0);
  EXPECT_EQ(request.segments(1).expert_id(), 300);
  EXPECT_EQ(request.segments(1).count(), 5);
  EXPECT_EQ(request.segments(1).layer(), 3);
  EXPECT_EQ(request.output_dtype(), moe::v1::BFLOAT16);
}

TEST(ExpertWireTest, RequestViewReadsGeneratedRequestsAcrossAnySlicing) {
  moe::v1::RunExpertsRequest request;
  request.mutable_tokens()->set_dtype(moe::v1::FLOAT32);
  request.mutable_tokens()->add_shape(3);
  request.mutable_tokens()->add_shape(2);
  auto rows = Iota(6, 1);
  request.mutable_tokens()->set_data(rows->data(), 24);
  auto* s0 = request.add_segments();
  s0->set_expert_id(5);
  s0->set_count(1);
  auto* s1 = request.add_segments();
  s1->set_expert_id(2);
  s1->set_count(2);
  s1->set_layer(1);
  const std::string bytes = request.SerializeAsString();
  for (size_t piece : {1, 2, 3, 7, 64, 1 << 20}) {
    SCOPED_TRACE("slices of " + std::to_string(piece));
    auto view = RunExpertsRequestView::Parse(Sliced(bytes, piece), 2, 10, 2);
    ASSERT_TRUE(view.ok()) << view.status();
    EXPECT_EQ(view->rows(), 3);
    EXPECT_EQ(view->output_dtype(), common::DType::kFloat32);  // the tokens'
    ASSERT_EQ(view->segments().size(), 2u);
    EXPECT_EQ(view->segments()[1].key, (common::ExpertKey{1, 2}));
    EXPECT_EQ(view->segments()[1].offset, 1);
    std::string scratch;
    const void* data = view->TokenData(&scratch);
    EXPECT_EQ(std::memcmp(data, rows->data(), 24), 0);
  }
}

TEST(ExpertWireTest, BadRequestsAreNamedAndNeverOverflow) {
  moe::v1::RunExpertsRequest good;
  good.mutable_tokens()->set_dtype(moe::v1::FLOAT32);
  good.mutable_tokens()->add_shape(10);
  good.mutable_tokens()->add_shape(16);
  good.mutable_tokens()->set_data(std::string(10 * 16 * 4, '\0'));
  auto* s = good.add_segments();
  s->set_expert_id(0);
  s->set_count(10);
  auto parse = [](const moe::v1::RunExpertsRequest& r, int64_t max_rows = 100) {
    return RunExpertsRequestView::Parse(Sliced(r.SerializeAsString(), 5), 16,
                                        max_rows, 2)
        .status();
  };
  EXPECT_TRUE(parse(good).ok());
  struct Case {
    const char* what;
    std::function<void(moe::v1::RunExpertsRequest&)> edit;
    const char* message;
  };
  const int64_t huge = int64_t{1} << 62;
  const Case cases[] = {
      {"short count", [](auto& r) { r.mutable_segments(0)->set_count(9); },
       "segments: counts add up to 9 but 10"},
      {"negative", [](auto& r) { r.mutable_segments(0)->set_count(-1); },
       "segments[0]: count -1 is negative"},
      // (0, 2^62), (1, 2^62), (0, 2^62), (1, 2^62 + 10) on 10 rows: the sum
      // must not wrap around to a pass.
      {"overflowing counts",
       [](auto& r) {
         r.clear_segments();
         for (int64_t c : {huge, huge, huge, huge + 10}) {
           auto* seg = r.add_segments();
           seg->set_count(c);
         }
       },
       "segments[0]: count 4611686018427387904 runs past"},
      {"layer", [](auto& r) { r.mutable_segments(0)->set_layer(2); },
       "segments[0]: layer 2 is outside the model's 2 layers"},
      {"dim",
       [](auto& r) {
         r.mutable_tokens()->set_shape(1, 15);
         r.mutable_tokens()->mutable_data()->resize(10 * 15 * 4);
       },
       "tokens: shape [10, 15] is not [T, 16]"},
      {"output dtype", [](auto& r) { r.set_output_dtype(moe::v1::INT64); },
       "output_dtype: must be FLOAT32"},
      {"int64 tokens",
       [](auto& r) { r.mutable_tokens()->set_dtype(moe::v1::INT64); },
       "tokens: dtype INT64 (4) is not one of FLOAT32"},
      {"no tokens", [](auto& r) { r.clear_tokens(); }, "tokens: missing"},
      {"short data",
       [](auto& r) { r.mutable_tokens()->mutable_data()->resize(8); },
       "tokens: data is 8 bytes"},
  };
  for (const Case& c : cases) {
    moe::v1::RunExpertsRequest r = good;
    c.edit(r);
    absl::Status st = parse(r);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << c.what;
    EXPECT_NE(st.message().find(c.message), std::string::npos)
        << c.what << ": " << st;
  }
  EXPECT_EQ(parse(good, 9).code(), absl::StatusCode::kResourceExhausted);
  // A packed shape whose length runs past the message:
  // tokens { shape: length 0x7f...ff }.
  const std::string bad("\x0a\x0a\x12\xff\xff\xff\xff\xff\xff\xff\xff\x7f", 12);
  auto view = RunExpertsRequestView::Parse(Sliced(bad, 3), 16, 100, 1);
  EXPECT_EQ(view.status().code(), absl::StatusCode::kInvalidArgument);
  // Not protobuf at all.
  view = RunExpertsRequestView::Parse(Sliced("\xff\xff\xff", 2), 16, 100, 1);
  EXPECT_EQ(view.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ExpertWireTest, ResponseWriterParsesAsTheGeneratedMessage) {
  RunExpertsResponseWriter writer(common::DType::kFloat32, 3, 2);
  auto values = Iota(6, 0.5f);
  std::memcpy(writer.data(), values->data(), 24);
  moe::v1::RunExpertsResponse response;
  ASSERT_TRUE(response.ParseFromString(Flatten(writer.Finish())));
  EXPECT_EQ(response.outputs().shape(0), 3);
  EXPECT_EQ(std::memcmp(response.outputs().data().data(), values->data(), 24),
            0);
}

TEST(ExpertWireTest, ResponseViewReadsRowsAcrossAnySlicing) {
  auto t = Iota(9 * 5, -3);
  moe::v1::RunExpertsResponse response;
  moe::v1::Tensor* outputs = response.mutable_outputs();
  outputs->set_dtype(moe::v1::FLOAT32);
  outputs->add_shape(9);
  outputs->add_shape(5);
  outputs->set_data(t->data(), t->size() * 4);
  const std::string bytes = response.SerializeAsString();
  for (size_t piece : {1, 2, 3, 7, 64, 1 << 20}) {
    SCOPED_TRACE("slices of " + std::to_string(piece));
    auto view = RunExpertsResponseView::Parse(Sliced(bytes, piece), 9, 5);
    ASSERT_TRUE(view.ok()) << view.status();
    std::vector<float> scratch;
    const float* rows = view->FloatRows(4, 3, &scratch);  // rows 4-6
    EXPECT_EQ(std::memcmp(rows, t->data() + 20, 60), 0);
    // In place only when the rows lie in one slice.
    if (piece >= bytes.size()) EXPECT_NE(rows, scratch.data());
    if (piece < 60) EXPECT_EQ(rows, scratch.data());
  }
  EXPECT_FALSE(RunExpertsResponseView::Parse(Sliced(bytes, 4), 8, 5).ok());
}

TEST(ExpertWireTest, HalfPrecisionRowsGoOutConvertedAndComeBackWidened) {
  auto a = Iota(2 * 4, 1);
  RunExpertsRequestWriter writer(common::DType::kBFloat16, 4);
  writer.AddFloatRows(a->data(), 2, a);
  writer.AddSegment({0, 0}, 2);
  auto view = RunExpertsRequestView::Parse(
      writer.Finish(common::DType::kFloat16), 4, 10, 1);
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_EQ(view->tokens_dtype(), common::DType::kBFloat16);
  EXPECT_EQ(view->output_dtype(), common::DType::kFloat16);
  RunExpertsResponseWriter out(common::DType::kBFloat16, 2, 4);
  std::string scratch;
  std::memcpy(out.data(), view->TokenData(&scratch), 16);  // echo
  auto back = RunExpertsResponseView::Parse(out.Finish(), 2, 4);
  ASSERT_TRUE(back.ok()) << back.status();
  std::vector<float> widened;
  const float* rows = back->FloatRows(0, 2, &widened);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(rows[i], (*a)[i]);  // small ints: exact
}

TEST(ExpertWireTest, UnknownFieldsAndUnpackedShapesAreAccepted) {
  // Tensor{dtype: BFLOAT16, shape: 1, 2 (unpacked), data: 4 bytes, and an
  // unknown field 9}, inside field 1 after an unknown top-level field 2.
  const std::string inner(
      "\x08\x02\x10\x01\x10\x02\x48\x05\x1a\x04\x01\x02\x03\x04", 14);
  std::string bytes("\x10\x2a\x0a", 3);
  bytes += static_cast<char>(inner.size());
  bytes += inner;
  moe::v1::RunExpertsResponse parsed;  // the generated parser agrees
  ASSERT_TRUE(parsed.ParseFromString(bytes));
  ASSERT_EQ(parsed.outputs().shape_size(), 2);
  auto view = RunExpertsResponseView::Parse(Sliced(bytes, 3), 1, 2);
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_EQ(view->dtype(), common::DType::kBFloat16);
}

TEST(ExpertWireTest, MalformedResponsesAreErrorsNamingTheField) {
  moe::v1::RunExpertsResponse response;
  response.mutable_outputs()->set_dtype(moe::v1::FLOAT32);
  response.mutable_outputs()->add_shape(2);
  response.mutable_outputs()->add_shape(3);
  response.mutable_outputs()->set_data(std::string(24, '\0'));
  const std::string good = response.SerializeAsString();

  auto fails = [](const std::string& bytes, const std::string& what) {
    auto view = RunExpertsResponseView::Parse(Sliced(bytes, 5), 2, 3);
    EXPECT_FALSE(view.ok()) << what;
    if (!view.ok()) {
      EXPECT_NE(view.status().message().find("outputs"), std::string::npos)
          << view.status();
    }
  };
  for (size_t cut = 1; cut < good.size(); ++cut) {
    fails(good.substr(0, cut), "truncated at " + std::to_string(cut));
  }
  fails("", "empty");
  moe::v1::RunExpertsResponse wrong = response;
  wrong.mutable_outputs()->set_data(std::string(20, '\0'));
  fails(wrong.SerializeAsString(), "data shorter than the shape");
  wrong = response;
  wrong.mutable_outputs()->set_dtype(moe::v1::INT64);
  fails(wrong.SerializeAsString(), "int64");
  wrong = response;
  wrong.mutable_outputs()->set_dtype(moe::v1::DTYPE_UNSPECIFIED);
  fails(wrong.SerializeAsString(), "no dtype");
  fails(good + good, "the tensor twice");
  fails(std::string("\x0b", 1) + good, "a group wire type");
}

}  // namespace
}  // namespace moe::proto
