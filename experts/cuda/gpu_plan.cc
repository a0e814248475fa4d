#include "experts/cuda/gpu_plan.h"

#include <algorithm>
#include <cstring>
#include <iterator>
#include <map>
#include <numeric>
#include <optional>

namespace moe::experts::gpu {
namespace {

size_t AlignUp(size_t n, size_t a) { return (n + a - 1) / a * a; }

// Offsets inside a params region for `problems` problems: six pointer
// arrays (A, B, C of each GEMM), then the GEGLU and epilogue descriptors.
struct ParamsLayout {
  size_t pointers[6];
  size_t geglu;
  size_t epilogue;
  size_t total;
};

ParamsLayout LayoutParams(int64_t problems) {
  const size_t p = static_cast<size_t>(problems);
  ParamsLayout l{};
  size_t at = 0;
  for (size_t& array : l.pointers) {
    array = at;
    at = AlignUp(at + p * sizeof(uint64_t), 16);
  }
  l.geglu = at;
  at = AlignUp(at + p * sizeof(GegluProblem), 16);
  l.epilogue = at;
  at = AlignUp(at + p * sizeof(EpilogueProblem), 16);
  l.total = at;
  return l;
}

// One GEMM problem's shape and leading dimensions.
struct GemmShape {
  int m, n, k, lda, ldb, ldc;
  bool operator==(const GemmShape& o) const {
    return m == o.m && n == o.n && k == o.k && lda == o.lda && ldb == o.ldb &&
           ldc == o.ldc;
  }
};

// Cuts the sorted problem order into groups of one shape.
void AddGroups(const std::vector<GemmShape>& shapes, GroupedGemm* g) {
  std::optional<GemmShape> last;
  for (const GemmShape& s : shapes) {
    if (last == s) {
      ++g->group_size.back();
      continue;
    }
    last = s;
    g->m.push_back(s.m);
    g->n.push_back(s.n);
    g->k.push_back(s.k);
    g->lda.push_back(s.lda);
    g->ldb.push_back(s.ldb);
    g->ldc.push_back(s.ldc);
    g->alpha.push_back(1.0f);
    g->beta.push_back(0.0f);
    g->group_size.push_back(1);
  }
  g->problems = static_cast<int>(shapes.size());
}

}  // namespace

size_t ArenaLayout::Reserve(size_t bytes) {
  const size_t offset = size_;
  size_ = AlignUp(size_ + bytes, kRegionAlignment);
  return offset;
}

WorkspaceLayout LayoutWorkspace(const WorkspaceShape& s) {
  const size_t rows = static_cast<size_t>(s.max_rows);
  const size_t dim = static_cast<size_t>(s.dim);
  const size_t h = static_cast<size_t>(HiddenStride(s.max_hidden));
  const size_t c = common::ElementSize(s.compute);
  WorkspaceLayout l;
  ArenaLayout arena;
  auto region = [&arena](size_t bytes) { return arena.Reserve(bytes); };
  l.raw_tokens = region(rows * dim * sizeof(float));
  l.tokens = region(rows * dim * c);
  l.u = region(rows * 2 * h * c);
  l.v = region(rows * h * c);
  l.z = region(rows * dim * c);
  l.out = region(rows * dim * sizeof(float));
  l.params = region(ParamsBytes(s.max_problems));
  l.cublas = region(kCublasWorkspaceBytes);
  l.total = arena.size();
  return l;
}

size_t ParamsBytes(int64_t problems) { return LayoutParams(problems).total; }

std::vector<float> PadRows(const std::vector<float>& m, int64_t rows,
                           int64_t cols, int64_t stride) {
  std::vector<float> out(static_cast<size_t>(rows * stride), 0.0f);
  for (int64_t r = 0; r < rows; ++r) {
    std::copy_n(m.begin() + r * cols, cols, out.begin() + r * stride);
  }
  return out;
}

std::vector<Pass> PlanPasses(const std::vector<PlanSegment>& segments,
                             const std::vector<int64_t>& hidden,
                             int64_t max_problems) {
  std::vector<Pass> passes;
  // Row intervals of the current pass: start -> end.
  std::map<int64_t, int64_t> taken;
  int64_t u_elem = 0, v_elem = 0, z_row = 0;
  auto overlaps = [&taken](int64_t begin, int64_t end) {
    auto next = taken.lower_bound(begin);
    if (next != taken.end() && next->first < end) return true;
    return next != taken.begin() && std::prev(next)->second > begin;
  };
  for (size_t i = 0; i < segments.size(); ++i) {
    const PlanSegment& s = segments[i];
    if (s.count == 0) continue;
    const int64_t end = s.offset + s.count;
    if (passes.empty() ||
        static_cast<int64_t>(passes.back().problems.size()) >= max_problems ||
        overlaps(s.offset, end)) {
      passes.emplace_back();
      taken.clear();
      u_elem = v_elem = z_row = 0;
    }
    const int64_t h = hidden[static_cast<size_t>(s.expert)];
    Problem p;
    p.segment = static_cast<int32_t>(i);
    p.expert = s.expert;
    p.row_offset = s.offset;
    p.rows = s.count;
    p.hidden = h;
    p.u_elem = u_elem;
    p.v_elem = v_elem;
    p.z_row = z_row;
    u_elem += s.count * 2 * HiddenStride(h);
    v_elem += s.count * HiddenStride(h);
    z_row += s.count;
    taken[s.offset] = end;
    passes.back().problems.push_back(p);
  }
  for (Pass& pass : passes) {
    std::vector<RowRun> runs;
    for (const Problem& p : pass.problems)
      runs.push_back({p.row_offset, p.rows});
    pass.out_runs = MergeRuns(std::move(runs));
  }
  return passes;
}

std::vector<RowRun> MergeRuns(std::vector<RowRun> runs) {
  std::sort(runs.begin(), runs.end(), [](const RowRun& a, const RowRun& b) {
    return a.offset < b.offset;
  });
  std::vector<RowRun> merged;
  for (const RowRun& r : runs) {
    if (r.count == 0) continue;
    if (!merged.empty() &&
        merged.back().offset + merged.back().count >= r.offset) {
      const int64_t end = std::max(merged.back().offset + merged.back().count,
                                   r.offset + r.count);
      merged.back().count = end - merged.back().offset;
    } else {
      merged.push_back(r);
    }
  }
  return merged;
}

PassLaunch BuildPassLaunch(const Pass& pass,
                           const std::vector<ExpertDevicePtrs>& experts,
                           const WorkspaceAddresses& addr, int64_t dim,
                           common::DType compute, void* host_params) {
  const int64_t count = static_cast<int64_t>(pass.problems.size());
  const ParamsLayout layout = LayoutParams(count);
  const uint64_t c = common::ElementSize(compute);
  std::vector<size_t> order(pass.problems.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&pass](size_t a, size_t b) {
    const Problem& x = pass.problems[a];
    const Problem& y = pass.problems[b];
    return x.hidden != y.hidden ? x.hidden < y.hidden : x.rows < y.rows;
  });

  auto* base = static_cast<unsigned char*>(host_params);
  uint64_t* arrays[6];
  for (int i = 0; i < 6; ++i) {
    arrays[i] = reinterpret_cast<uint64_t*>(base + layout.pointers[i]);
  }
  auto* geglu = reinterpret_cast<GegluProblem*>(base + layout.geglu);
  auto* epilogue = reinterpret_cast<EpilogueProblem*>(base + layout.epilogue);

  PassLaunch launch;
  launch.problems = static_cast<int>(count);
  std::vector<GemmShape> up, down;
  for (size_t j = 0; j < order.size(); ++j) {
    const Problem& p = pass.problems[order[j]];
    const ExpertDevicePtrs& e = experts[static_cast<size_t>(p.expert)];
    const uint64_t u = addr.u + static_cast<uint64_t>(p.u_elem) * c;
    const uint64_t v = addr.v + static_cast<uint64_t>(p.v_elem) * c;
    const uint64_t z = addr.z + static_cast<uint64_t>(p.z_row * dim) * c;
    arrays[0][j] = e.w1;
    arrays[1][j] = addr.tokens + static_cast<uint64_t>(p.row_offset * dim) * c;
    arrays[2][j] = u;
    arrays[3][j] = e.w2;
    arrays[4][j] = v;
    arrays[5][j] = z;
    const int64_t stride = HiddenStride(p.hidden);
    geglu[j] = GegluProblem{u, v, e.b1, e.mult_bias, p.rows, p.hidden, stride};
    epilogue[j] = EpilogueProblem{
        z, addr.out + static_cast<uint64_t>(p.row_offset * dim) * 4, e.b2,
        p.rows};
    // W1 is [2h, d] row-major: column-major [d, 2h], so op(A) = Aᵀ, lda =
    // d; x rows are column-major [d, rows], ldb = d; u is column-major [2h,
    // rows] with columns 2 * stride apart. Down: W2 [d, h] with rows
    // stride apart is column-major [h, d] (lda = stride), op(A) = Aᵀ; v
    // is [h, rows] (ldb = stride); z is [d, rows], ldc = d.
    const int rows = static_cast<int>(p.rows), h = static_cast<int>(p.hidden);
    const int d = static_cast<int>(dim), st = static_cast<int>(stride);
    up.push_back({2 * h, rows, d, d, d, 2 * st});
    down.push_back({d, rows, h, st, st, d});
    launch.max_rows = std::max(launch.max_rows, p.rows);
    launch.max_hidden = std::max(launch.max_hidden, p.hidden);
  }
  AddGroups(up, &launch.up);
  AddGroups(down, &launch.down);
  launch.up.a = addr.params + layout.pointers[0];
  launch.up.b = addr.params + layout.pointers[1];
  launch.up.c = addr.params + layout.pointers[2];
  launch.down.a = addr.params + layout.pointers[3];
  launch.down.b = addr.params + layout.pointers[4];
  launch.down.c = addr.params + layout.pointers[5];
  launch.geglu = addr.params + layout.geglu;
  launch.epilogue = addr.params + layout.epilogue;
  return launch;
}

}  // namespace moe::experts::gpu
