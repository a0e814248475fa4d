#include "proto/expert_wire.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstring>
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

TEST(ExpertWireTest, WrittenRequestParsesAsTheGeneratedMessage) {
  const at::Tensor a = at::arange(0, 3 * 4, at::kFloat).view({3, 4});
  const at::Tensor b = at::arange(100, 100 + 5 * 4, at::kFloat).view({5, 4});
  RunExpertsRequestWriter writer(moe::v1::FLOAT32, 4);
  writer.AddRows(a, a.data_ptr<float>() + 4, 2);  // rows 1-2 of a
  writer.AddRows(b, b.data_ptr<float>(), 5);
  writer.AddSegment(7, 2);
  writer.AddSegment(300, 5);  // a two-byte varint
  EXPECT_EQ(writer.rows(), 7);
  const grpc::ByteBuffer buffer = writer.Finish(moe::v1::BFLOAT16);

  moe::v1::RunExpertsRequest request;
  ASSERT_TRUE(request.ParseFromString(Flatten(buffer)));
  EXPECT_EQ(request.tokens().dtype(), moe::v1::FLOAT32);
  ASSERT_EQ(request.tokens().shape_size(), 2);
  EXPECT_EQ(request.tokens().shape(0), 7);
  EXPECT_EQ(request.tokens().shape(1), 4);
  const at::Tensor expected = at::cat({a.narrow(0, 1, 2), b}).contiguous();
  ASSERT_EQ(request.tokens().data().size(), expected.nbytes());
  EXPECT_EQ(std::memcmp(request.tokens().data().data(), expected.data_ptr(),
                        expected.nbytes()),
            0);
  ASSERT_EQ(request.segments_size(), 2);
  EXPECT_EQ(request.segments(0).expert_id(), 7);
  EXPECT_EQ(request.segments(0).count(), 2);
  EXPECT_EQ(request.segments(1).expert_id(), 300);
  EXPECT_EQ(request.segments(1).count(), 5);
  EXPECT_EQ(request.output_dtype(), moe::v1::BFLOAT16);
}

TEST(ExpertWireTest, ViewReadsGeneratedResponsesAcrossAnySlicing) {
  const at::Tensor t = at::randn({9, 5});
  moe::v1::RunExpertsResponse response;
  moe::v1::Tensor* outputs = response.mutable_outputs();
  outputs->set_dtype(moe::v1::FLOAT32);
  outputs->add_shape(9);
  outputs->add_shape(5);
  outputs->set_data(t.data_ptr(), t.nbytes());
  const std::string bytes = response.SerializeAsString();
  for (size_t piece : {1, 2, 3, 7, 64, 1 << 20}) {
    SCOPED_TRACE("slices of " + std::to_string(piece));
    auto view = WireTensorView::Parse(Sliced(bytes, piece), "outputs");
    ASSERT_TRUE(view.ok()) << view.status();
    EXPECT_EQ(view->dtype(), moe::v1::FLOAT32);
    EXPECT_EQ(view->shape(), (std::vector<int64_t>{9, 5}));
    at::Tensor rows = at::empty({3, 5});
    view->CopyData(4 * 5 * 4, 3 * 5 * 4, rows.data_ptr());  // rows 4-6
    EXPECT_TRUE(at::equal(rows, t.narrow(0, 4, 3)));
    // In place only when the rows lie in one slice.
    const void* direct = view->Contiguous(4 * 5 * 4, 3 * 5 * 4);
    if (piece >= bytes.size()) {
      ASSERT_NE(direct, nullptr);
      EXPECT_EQ(std::memcmp(direct, t.narrow(0, 4, 3).data_ptr(), 60), 0);
    } else if (piece < 60) {
      EXPECT_EQ(direct, nullptr);
    }
  }
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
  auto view = WireTensorView::Parse(Sliced(bytes, 3), "outputs");
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_EQ(view->dtype(), moe::v1::BFLOAT16);
  EXPECT_EQ(view->element_size(), 2);
  EXPECT_EQ(view->shape(), (std::vector<int64_t>{1, 2}));
  std::string data(4, '\0');
  view->CopyData(0, 4, data.data());
  EXPECT_EQ(data, parsed.outputs().data());
}

TEST(ExpertWireTest, MalformedResponsesAreErrorsNamingTheField) {
  moe::v1::RunExpertsResponse response;
  response.mutable_outputs()->set_dtype(moe::v1::FLOAT32);
  response.mutable_outputs()->add_shape(2);
  response.mutable_outputs()->add_shape(3);
  response.mutable_outputs()->set_data(std::string(24, '\0'));
  const std::string good = response.SerializeAsString();

  auto fails = [](const std::string& bytes, const std::string& what) {
    auto view = WireTensorView::Parse(Sliced(bytes, 5), "outputs");
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
