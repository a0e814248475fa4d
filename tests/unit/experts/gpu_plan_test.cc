// The GPU backend's host-side planning, without a GPU: pass splitting, the
// workspace and arena layouts, and the grouped-GEMM arguments and kernel
// descriptors of a pass, which are checked by executing them on the host
// (host memory standing in for the device) against the reference expert.
#include "experts/cuda/gpu_plan.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "common/float_bits.h"
#include "experts/cuda/host_expert.h"

namespace moe::experts::gpu {
namespace {

uint64_t Addr(const void* p) { return reinterpret_cast<uint64_t>(p); }

TEST(ArenaLayoutTest, PiecesAreAlignedAndInOrder) {
  ArenaLayout a;
  EXPECT_EQ(a.Reserve(10), 0u);
  EXPECT_EQ(a.Reserve(1), kRegionAlignment);
  EXPECT_EQ(a.Reserve(0), 2 * kRegionAlignment);
  EXPECT_EQ(a.Reserve(kRegionAlignment + 1), 2 * kRegionAlignment);
  EXPECT_EQ(a.size(), 4 * kRegionAlignment);
}

TEST(WorkspaceLayoutTest, RegionsHoldTheirDataWithoutOverlap) {
  const WorkspaceShape shape{1000, 512, 1365, common::DType::kBFloat16, 64};
  const WorkspaceLayout l = LayoutWorkspace(shape);
  const std::vector<std::pair<size_t, size_t>> regions = {
      {l.raw_tokens, 1000 * 512 * 4}, {l.tokens, 1000 * 512 * 2},
      {l.u, 1000 * 2 * 1368 * 2},     {l.v, 1000 * 1368 * 2},
      {l.z, 1000 * 512 * 2},          {l.out, 1000 * 512 * 4},
      {l.params, ParamsBytes(64)},    {l.cublas, kCublasWorkspaceBytes}};
  for (size_t i = 0; i < regions.size(); ++i) {
    EXPECT_EQ(regions[i].first % kRegionAlignment, 0u) << i;
    const size_t end = regions[i].first + regions[i].second;
    const size_t next = i + 1 < regions.size() ? regions[i + 1].first : l.total;
    EXPECT_LE(end, next) << "region " << i << " runs into the next";
  }
  EXPECT_GE(ParamsBytes(64), 64 * (6 * sizeof(uint64_t) + sizeof(GegluProblem) +
                                   sizeof(EpilogueProblem)));
}

TEST(PlanPassesTest, DisjointSegmentsAreOnePassWithPackedOffsets) {
  const std::vector<int64_t> hidden = {3, 5};
  const std::vector<Pass> passes =
      PlanPasses({{0, 0, 4}, {1, 4, 0}, {1, 6, 2}, {0, 4, 2}}, hidden, 16);
  ASSERT_EQ(passes.size(), 1u);
  const std::vector<Problem>& p = passes[0].problems;
  ASSERT_EQ(p.size(), 3u);  // the empty segment is left out
  EXPECT_EQ(p[0].segment, 0);
  EXPECT_EQ(p[1].segment, 2);
  EXPECT_EQ(p[2].segment, 3);
  // Rows of u and v are HiddenStride(h) = 8 (twice that for u) apart.
  EXPECT_EQ(p[1].u_elem, 4 * 2 * 8);
  EXPECT_EQ(p[2].u_elem, 4 * 2 * 8 + 2 * 2 * 8);
  EXPECT_EQ(p[2].v_elem, 4 * 8 + 2 * 8);
  EXPECT_EQ(p[2].z_row, 6);
  ASSERT_EQ(passes[0].out_runs.size(), 1u);
  EXPECT_EQ(passes[0].out_runs[0].offset, 0);
  EXPECT_EQ(passes[0].out_runs[0].count, 8);
}

TEST(PlanPassesTest, OverlapStartsANewPassSoTheLaterSegmentWins) {
  const std::vector<Pass> passes =
      PlanPasses({{0, 0, 4}, {1, 4, 4}, {1, 2, 3}}, {3, 3}, 16);
  ASSERT_EQ(passes.size(), 2u);
  EXPECT_EQ(passes[0].problems.size(), 2u);
  ASSERT_EQ(passes[1].problems.size(), 1u);
  EXPECT_EQ(passes[1].problems[0].segment, 2);
  EXPECT_EQ(passes[1].problems[0].u_elem, 0);  // offsets restart per pass
  // Touching segments do not overlap.
  EXPECT_EQ(PlanPasses({{0, 0, 4}, {0, 4, 4}}, {3}, 16).size(), 1u);
}

TEST(PlanPassesTest, ProblemLimitSplitsPasses) {
  std::vector<PlanSegment> segs;
  for (int i = 0; i < 7; ++i) segs.push_back({0, i, 1});
  const std::vector<Pass> passes = PlanPasses(segs, {2}, 3);
  ASSERT_EQ(passes.size(), 3u);
  EXPECT_EQ(passes[2].problems.size(), 1u);
  EXPECT_TRUE(PlanPasses({{0, 0, 0}}, {2}, 3).empty());
}

TEST(HiddenStrideTest, RowsOfHiddenSizeStartOnSixteenBytes) {
  for (int64_t h : {1, 7, 8, 9, 1365, 1368, 2730}) {
    const int64_t st = HiddenStride(h);
    EXPECT_GE(st, h);
    EXPECT_LT(st - h, 8);
    EXPECT_EQ(st * 2 % 16, 0) << h;  // bfloat16 (float32 follows)
  }
  const std::vector<float> padded = PadRows({1, 2, 3, 4, 5, 6}, 2, 3, 8);
  EXPECT_EQ(padded, (std::vector<float>{1, 2, 3, 0, 0, 0, 0, 0,  //
                                        4, 5, 6, 0, 0, 0, 0, 0}));
}

TEST(MergeRunsTest, MergesAdjacentAndOverlappingRuns) {
  const std::vector<RowRun> m =
      MergeRuns({{10, 5}, {0, 3}, {3, 2}, {12, 10}, {30, 0}, {40, 1}});
  ASSERT_EQ(m.size(), 3u);
  EXPECT_EQ(m[0].offset, 0);
  EXPECT_EQ(m[0].count, 5);
  EXPECT_EQ(m[1].offset, 10);
  EXPECT_EQ(m[1].count, 12);
  EXPECT_EQ(m[2].offset, 40);
}

TEST(BuildPassLaunchTest, EqualShapesShareAGroupAndPointersFollowTheLayout) {
  const std::vector<ExpertDevicePtrs> experts = {
      {0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 4},
      {0x11000, 0x12000, 0x13000, 0x14000, 0x15000, 6}};
  const Pass pass =
      PlanPasses({{0, 0, 3}, {1, 3, 2}, {0, 5, 3}}, {4, 6}, 16)[0];
  WorkspaceAddresses addr{0x100000, 0x200000, 0x300000,
                          0x400000, 0x500000, 0x600000};
  std::vector<unsigned char> params(ParamsBytes(3));
  const PassLaunch l = BuildPassLaunch(pass, experts, addr, 8,
                                       common::DType::kBFloat16, params.data());
  // Sorted by (hidden, rows): the two [3 rows, h 4] problems form a group.
  ASSERT_EQ(l.up.group_size, (std::vector<int>{2, 1}));
  EXPECT_EQ(l.up.m, (std::vector<int>{8, 12}));
  EXPECT_EQ(l.up.n, (std::vector<int>{3, 2}));
  EXPECT_EQ(l.up.k, (std::vector<int>{8, 8}));
  EXPECT_EQ(l.up.lda, (std::vector<int>{8, 8}));
  EXPECT_EQ(l.up.ldb, (std::vector<int>{8, 8}));
  // u's rows 2 * HiddenStride(h) apart: 16 elements, 32 bytes.
  EXPECT_EQ(l.up.ldc, (std::vector<int>{16, 16}));
  EXPECT_EQ(l.down.m, (std::vector<int>{8, 8}));
  EXPECT_EQ(l.down.k, (std::vector<int>{4, 6}));
  // W2's and v's rows HiddenStride(h) = 8 apart, whatever h.
  EXPECT_EQ(l.down.lda, (std::vector<int>{8, 8}));
  EXPECT_EQ(l.down.ldb, (std::vector<int>{8, 8}));
  EXPECT_EQ(l.down.ldc, (std::vector<int>{8, 8}));
  EXPECT_EQ(l.max_rows, 3);
  EXPECT_EQ(l.max_hidden, 6);
  const auto* b =
      reinterpret_cast<const uint64_t*>(params.data() + (l.up.b - addr.params));
  const auto* a =
      reinterpret_cast<const uint64_t*>(params.data() + (l.up.a - addr.params));
  // Problem order: segments 0, 2 (group 1), then 1. bfloat16: 2 bytes.
  EXPECT_EQ(a[0], 0x1000u);
  EXPECT_EQ(a[2], 0x11000u);
  EXPECT_EQ(b[0], addr.tokens);
  EXPECT_EQ(b[1], addr.tokens + 5 * 8 * 2);
  EXPECT_EQ(b[2], addr.tokens + 3 * 8 * 2);
  const auto* e = reinterpret_cast<const EpilogueProblem*>(
      params.data() + (l.epilogue - addr.params));
  EXPECT_EQ(e[1].out, addr.out + 5 * 8 * 4);  // float32 rows by token row
  EXPECT_EQ(e[2].b2, 0x15000u);
  const auto* g = reinterpret_cast<const GegluProblem*>(
      params.data() + (l.geglu - addr.params));
  EXPECT_EQ(g[2].hidden, 6);
  EXPECT_EQ(g[2].stride, 8);
  // Segment 2's block of v follows segments 0's and 1's (plan order).
  EXPECT_EQ(g[1].v, addr.v + (3 * 8 + 2 * 8) * 2);
}

// --- The launch executed on the host --------------------------------------

float Load(const void* base, int64_t i, common::DType d) {
  if (d == common::DType::kFloat32) return static_cast<const float*>(base)[i];
  return common::BFloat16ToFloat(static_cast<const uint16_t*>(base)[i]);
}

void Store(void* base, int64_t i, common::DType d, float v) {
  if (d == common::DType::kFloat32) {
    static_cast<float*>(base)[i] = v;
  } else {
    static_cast<uint16_t*>(base)[i] = common::FloatToBFloat16(v);
  }
}

float Geglu(float value, float gate, float mult) {
  const float gelu = 0.5f * gate * (1.0f + std::erf(gate / std::sqrt(2.0f)));
  return gelu * value * mult;
}

// cuBLAS's C = op(A)·B column-major with op(A) = Aᵀ, as the backend asks.
void HostGroupedGemm(const GroupedGemm& g, const unsigned char* params,
                     uint64_t params_addr, common::DType d) {
  auto array = [&](uint64_t at) {
    return reinterpret_cast<const uint64_t*>(params + (at - params_addr));
  };
  int j = 0;
  for (size_t grp = 0; grp < g.m.size(); ++grp) {
    for (int n = 0; n < g.group_size[grp]; ++n, ++j) {
      const void* A = reinterpret_cast<const void*>(array(g.a)[j]);
      const void* B = reinterpret_cast<const void*>(array(g.b)[j]);
      void* C = reinterpret_cast<void*>(array(g.c)[j]);
      for (int col = 0; col < g.n[grp]; ++col) {
        for (int row = 0; row < g.m[grp]; ++row) {
          double acc = 0;
          for (int l = 0; l < g.k[grp]; ++l) {
            acc += double(Load(A, l + int64_t{row} * g.lda[grp], d)) *
                   Load(B, l + int64_t{col} * g.ldb[grp], d);
          }
          Store(C, row + int64_t{col} * g.ldc[grp], d, static_cast<float>(acc));
        }
      }
    }
  }
}

void HostKernels(const PassLaunch& l, const unsigned char* params,
                 uint64_t params_addr, int64_t dim, common::DType d,
                 bool epilogue) {
  if (!epilogue) {
    const auto* p =
        reinterpret_cast<const GegluProblem*>(params + (l.geglu - params_addr));
    for (int i = 0; i < l.problems; ++i) {
      const void* u = reinterpret_cast<const void*>(p[i].u);
      const void* b1 = reinterpret_cast<const void*>(p[i].b1);
      const void* m = reinterpret_cast<const void*>(p[i].mult_bias);
      const int64_t h = p[i].hidden, st = p[i].stride;
      for (int64_t e = 0; e < p[i].rows * h; ++e) {
        const int64_t r = e / h, j = e % h;
        const float value = Load(u, r * 2 * st + j, d) + Load(b1, j, d);
        const float gate = Load(u, r * 2 * st + h + j, d) + Load(b1, h + j, d);
        Store(reinterpret_cast<void*>(p[i].v), r * st + j, d,
              Geglu(value, gate, Load(m, j, d)));
      }
    }
    return;
  }
  const auto* p = reinterpret_cast<const EpilogueProblem*>(
      params + (l.epilogue - params_addr));
  for (int i = 0; i < l.problems; ++i) {
    for (int64_t e = 0; e < p[i].rows * dim; ++e) {
      reinterpret_cast<float*>(p[i].out)[e] =
          Load(reinterpret_cast<const void*>(p[i].z), e, d) +
          Load(reinterpret_cast<const void*>(p[i].b2), e % dim, d);
    }
  }
}

// The small-rows kernels (geglu_kernels.h) on the host, reading what they
// read: x and W1 from the up GEMM's B and A arrays, W2 from the down GEMM's
// A array, the rest from the GEGLU and epilogue descriptors; each sum
// rounded to the compute dtype as the GEMM path stores u and z.
void HostSmallRows(const PassLaunch& l, const unsigned char* params,
                   uint64_t params_addr, int64_t dim, common::DType d) {
  auto at = [&](uint64_t addr) { return params + (addr - params_addr); };
  const auto* w1s = reinterpret_cast<const uint64_t*>(at(l.up.a));
  const auto* xs = reinterpret_cast<const uint64_t*>(at(l.up.b));
  const auto* w2s = reinterpret_cast<const uint64_t*>(at(l.down.a));
  const auto* g = reinterpret_cast<const GegluProblem*>(at(l.geglu));
  const auto* e = reinterpret_cast<const EpilogueProblem*>(at(l.epilogue));
  auto dot = [d](uint64_t w, uint64_t a, int64_t n) {
    float acc = 0;
    for (int64_t k = 0; k < n; ++k) {
      acc += Load(reinterpret_cast<const void*>(w), k, d) *
             Load(reinterpret_cast<const void*>(a), k, d);
    }
    std::vector<unsigned char> stored(4);
    Store(stored.data(), 0, d, acc);
    return Load(stored.data(), 0, d);
  };
  const uint64_t c = common::ElementSize(d);
  for (int i = 0; i < l.problems; ++i) {
    ASSERT_LE(g[i].rows, kMaxSmallRows);
    const int64_t h = g[i].hidden, st = g[i].stride;
    for (int64_t r = 0; r < g[i].rows; ++r) {
      const uint64_t x = xs[i] + static_cast<uint64_t>(r * dim) * c;
      for (int64_t j = 0; j < h; ++j) {
        const float value =
            dot(w1s[i] + static_cast<uint64_t>(j * dim) * c, x, dim) +
            Load(reinterpret_cast<const void*>(g[i].b1), j, d);
        const float gate =
            dot(w1s[i] + static_cast<uint64_t>((h + j) * dim) * c, x, dim) +
            Load(reinterpret_cast<const void*>(g[i].b1), h + j, d);
        Store(reinterpret_cast<void*>(g[i].v), r * st + j, d,
              Geglu(value, gate,
                    Load(reinterpret_cast<const void*>(g[i].mult_bias), j, d)));
      }
    }
    for (int64_t r = 0; r < g[i].rows; ++r) {
      for (int64_t col = 0; col < dim; ++col) {
        reinterpret_cast<float*>(e[i].out)[r * dim + col] =
            dot(w2s[i] + static_cast<uint64_t>(col * st) * c,
                g[i].v + static_cast<uint64_t>(r * st) * c, h) +
            Load(reinterpret_cast<const void*>(e[i].b2), col, d);
      }
    }
  }
}

HostExpert RandomExpert(int64_t d, int64_t h, std::mt19937& rng) {
  std::normal_distribution<float> n(0.0f, 0.3f);
  HostExpert e;
  e.dim = d;
  e.hidden = h;
  for (auto* v : {&e.w1, &e.b1, &e.mult_bias, &e.w2, &e.b2}) {
    const size_t size = v == &e.w1          ? 2 * h * d
                        : v == &e.b1        ? 2 * h
                        : v == &e.mult_bias ? h
                        : v == &e.w2        ? d * h
                                            : d;
    for (size_t i = 0; i < size; ++i) v->push_back(n(rng));
  }
  return e;
}

// Uploads experts to "device" (host) memory in the compute dtype, runs the
// planned passes on the host and returns the float32 rows written.
std::vector<float> RunPlannedOnHost(const std::vector<HostExpert>& experts,
                                    const std::vector<float>& x, int64_t rows,
                                    const std::vector<PlanSegment>& segments,
                                    common::DType d, int64_t max_problems,
                                    bool small_rows = false) {
  const int64_t dim = experts[0].dim;
  std::vector<std::vector<unsigned char>> storage;
  auto upload = [&](const std::vector<float>& v) {
    storage.emplace_back(v.size() * common::ElementSize(d));
    for (size_t i = 0; i < v.size(); ++i)
      Store(storage.back().data(), i, d, v[i]);
    return Addr(storage.back().data());
  };
  std::vector<ExpertDevicePtrs> table;
  std::vector<int64_t> hidden;
  int64_t max_hidden = 0;
  for (const HostExpert& e : experts) {
    // W2 as GpuExperts uploads it: rows HiddenStride(h) apart.
    table.push_back(
        {upload(e.w1), upload(e.b1), upload(e.mult_bias),
         upload(PadRows(e.w2, e.dim, e.hidden, HiddenStride(e.hidden))),
         upload(e.b2), e.hidden});
    hidden.push_back(e.hidden);
    max_hidden = std::max(max_hidden, e.hidden);
  }
  const WorkspaceLayout w =
      LayoutWorkspace({rows, dim, max_hidden, d, max_problems});
  std::vector<unsigned char> ws(w.total);
  const uint64_t base = Addr(ws.data());
  for (int64_t i = 0; i < rows * dim; ++i)
    Store(ws.data() + w.tokens, i, d, x[i]);
  std::vector<float> sentinel(static_cast<size_t>(rows * dim), -7.0f);
  std::memcpy(ws.data() + w.out, sentinel.data(), sentinel.size() * 4);
  const WorkspaceAddresses addr{base + w.tokens, base + w.u,   base + w.v,
                                base + w.z,      base + w.out, base + w.params};
  std::vector<unsigned char> params(ParamsBytes(max_problems));
  for (const Pass& pass : PlanPasses(segments, hidden, max_problems)) {
    const PassLaunch l =
        BuildPassLaunch(pass, table, addr, dim, d, params.data());
    std::memcpy(ws.data() + w.params, params.data(), params.size());
    const unsigned char* dev_params = ws.data() + w.params;
    if (small_rows) {
      HostSmallRows(l, dev_params, addr.params, dim, d);
      continue;
    }
    HostGroupedGemm(l.up, dev_params, addr.params, d);
    HostKernels(l, dev_params, addr.params, dim, d, false);
    HostGroupedGemm(l.down, dev_params, addr.params, d);
    HostKernels(l, dev_params, addr.params, dim, d, true);
  }
  std::vector<float> out(static_cast<size_t>(rows * dim));
  std::memcpy(out.data(), ws.data() + w.out, out.size() * 4);
  return out;
}

std::vector<float> RandomRows(int64_t rows, int64_t dim, std::mt19937& rng) {
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(rows * dim));
  for (float& v : x) v = n(rng);
  return x;
}

// Each segment through its expert, later ones winning; rows no segment
// covers are -7, as RunPlannedOnHost leaves them.
std::vector<float> ReferenceCall(const std::vector<HostExpert>& experts,
                                 const std::vector<float>& x,
                                 const std::vector<PlanSegment>& segs) {
  const int64_t dim = experts[0].dim;
  std::vector<float> want(x.size(), -7.0f);
  for (const PlanSegment& s : segs) {
    ReferenceForward(experts[s.expert], x.data() + s.offset * dim, s.count,
                     want.data() + s.offset * dim);
  }
  return want;
}

double RelRms(const std::vector<float>& got, const std::vector<float>& want) {
  double err2 = 0, ref2 = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    err2 += (got[i] - want[i]) * double(got[i] - want[i]);
    ref2 += want[i] * double(want[i]);
  }
  return std::sqrt(err2 / ref2);
}

TEST(PlannedPassTest, HostExecutionMatchesTheReferenceExpert) {
  std::mt19937 rng(5);
  // Hidden sizes differ (experts of different layers share a worker).
  const std::vector<HostExpert> experts = {RandomExpert(12, 7, rng),
                                           RandomExpert(12, 16, rng),
                                           RandomExpert(12, 7, rng)};
  const int64_t rows = 40;
  const std::vector<float> x = RandomRows(rows, 12, rng);
  // Uneven, one empty, one over rows an earlier one wrote (must win), rows
  // 38..39 covered by none (left as they were: -7).
  const std::vector<PlanSegment> segs = {{0, 0, 5},  {1, 5, 11},  {2, 16, 0},
                                         {2, 16, 9}, {0, 25, 13}, {1, 3, 6}};
  const std::vector<float> want = ReferenceCall(experts, x, segs);
  for (int64_t max_problems : {64, 2}) {
    const std::vector<float> got = RunPlannedOnHost(
        experts, x, rows, segs, common::DType::kFloat32, max_problems);
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_NEAR(got[i], want[i], 1e-5)
          << "element " << i << ", max_problems " << max_problems;
    }
  }
  // bfloat16 storage: the same plan with 2-byte elements.
  const std::vector<float> bf =
      RunPlannedOnHost(experts, x, rows, segs, common::DType::kBFloat16, 64);
  EXPECT_LT(RelRms(bf, want), 2e-2);
  EXPECT_EQ(bf.back(), -7.0f);
}

// The small-rows kernels' reading of a pass's launch (every problem of at
// most kMaxSmallRows rows; hidden sizes that are not multiples of 8, so
// rows of v and W2 have padding) gives the reference expert's outputs, as
// the GEMM path does.
TEST(PlannedPassTest, SmallRowsReadingOfTheLaunchMatchesTheReference) {
  std::mt19937 rng(9);
  const std::vector<HostExpert> experts = {RandomExpert(16, 7, rng),
                                           RandomExpert(16, 13, rng)};
  const int64_t rows = 20;
  const std::vector<float> x = RandomRows(rows, 16, rng);
  const std::vector<PlanSegment> segs = {{0, 0, 1},  {1, 1, 8},  {0, 9, 3},
                                         {1, 12, 0}, {1, 12, 6}, {0, 4, 2}};
  const std::vector<float> want = ReferenceCall(experts, x, segs);
  const std::vector<float> got = RunPlannedOnHost(
      experts, x, rows, segs, common::DType::kFloat32, 64, true);
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_NEAR(got[i], want[i], 1e-5) << "element " << i;
  }
  const std::vector<float> bf = RunPlannedOnHost(
      experts, x, rows, segs, common::DType::kBFloat16, 64, true);
  const std::vector<float> bf_gemm =
      RunPlannedOnHost(experts, x, rows, segs, common::DType::kBFloat16, 64);
  EXPECT_LT(RelRms(bf, bf_gemm), 1e-2);
  EXPECT_EQ(bf.back(), -7.0f);
}

}  // namespace
}  // namespace moe::experts::gpu
