#include "experts/cuda/cublas_api.h"

#include <dlfcn.h>

#include <string>

namespace moe::experts::gpu {
namespace {

// cublas_v2.h maps several names to their _v2 symbols with macros; this
// expands them before they become the string dlsym looks for.
#define MOE_SYMBOL_NAME(name) MOE_SYMBOL_NAME_EXPANDED(name)
#define MOE_SYMBOL_NAME_EXPANDED(name) #name

struct Loaded {
  CublasApi api;
  Status status;
};

template <typename F>
bool Bind(void* library, const char* name, F* out, Status* status) {
  *out = reinterpret_cast<F>(dlsym(library, name));
  if (*out != nullptr) return true;
  *status = Status(Code::kFailedPrecondition,
                   std::string("cuBLAS has no ") + name +
                       " (older than the headers this was built with?)");
  return false;
}

Loaded Load() {
  Loaded l;
  const std::string versioned =
      "libcublas.so." + std::to_string(CUBLAS_VER_MAJOR);
  void* library = dlopen(versioned.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (library == nullptr) {
    const std::string first = dlerror();
    library = dlopen("libcublas.so", RTLD_NOW | RTLD_LOCAL);
    if (library == nullptr) {
      l.status = Status(Code::kFailedPrecondition,
                        "cannot load cuBLAS (" + versioned + "): " + first +
                            "; is the CUDA toolkit's lib64 on the library "
                            "path (LD_LIBRARY_PATH)?");
      return l;
    }
  }
  // Never closed: the table is the process's for its lifetime.
  CublasApi& a = l.api;
  Status& s = l.status;
  (void)(Bind(library, MOE_SYMBOL_NAME(cublasCreate), &a.create, &s) &&
         Bind(library, MOE_SYMBOL_NAME(cublasDestroy), &a.destroy, &s) &&
         Bind(library, MOE_SYMBOL_NAME(cublasSetStream), &a.set_stream, &s) &&
         Bind(library, MOE_SYMBOL_NAME(cublasSetWorkspace), &a.set_workspace,
              &s) &&
         Bind(library, MOE_SYMBOL_NAME(cublasSetMathMode), &a.set_math_mode,
              &s) &&
         Bind(library, MOE_SYMBOL_NAME(cublasGemmEx), &a.gemm_ex, &s) &&
         Bind(library, MOE_SYMBOL_NAME(cublasGemmGroupedBatchedEx),
              &a.gemm_grouped_batched_ex, &s) &&
         Bind(library, MOE_SYMBOL_NAME(cublasGetStatusName), &a.status_name,
              &s) &&
         Bind(library, MOE_SYMBOL_NAME(cublasGetStatusString), &a.status_string,
              &s));
  return l;
}

}  // namespace

Status LoadCublas(const CublasApi** api) {
  static const Loaded loaded = Load();
  *api = loaded.status.ok() ? &loaded.api : nullptr;
  return loaded.status;
}

}  // namespace moe::experts::gpu
