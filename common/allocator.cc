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
}

}  // namespace moe::common
