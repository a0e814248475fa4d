#include "common/blas_kernels.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "absl/strings/match.h"
#include "common/logging.h"

namespace moe::common {
namespace {

// Set in the restarted process's environment: the core OpenBLAS chose
// before, so that the restarted process can say what happened.
constexpr char kRestartedFrom[] = "MOE_OPENBLAS_RESTARTED_FROM";

}  // namespace

const char* OpenBlasCoreName() {
  using CoreName = char* (*)();
  static const CoreName core_name =
      reinterpret_cast<CoreName>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
  return core_name == nullptr ? nullptr : core_name();
}

bool OpenBlasRunsAvx512Kernels() {
  static const bool avx512 = [] {
    const char* core = OpenBlasCoreName();
    if (core == nullptr) return false;
    for (const char* name : {"SkylakeX", "Cooperlake", "SapphireRapids"}) {
      if (absl::EqualsIgnoreCase(core, name)) return true;
    }
    return false;
  }();
  return avx512;
}

std::string BetterOpenBlasCore(absl::string_view chosen, bool avx512,
                               bool avx2_fma) {
  if (!absl::EqualsIgnoreCase(chosen, "Prescott")) return "";
  if (avx512) return "SkylakeX";
  if (avx2_fma) return "Haswell";
  return "";
}

void UseOpenBlasKernelsForThisCpu(char** argv) {
  if (const char* before = std::getenv(kRestartedFrom); before != nullptr) {
    const char* now = std::getenv("OPENBLAS_CORETYPE");
    MOE_LOG(INFO) << "OpenBLAS took this CPU for a " << before
                  << " (SSE3 kernels); restarted with OPENBLAS_CORETYPE="
                  << (now != nullptr ? now : "")
                  << " (set OPENBLAS_CORETYPE to choose)";
    ::unsetenv(kRestartedFrom);
    return;
  }
  if (std::getenv("OPENBLAS_CORETYPE") != nullptr) return;
  if (const char* off = std::getenv("MOE_NO_OPENBLAS_RESTART");
      off != nullptr && std::string(off) == "1") {
    return;
  }
  const char* chosen = OpenBlasCoreName();
  if (chosen == nullptr) return;  // no OpenBLAS in this process
  __builtin_cpu_init();
  const bool avx512 =
      __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") &&
      __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  const bool avx2_fma =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const std::string better = BetterOpenBlasCore(chosen, avx512, avx2_fma);
  if (better.empty()) return;
  ::setenv("OPENBLAS_CORETYPE", better.c_str(), 1);
  ::setenv(kRestartedFrom, chosen, 1);
  // The binary's own path, so that the process keeps its name (ps, pgrep,
  // the kernel's comm); /proc/self/exe where it cannot be read.
  char path[4096];
  const ssize_t n = ::readlink("/proc/self/exe", path, sizeof(path) - 1);
  const bool named = n > 0 && n < static_cast<ssize_t>(sizeof(path)) - 1;
  if (named) path[n] = '\0';
  ::execv(named && ::access(path, X_OK) == 0 ? path : "/proc/self/exe", argv);
  // Still here: run on the kernels OpenBLAS chose.
  const int error = errno;
  ::unsetenv("OPENBLAS_CORETYPE");
  ::unsetenv(kRestartedFrom);
  MOE_LOG(WARNING) << "OpenBLAS took this CPU for a " << chosen
                   << " (SSE3 kernels) and restarting with OPENBLAS_CORETYPE="
                   << better << " failed: " << std::strerror(error);
}

}  // namespace moe::common
