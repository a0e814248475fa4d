// Allocator settings for processes that allocate and free large activation
// buffers on every forward, and that must give memory back after a burst.
#pragma once

#include <cstdint>

namespace moe::common {

// Keeps freed memory for reuse instead of returning it to the kernel: glibc
// serves allocations up to 32 MiB from its heaps (M_MMAP_THRESHOLD, the
// largest it accepts, instead of a threshold that starts at 128 KiB) and no
// longer trims them (M_TRIM_THRESHOLD). A freshly faulted 4 KiB page costs
// about 10 us on these VMs, so fresh activation buffers were the largest cost
// of a forward after the GEMMs (BENCHMARKS.md: in-process forward 431 ms ->
// 262 ms). One arena for all threads (M_ARENA_MAX 1), since glibc unmaps
// emptied per-thread heaps regardless of the trim threshold (router stages
// 115 -> 33 ms per forward).
//
// What is kept is capped: a thread samples the process every
// kReleaseIntervalMs. Once the bytes in use have held still (within
// kQuietBandBytes) for kQuietWindowMs and more than kKeptFreeBytes of free
// heap sit resident (the end of one huge call or of a burst of clients), the
// free pages go back to the kernel (malloc_trim). Traffic whose buffers come
// and go keeps its working set (a release while it ran would only make it
// fault its pages in again); a process is back near its idle size about
// kQuietWindowMs after a burst ends.
//
// MOE_NO_MALLOC_TUNING=1 in the environment turns all of this off (to
// measure it). Call once, early in main().
void TuneAllocatorForReuse();

// Free heap bytes kept resident for reuse.
inline constexpr int64_t kKeptFreeBytes = int64_t{48} << 20;
inline constexpr int64_t kQuietBandBytes = int64_t{16} << 20;
inline constexpr int kReleaseIntervalMs = 500;
inline constexpr int kQuietWindowMs = 3000;

// Decides when the heap's free pages go back, from samples taken every
// kReleaseIntervalMs of the bytes the program holds (in_use: heap and
// mmapped blocks) and of the process's resident size. Resident memory that
// is neither in use nor the baseline measured after the last release (code,
// stacks, what the allocator does not see) is free heap the process keeps.
// (Samples miss the short peaks of busy traffic, so "in use held still" is
// the sign that traffic stopped, not a sampled peak.) Not thread-safe (one
// sampling thread owns it).
class HeapReleasePolicy {
 public:
  // True when the free pages should be released now. The first sample asks
  // for a release, to learn the baseline.
  bool Sample(int64_t in_use, int64_t resident);
  // After a release: what is resident beside in_use is the baseline.
  void Released(int64_t in_use, int64_t resident);

 private:
  static constexpr int kWindow = kQuietWindowMs / kReleaseIntervalMs;
  int64_t recent_[kWindow] = {};
  int next_ = 0;
  int filled_ = 0;
  int64_t baseline_ = -1;  // unknown until the first release
};

}  // namespace moe::common
