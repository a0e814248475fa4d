// Golden parity through the moe-run binary (a separate process), for one
// file of each kind plus the train and replay cases; the command line of
// every binary (--help, --version, errors).
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "testing/golden.h"

namespace moe {
namespace {

class CliGoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(CliGoldenTest, ForwardFileMatchesReference) {
  const std::string name = GetParam();
  const std::string path = testing::GoldenPath(name);
  const std::string out = testing::TempDir() + "/" + name + ".out.safetensors";
  auto golden = testing::ReadAllTensors(path);
  std::vector<std::string> argv = {testing::BinaryPath("moe-run"),
                                   "forward",
                                   "--checkpoint=" + path,
                                   "--input=" + path,
                                   "--input-tensor=input.x",
                                   "--mode=" + testing::GoldenMode(name),
                                   "--trace",
                                   "--output=" + out};
  if (golden.count("input.probs")) {
    argv.push_back("--draws-tensor=input.probs");
  }
  std::string log;
  ASSERT_EQ(testing::RunProcess(argv, &log), 0) << log;
  auto result = testing::ReadAllTensors(out);
  EXPECT_EQ(result.at("output.y").scalar_type(), at::kFloat);
  EXPECT_LE(testing::MaxAbsDiff(result.at("output.y"), golden.at("output.y")),
            1e-5);
  for (const char* loss :
       {"output.balance_loss", "output.router_z_loss",
        "output.weighted_balance_loss", "output.weighted_router_z_loss",
        "output.total_aux_loss"}) {
    ASSERT_TRUE(result.count(loss)) << loss;
    if (testing::GoldenMode(name) == "train") {
      EXPECT_NEAR(result.at(loss).item<double>(),
                  golden.at(loss).item<double>(), 1e-5)
          << loss;
    }
  }
  const std::string level =
      golden.count("expected.outer.positions") ? "outer." : "";
  for (const char* key :
       {"gate_indices", "positions", "dropped_mask", "expert_capacity"}) {
    EXPECT_TRUE(at::equal(result.at("trace." + level + key),
                          golden.at("expected." + level + key)))
        << key;
  }
}

INSTANTIATE_TEST_SUITE_P(OneOfEachKind, CliGoldenTest,
                         ::testing::Values("A_moe_eval_nodrop", "C_moe_train",
                                           "D_moe_eval_random_replay",
                                           "E_sparse_block_eval",
                                           "F_hier_eval"),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           return info.param;
                         });

TEST(CliTest, BadInputIsAClearErrorNotACrash) {
  const std::string path = testing::GoldenPath("A_moe_eval_nodrop");
  std::string log;
  // Tensor of the wrong rank (input.probs does not exist here; use a 0-d).
  EXPECT_EQ(testing::RunProcess({testing::BinaryPath("moe-run"), "forward",
                                 "--checkpoint=" + path, "--input=" + path,
                                 "--input_tensor=output.balance_loss",
                                 "--output=" + testing::TempDir() + "/x"},
                                &log),
            1);
  EXPECT_NE(log.find("x: must have rank 3"), std::string::npos) << log;
  EXPECT_EQ(testing::RunProcess(
                {testing::BinaryPath("moe-run"), "forward",
                 "--checkpoint=/nonexistent.safetensors", "--input=" + path,
                 "--output=" + testing::TempDir() + "/x"},
                &log),
            1);
  EXPECT_NE(log.find("/nonexistent.safetensors: cannot open"),
            std::string::npos)
      << log;
  EXPECT_EQ(testing::RunProcess(
                {testing::BinaryPath("moe-run"), "forward",
                 "--checkpoint=" + path, "--input=" + path, "--mode=sideways",
                 "--output=" + testing::TempDir() + "/x"},
                &log),
            1);
  EXPECT_NE(log.find("--mode: \"sideways\" is not eval or train"),
            std::string::npos)
      << log;
  EXPECT_EQ(
      testing::RunProcess({testing::BinaryPath("moe-client"), "launch"}, &log),
      2);
}

TEST(CliTest, DemoCheckpointRoundTripsThroughForward) {
  const std::string ckpt = testing::TempDir() + "/demo.safetensors";
  std::string log;
  ASSERT_EQ(
      testing::RunProcess({testing::BinaryPath("moe-run"), "demo-checkpoint",
                           "--output=" + ckpt, "--dim=32", "--num_experts=4",
                           "--seed=3", "--layers=3"},
                          &log),
      0)
      << log;
  ASSERT_EQ(testing::RunProcess({testing::BinaryPath("moe-run"), "forward",
                                 "--checkpoint=" + ckpt, "--random_input=2x16",
                                 "--seed=1", "--layer=layers.2.ff"},
                                &log),
            0)
      << log;
  EXPECT_NE(log.find("layer layers.2.ff"), std::string::npos) << log;
  EXPECT_NE(log.find("tokens 32"), std::string::npos) << log;
  EXPECT_NE(log.find("capacity 8 per expert per group"), std::string::npos)
      << log;
  // A layer that does not exist is named, with the ones that do.
  EXPECT_EQ(testing::RunProcess({testing::BinaryPath("moe-run"), "forward",
                                 "--checkpoint=" + ckpt, "--random_input=2x16",
                                 "--layer=layers.7.ff"},
                                &log),
            1);
  EXPECT_NE(log.find("layer \"layers.7.ff\" not found; the model has 3 "
                     "layers: \"layers.0.ff\""),
            std::string::npos)
      << log;
  // demo-checkpoint lives in moe-run now; moe-client says so.
  EXPECT_EQ(testing::RunProcess({testing::BinaryPath("moe-client"),
                                 "demo-checkpoint", "--output=" + ckpt},
                                &log),
            1);
  EXPECT_NE(log.find("moved to moe-run"), std::string::npos) << log;
}

// A two-level demo model: --kind=hierarchical_moe alone (4 inner experts),
// or --num_experts_inner alone, as --help says; a one-level kind with inner
// experts is refused naming both flags.
TEST(CliTest, DemoCheckpointMakesATwoLevelMoeEitherWay) {
  const std::string ckpt = testing::TempDir() + "/two_level.safetensors";
  for (const std::vector<std::string>& flags :
       std::vector<std::vector<std::string>>{
           {"--kind=hierarchical_moe"},
           {"--num_experts_inner=4"},
           {"--kind=hierarchical_moe", "--num_experts_inner=4"}}) {
    std::vector<std::string> argv = {testing::BinaryPath("moe-run"),
                                     "demo-checkpoint", "--output=" + ckpt,
                                     "--dim=16", "--num_experts=2"};
    argv.insert(argv.end(), flags.begin(), flags.end());
    std::string log;
    ASSERT_EQ(testing::RunProcess(argv, &log), 0) << flags[0] << log;
    EXPECT_NE(log.find("\"kind\":\"hierarchical_moe\""), std::string::npos)
        << log;
    EXPECT_NE(log.find("\"num_experts\":[2,4]"), std::string::npos) << log;
    ASSERT_EQ(
        testing::RunProcess({testing::BinaryPath("moe-run"), "forward",
                             "--checkpoint=" + ckpt, "--random_input=1x8"},
                            &log),
        0)
        << log;
  }
  std::string log;
  EXPECT_EQ(
      testing::RunProcess({testing::BinaryPath("moe-run"), "demo-checkpoint",
                           "--output=" + ckpt, "--kind=sparse_moe_block",
                           "--num_experts_inner=2"},
                          &log),
      1);
  EXPECT_NE(log.find("--num_experts_inner makes a two-level MoE; "
                     "--kind=sparse_moe_block has one level"),
            std::string::npos)
      << log;
}

// OpenBLAS 0.3.21 takes CPUs newer than itself for a Prescott (SSE3
// kernels); the binaries that load it restart with the kernels the CPU
// runs (common/blas_kernels.h), once past --help and --version (which
// compute nothing and print no such line). OPENBLAS_VERBOSE=2 makes
// OpenBLAS print the core it loads for, each time it loads.
TEST(CliTest, BinariesWithOpenBlasRunTheKernelsTheCpuSupports) {
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
    GTEST_SKIP() << "no AVX2: OpenBLAS has nothing better than SSE3 here";
  }
  const char* user_choice = std::getenv("OPENBLAS_CORETYPE");
  const std::string saved = user_choice != nullptr ? user_choice : "";
  ::unsetenv("OPENBLAS_CORETYPE");
  ::setenv("OPENBLAS_VERBOSE", "2", 1);
  // Each runs past its flags and stops at the missing checkpoint.
  const std::string missing = "--checkpoint=" + testing::TempDir() + "/none";
  const std::vector<std::vector<std::string>> runs = {
      {testing::BinaryPath("moe-router"), missing, "--workers=127.0.0.1:1"},
      {testing::BinaryPath("moe-expert"), missing},
      {testing::BinaryPath("moe-run"), "forward", missing,
       "--random_input=1x4"}};
  for (const std::vector<std::string>& argv : runs) {
    SCOPED_TRACE(argv[0]);
    std::string log;
    EXPECT_EQ(testing::RunProcess(argv, &log), 1) << log;
    EXPECT_NE(log.find("/none"), std::string::npos) << log;
    const size_t last = log.rfind("Core: ");
    ASSERT_NE(last, std::string::npos) << log;
    const std::string core =
        log.substr(last + 6, log.find('\n', last) - last - 6);
    EXPECT_NE(core, "Prescott") << log;
    // Restarted only where OpenBLAS fell back, and then said so.
    EXPECT_EQ(
        log.find("Core: Prescott") != std::string::npos,
        log.find("restarted with OPENBLAS_CORETYPE=") != std::string::npos)
        << log;
  }
  ::unsetenv("OPENBLAS_VERBOSE");

  // A restarted server keeps its name (ps, pgrep, the kernel's comm): a
  // router waiting for a worker that is not there stays up to be looked at.
  const std::string log_path = testing::TempDir() + "/named-router.log";
  const pid_t pid = ::fork();
  if (pid == 0) {
    FILE* f = std::fopen(log_path.c_str(), "w");
    if (f != nullptr) ::dup2(fileno(f), STDERR_FILENO);
    const std::string binary = testing::BinaryPath("moe-router");
    const std::string checkpoint =
        "--checkpoint=" + testing::GoldenPath("A_moe_eval_nodrop");
    ::execl(binary.c_str(), binary.c_str(), checkpoint.c_str(),
            "--workers=127.0.0.1:1", "--port=0", "--metrics_port=-1",
            static_cast<char*>(nullptr));
    std::_Exit(127);
  }
  ASSERT_GT(pid, 0);
  std::string log;
  for (int i = 0; i < 300 && log.find("warm-up") == std::string::npos; ++i) {
    ::usleep(100 * 1000);
    std::ifstream in(log_path);
    log.assign(std::istreambuf_iterator<char>(in), {});
  }
  std::ifstream comm_file("/proc/" + std::to_string(pid) + "/comm");
  std::string comm;
  std::getline(comm_file, comm);
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  EXPECT_NE(log.find("warm-up"), std::string::npos) << log;
  EXPECT_EQ(comm, "moe-router") << log;
  if (user_choice != nullptr) ::setenv("OPENBLAS_CORETYPE", saved.c_str(), 1);
}

TEST(CliTest, HelpListsEachBinarysOwnFlagsAndVersionSaysWhatWasBuilt) {
  struct Binary {
    const char* name;
    const char* own_flag;
  };
  for (const Binary& b :
       {Binary{"moe-client", "--target"}, Binary{"moe-run", "--checkpoint"},
        Binary{"moe-router", "--max_tokens_per_request"},
        Binary{"moe-expert", "--max_tokens_per_call"},
        Binary{"moe-up", "--demo_layers"}}) {
    SCOPED_TRACE(b.name);
    std::string log;
    ASSERT_EQ(
        testing::RunProcess({testing::BinaryPath(b.name), "--help"}, &log), 0)
        << log;
    EXPECT_NE(log.find(std::string(b.own_flag) + " (default "),
              std::string::npos)
        << log;
    EXPECT_EQ(log.find("--flagfile"), std::string::npos) << log;
    EXPECT_EQ(log.find("No flags matched"), std::string::npos) << log;
    ASSERT_EQ(
        testing::RunProcess({testing::BinaryPath(b.name), "--version"}, &log),
        0);
    EXPECT_NE(log.find(std::string(b.name) + " 0.1.0 (git "), std::string::npos)
        << log;
    EXPECT_NE(log.find("device support: cpu"), std::string::npos) << log;
  }
  // A binary that talks to routers does not list the engine's flags.
  std::string log;
  testing::RunProcess({testing::BinaryPath("moe-client"), "--help"}, &log);
  EXPECT_EQ(log.find("--checkpoint (default"), std::string::npos) << log;
}

}  // namespace
}  // namespace moe
