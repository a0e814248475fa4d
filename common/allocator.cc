#include "common/allocator.h"

#include <malloc.h>

#include <climits>
#include <cstdlib>

namespace moe::common {

void TuneAllocatorForReuse() {
  const char* off = std::getenv("MOE_NO_MALLOC_TUNING");
  if (off != nullptr && off[0] != '\0' && off[0] != '0') return;
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, INT_MAX);
  // One arena: per-thread arenas grow in 64 MiB heaps that glibc unmaps as
  // soon as they empty, whatever the trim threshold, so the forwards that run
  // on worker-pool threads faulted their buffers in again every time.
  mallopt(M_ARENA_MAX, 1);
}

}  // namespace moe::common
