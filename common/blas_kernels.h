#pragma once

#include <string>

#include "absl/strings/string_view.h"

namespace moe::common {

// OpenBLAS picks its kernels by CPU model when it loads. The one Debian
// bookworm ships (0.3.21) does not know CPUs newer than itself (Sapphire
// Rapids among them) and takes them for a Prescott, a CPU without AVX:
// its small-matrix kernels then run on SSE3 (the router's gate, a
// [tokens, dim] x [dim, experts] product, took twice as long here). It
// reads OPENBLAS_CORETYPE only when it loads, so the choice is made by
// restarting the process.

// The core OpenBLAS runs kernels for (openblas_get_corename, found at run
// time: "Prescott", "SkylakeX", ...); null where the process has no
// OpenBLAS.
const char* OpenBlasCoreName();

// Whether OpenBLAS runs its AVX-512 kernels (the SkylakeX core and later).
// Decided once per process.
bool OpenBlasRunsAvx512Kernels();

// The core to ask OpenBLAS for when it chose `chosen` on a CPU with these
// features: "SkylakeX" (AVX-512 F/CD/BW/DQ/VL) or "Haswell" (AVX2 and FMA)
// where it fell back to Prescott; empty where its choice stands.
std::string BetterOpenBlasCore(absl::string_view chosen, bool avx512,
                               bool avx2_fma);

// When this process loaded OpenBLAS and OpenBLAS took this CPU for a
// Prescott, restarts the process (the same arguments, /proc/self/exe) with
// OPENBLAS_CORETYPE set to the better core, and logs it once restarted.
// Does nothing when OPENBLAS_CORETYPE is already set (the user's choice
// wins), when MOE_NO_OPENBLAS_RESTART=1 (to measure it) or when the process
// has no OpenBLAS. Returns when it did not restart. Call first thing in
// main(), before any thread starts.
void UseOpenBlasKernelsForThisCpu(char** argv);

}  // namespace moe::common
