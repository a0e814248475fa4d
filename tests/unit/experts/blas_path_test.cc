// Which path a float32 expert block takes on a single-threaded worker whose
// OpenBLAS runs its AVX-512 kernels: past kSkinnyMaxRows rows its GEMMs
// (they beat the skinny kernel there), up to it the kernel. Its ctest
// environment sets OPENBLAS_CORETYPE=SkylakeX and OPENBLAS_NUM_THREADS=1
// (tests/unit/CMakeLists.txt), the state a worker of moe-up restarts into.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "common/blas_kernels.h"
#include "common/torch/demo_model.h"
#include "experts/geglu.h"
#include "experts/skinny_linear.h"

namespace moe::experts {
namespace {

TEST(BlasPathTest, PastTheKernelsRowsBlocksGoToOpenBlasAvx512Gemms) {
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx512f") ||
      !__builtin_cpu_supports("avx512bw") ||
      !__builtin_cpu_supports("avx512dq") ||
      !__builtin_cpu_supports("avx512vl")) {
    GTEST_SKIP() << "no AVX-512: OpenBLAS has no AVX-512 kernels to run here";
  }
  ASSERT_TRUE(common::OpenBlasRunsAvx512Kernels())
      << "OpenBLAS core: " << common::OpenBlasCoreName();
  ASSERT_EQ(BlasThreads(), 1);
  ASSERT_TRUE(SkinnyLinearAvailable());
  const common::LayerConfig config = common::DefaultDemoConfig();
  auto model = common::BuildDemoLayer(config, 0);
  const common::ExpertWeights& w = model->experts.at(0);
  ASSERT_TRUE(model.ok()) << model.status();
  auto run = [&](int64_t rows, GegluPath path) {
    at::manual_seed(rows);
    const at::Tensor x = at::randn({rows, config.dim});
    at::Tensor out = at::empty({rows, config.dim});
    at::Tensor hidden;
    GegluForwardInto(w, x, hidden, out, path);
    return out;
  };
  for (const int64_t rows : {kSkinnyMaxRows + 1, int64_t{128}}) {
    SCOPED_TRACE(rows);
    const at::Tensor gemm = run(rows, GegluPath::kGemm);
    ASSERT_FALSE(at::equal(gemm, run(rows, GegluPath::kSkinny)))
        << "the two paths agree bit for bit: the test cannot tell them apart";
    EXPECT_TRUE(at::equal(run(rows, GegluPath::kAuto), gemm));
  }
  // Up to kSkinnyMaxRows rows the kernel still runs.
  EXPECT_TRUE(at::equal(run(kSkinnyMaxRows, GegluPath::kAuto),
                        run(kSkinnyMaxRows, GegluPath::kSkinny)));
}

}  // namespace
}  // namespace moe::experts
