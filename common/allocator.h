// Allocator settings for processes that allocate and free large activation
// buffers on every forward.
#pragma once

namespace moe::common {

// Keeps freed memory for reuse instead of returning it to the kernel: glibc
// serves allocations up to 32 MiB from its heaps (M_MMAP_THRESHOLD, the
// largest it accepts, instead of a threshold that starts at 128 KiB) and no
// longer trims them (M_TRIM_THRESHOLD). A freshly faulted 4 KiB page costs
// about 10 us on these VMs, so fresh activation buffers were the largest cost
// of a forward after the GEMMs (BENCHMARKS.md: in-process forward 431 ms ->
// 262 ms). One arena for all threads (M_ARENA_MAX 1), since glibc unmaps
// emptied per-thread heaps regardless of the trim threshold (router stages
// 115 -> 33 ms per forward). The process keeps its peak working set resident.
// MOE_NO_MALLOC_TUNING=1 in the environment turns this off (to measure it).
// Call once, early in main().
void TuneAllocatorForReuse();

}  // namespace moe::common
