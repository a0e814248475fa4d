// Planning one call of the GPU backend on the host: which segments run in
// which pass, where each one's rows live in a stream's device workspace,
// and the arguments of the pass's two grouped GEMMs and two kernels. Plain
// C++ without the CUDA runtime, so that all of it is tested on machines
// without a GPU (tests/unit/experts/gpu_plan_test.cc).
//
// One pass is: grouped GEMM u = x·W1ᵀ (one problem per segment, one
// launch), the fused GEGLU kernel (bias, GELU with erf, mult_bias,
// product; one launch), grouped GEMM z = v·W2ᵀ, the epilogue kernel (b2,
// float32, rows written where they belong in the token block). A call is
// one pass unless its segments overlap in rows (a later one must win, as
// on the CPU) or exceed the workspace's problem count.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "experts/cuda/gpu_status.h"
#include "experts/cuda/gpu_types.h"

namespace moe::experts::gpu {

// cuBLAS's workspace per stream (NVIDIA's recommendation for Hopper).
inline constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;
// Every region of the workspace starts at a multiple of this.
inline constexpr size_t kRegionAlignment = 256;

// Bookkeeping of the one device allocation a backend makes at start-up:
// pieces handed out in order, each at a multiple of kRegionAlignment.
class ArenaLayout {
 public:
  // The offset of a new piece of `bytes` bytes.
  size_t Reserve(size_t bytes);
  // Bytes reserved so far, the last piece's end rounded up.
  size_t size() const { return size_; }

 private:
  size_t size_ = 0;
};

// What one stream's workspace must hold: calls of at most max_rows token
// rows, hidden sizes up to max_hidden, at most max_problems segments per
// pass.
struct WorkspaceShape {
  int64_t max_rows = 0;
  int64_t dim = 0;
  int64_t max_hidden = 0;
  common::DType compute = common::DType::kFloat32;
  int64_t max_problems = 0;
};

// Byte offsets of the regions of one stream's workspace.
struct WorkspaceLayout {
  size_t raw_tokens = 0;  // [max_rows, dim] as sent (up to float32)
  size_t tokens = 0;      // [max_rows, dim] in the compute dtype
  size_t u = 0;       // max_rows * 2 * HiddenStride(max_hidden), compute dtype
  size_t v = 0;       // max_rows * HiddenStride(max_hidden), compute dtype
  size_t z = 0;       // [max_rows, dim], compute dtype
  size_t out = 0;     // [max_rows, dim] float32, by token row
  size_t params = 0;  // ParamsBytes(max_problems)
  size_t cublas = 0;  // kCublasWorkspaceBytes
  size_t total = 0;
};

WorkspaceLayout LayoutWorkspace(const WorkspaceShape& shape);

// Bytes of a pass's pointer arrays and kernel descriptors for `problems`.
size_t ParamsBytes(int64_t problems);

// The row-major [rows, cols] matrix `m` with rows `stride` (>= cols)
// elements apart, zeros between: W2 as the device holds it
// (HiddenStride).
std::vector<float> PadRows(const std::vector<float>& m, int64_t rows,
                           int64_t cols, int64_t stride);

// A segment of a call: rows [offset, offset + count) through expert
// `expert` (an index into the backend's expert table).
struct PlanSegment {
  int32_t expert = 0;
  int64_t offset = 0;
  int64_t count = 0;
};

// One segment as a problem of a pass, with its rows' places in u, v, z.
struct Problem {
  int32_t segment = 0;  // index into the call's segments
  int32_t expert = 0;
  int64_t row_offset = 0;
  int64_t rows = 0;
  int64_t hidden = 0;
  int64_t u_elem = 0;  // first element of its block of u (rows 2 * stride)
  int64_t v_elem = 0;  // first element of its block of v (rows stride)
  int64_t z_row = 0;   // first row of its [rows, dim] block of z
};

// Token rows [offset, offset + count).
struct RowRun {
  int64_t offset = 0;
  int64_t count = 0;
};

struct Pass {
  std::vector<Problem> problems;
  std::vector<RowRun> out_runs;  // the rows it writes, merged, ascending
};

// Splits `segments` of a call of `rows` rows into passes, in order.
// Segments of count 0 are left out. A pass ends before a segment whose rows
// overlap one already in it, or that would take it past max_problems.
// REQUIRES: every segment lies within [0, rows) (ExpertShard::Run checked
// it) and every expert index is below hidden.size(); rows <= max_rows.
std::vector<Pass> PlanPasses(const std::vector<PlanSegment>& segments,
                             const std::vector<int64_t>& hidden,
                             int64_t max_problems);

// Sorts and merges row runs (adjacent or overlapping ones become one).
std::vector<RowRun> MergeRuns(std::vector<RowRun> runs);

// The device addresses of one stream's regions (LayoutWorkspace offsets
// from its base), `tokens` being raw_tokens when the call's rows arrive in
// the compute dtype.
struct WorkspaceAddresses {
  uint64_t tokens = 0, u = 0, v = 0, z = 0, out = 0, params = 0;
};

// Arguments of one grouped GEMM, C = op(A)·op(B) column-major (cuBLAS's
// view of our row-major matrices), one group per distinct shape. The
// pointer arrays live in the params region at a, b, c.
struct GroupedGemm {
  std::vector<int> m, n, k, lda, ldb, ldc, group_size;
  std::vector<float> alpha, beta;
  uint64_t a = 0, b = 0, c = 0;
  int problems = 0;
};

struct PassLaunch {
  GroupedGemm up;  // u = x·W1ᵀ: m = 2h, n = rows, k = dim, A = W1 transposed
  GroupedGemm down;  // z = v·W2ᵀ: m = dim, n = rows, k = h, A = W2 transposed
  // (the leading dimensions of [*, h] arrays are HiddenStride(h))
  uint64_t geglu = 0;     // GegluProblem[problems]
  uint64_t epilogue = 0;  // EpilogueProblem[problems]
  int problems = 0;
  int64_t max_rows = 0;  // of one problem
  int64_t max_hidden = 0;
};

// Writes the pass's pointer arrays and descriptors into `host_params` (at
// least ParamsBytes(pass.problems.size()) bytes; a host image of the
// params region at addr.params, to be copied there) and returns the launch
// arguments. The pass's problems are ordered by shape so that equal shapes
// form one group.
PassLaunch BuildPassLaunch(const Pass& pass,
                           const std::vector<ExpertDevicePtrs>& experts,
                           const WorkspaceAddresses& addr, int64_t dim,
                           common::DType compute, void* host_params);

}  // namespace moe::experts::gpu
