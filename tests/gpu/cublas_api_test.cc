// cuBLAS is opened at run time (experts/cuda/cublas_api.h); opening it and
// naming a status need no device, so this runs wherever the backend is
// built, GPU or not.
#include "experts/cuda/cublas_api.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <string>

namespace moe::experts::gpu {
namespace {

bool Mapped(const std::string& library) {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    if (line.find(library) != std::string::npos) return true;
  }
  return false;
}

TEST(CublasApiTest, OpensCublasOnlyWhenAskedAndFillsEveryEntry) {
  // Linking the backend does not map cuBLAS: a CPU worker never pays for it.
  EXPECT_FALSE(Mapped("libcublas"));
  const CublasApi* api = nullptr;
  const Status status = LoadCublas(&api);
  ASSERT_TRUE(status.ok()) << status.message();
  ASSERT_NE(api, nullptr);
  EXPECT_TRUE(Mapped("libcublas"));
  for (const void* f :
       {reinterpret_cast<const void*>(api->create),
        reinterpret_cast<const void*>(api->destroy),
        reinterpret_cast<const void*>(api->set_stream),
        reinterpret_cast<const void*>(api->set_workspace),
        reinterpret_cast<const void*>(api->set_math_mode),
        reinterpret_cast<const void*>(api->gemm_ex),
        reinterpret_cast<const void*>(api->gemm_grouped_batched_ex),
        reinterpret_cast<const void*>(api->status_name),
        reinterpret_cast<const void*>(api->status_string)}) {
    EXPECT_NE(f, nullptr);
  }
  EXPECT_STREQ(api->status_name(CUBLAS_STATUS_NOT_INITIALIZED),
               "CUBLAS_STATUS_NOT_INITIALIZED");
  // Loaded once: the same table again.
  const CublasApi* again = nullptr;
  ASSERT_TRUE(LoadCublas(&again).ok());
  EXPECT_EQ(again, api);
}

}  // namespace
}  // namespace moe::experts::gpu
