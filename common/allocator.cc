#include "common/allocator.h"

#include <malloc.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <thread>

namespace moe::common {

bool HeapReleasePolicy::Sample(int64_t in_use, int64_t resident) {
  recent_[next_] = in_use;
  next_ = (next_ + 1) % kWindow;
  if (filled_ < kWindow) ++filled_;
  if (baseline_ < 0) return true;
  if (filled_ < kWindow) return false;
  const auto [low, high] = std::minmax_element(recent_, recent_ + kWindow);
  if (*high - *low > kQuietBandBytes) return false;  // traffic runs
  // Free pages still resident, past a margin, go.
  return resident - in_use - baseline_ > kKeptFreeBytes;
}

void HeapReleasePolicy::Released(int64_t in_use, int64_t resident) {
  baseline_ = std::max<int64_t>(0, resident - in_use);
}

namespace {

int64_t ResidentBytes() {
  long pages = 0, resident = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    std::fclose(f);
  }
  return static_cast<int64_t>(resident) * sysconf(_SC_PAGESIZE);
}

int64_t InUseBytes() {
  const struct mallinfo2 info = mallinfo2();
  return static_cast<int64_t>(info.uordblks + info.hblkhd);
}

}  // namespace

void TuneAllocatorForReuse() {
  const char* off = std::getenv("MOE_NO_MALLOC_TUNING");
  if (off != nullptr && off[0] != '\0' && off[0] != '0') return;
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, INT_MAX);
  // One arena: per-thread arenas grow in 64 MiB heaps that glibc unmaps as
  // soon as they empty, whatever the trim threshold, so the forwards that run
  // on worker-pool threads faulted their buffers in again every time.
  mallopt(M_ARENA_MAX, 1);
  // The cap on what is kept. Detached: it holds nothing a process exit
  // needs, and reads the heap only through glibc's own locks.
  std::thread([] {
    pthread_setname_np(pthread_self(), "moe-heap");
    HeapReleasePolicy policy;
    for (;;) {
      std::this_thread::sleep_for(
          std::chrono::milliseconds(kReleaseIntervalMs));
      if (policy.Sample(InUseBytes(), ResidentBytes())) {
        malloc_trim(0);
        policy.Released(InUseBytes(), ResidentBytes());
      }
    }
  }).detach();
}

}  // namespace moe::common
