#include "proto/grpc_logging.h"

#include <gtest/gtest.h>

namespace moe::proto {
namespace {

TEST(GrpcLoggingTest, NamesGrpcItsFileAndLine) {
  EXPECT_EQ(GrpcLogMessage("src/core/ext/transport/chttp2/transport/"
                           "chttp2_transport.cc",
                           1234, "Connection reset"),
            "grpc chttp2_transport.cc:1234: Connection reset");
  EXPECT_EQ(GrpcLogMessage("config.cc", 7, ""), "grpc config.cc:7: ");
  EXPECT_EQ(GrpcLogMessage(nullptr, 0, nullptr), "grpc ?:0: ");
}

}  // namespace
}  // namespace moe::proto
