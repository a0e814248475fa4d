// The balancer's placement plan (balancer/plan.h) on made-up loads: a skew
// spread out, room respected, lost and leaving workers' experts re-placed,
// a balanced placement left as it is.
#include "balancer/plan.h"

#include <gtest/gtest.h>

namespace moe::balancer {
namespace {

// One layer of 16 experts of dim 64 (hidden 170): 131,392 bytes each.
common::ModelSpec Spec(int64_t experts = 16) {
  common::ModelSpec spec;
  spec.name = "t";
  spec.dim = 64;
  common::LayerConfig c;
  c.dim = 64;
  c.num_experts = experts;
  spec.layers = {{"l0", c}};
  return spec;
}

std::vector<WorkerState> EvenWorkers(const common::ModelSpec& spec, int n,
                                     int64_t capacity) {
  std::vector<WorkerState> w(n);
  for (int i = 0; i < n; ++i) {
    w[i].address = "w" + std::to_string(i);
    w[i].live = true;
    w[i].hosted = *common::ExpertSet::Shard(i, n, spec);
    w[i].capacity_bytes = capacity;
  }
  return w;
}

std::vector<common::ExpertSet> Hosted(const std::vector<WorkerState>& w) {
  std::vector<common::ExpertSet> out;
  for (const WorkerState& s : w) out.push_back(s.hosted);
  return out;
}

// Experts 0-3 (worker 0's under the even split) carry most of the load.
ExpertLoad Skewed() {
  ExpertLoad load;
  for (int64_t e = 0; e < 16; ++e) load[{0, e}] = e < 4 ? 100 : 5;
  return load;
}

TEST(PlanTest, AHotWorkersExpertsAreSpreadWithinTheRoom) {
  const common::ModelSpec spec = Spec();
  const int64_t one = ExpertBytes(spec.layers[0]);
  EXPECT_EQ(one, 4 * (3 * 170 * 64 + 3 * 170 + 64));
  std::vector<WorkerState> w = EvenWorkers(spec, 4, 10 * one);
  const std::vector<bool> all(4, true);
  const double before = WorstImbalance(spec, Hosted(w), Skewed(), all);
  EXPECT_GT(before, 1.5);  // worker 0 has 400 of 460
  const Plan plan = MakePlan(spec, Skewed(), w);
  const double after = WorstImbalance(spec, plan.target, Skewed(), all);
  EXPECT_LE(after, 0.15) << before << " -> " << after;
  EXPECT_TRUE(plan.unplaced.empty());
  int copies = 0;
  for (const auto& [key, n] : CopyCounts(spec, plan.target)) {
    EXPECT_GE(n, 2) << "expert " << key.expert;
    copies += n;
    EXPECT_EQ(n, plan.replicas.at(key));
  }
  for (int i = 0; i < 4; ++i) {
    EXPECT_LE(plan.target[i].size(), 10) << "worker " << i << "'s room";
  }
  EXPECT_EQ(copies, 40);  // all the room
  // The hot experts got more copies than the cold ones.
  EXPECT_GT(plan.replicas.at({0, 0}), plan.replicas.at({0, 8}));
}

TEST(PlanTest, WithRoomForOneCopyEachExpertIsPlacedOnce) {
  const common::ModelSpec spec = Spec();
  const int64_t one = ExpertBytes(spec.layers[0]);
  std::vector<WorkerState> w = EvenWorkers(spec, 4, 4 * one);
  const Plan plan = MakePlan(spec, Skewed(), w);
  for (const auto& [key, n] : CopyCounts(spec, plan.target)) EXPECT_EQ(n, 1);
  // The four hot experts land on four workers.
  for (int i = 0; i < 4; ++i) {
    int hot = 0;
    for (int64_t e = 0; e < 4; ++e) hot += plan.target[i].Contains({0, e});
    EXPECT_EQ(hot, 1) << "worker " << i;
  }
}

TEST(PlanTest, ALostWorkersAndALeavingWorkersExpertsMove) {
  const common::ModelSpec spec = Spec();
  const int64_t one = ExpertBytes(spec.layers[0]);
  std::vector<WorkerState> w = EvenWorkers(spec, 4, 8 * one);
  w[1].live = false;  // lost
  w[1].hosted = common::ExpertSet();
  w[2].leaving = true;
  const Plan plan = MakePlan(spec, {}, w);
  EXPECT_TRUE(plan.target[1].empty());
  EXPECT_TRUE(plan.target[2].empty());
  EXPECT_TRUE(plan.unplaced.empty());
  common::ExpertSet covered;
  covered.Merge(plan.target[0]);
  covered.Merge(plan.target[3]);
  EXPECT_EQ(covered.size(), 16);
  // Two workers of 8 have room for each expert once; nothing is left over.
  EXPECT_EQ(plan.target[0].size() + plan.target[3].size(), 16);
  // A pool too small for the model says what it could not place.
  w[3].live = false;
  const Plan small = MakePlan(spec, {}, w);
  EXPECT_EQ(small.target[0].size(), 8);
  EXPECT_EQ(small.unplaced.size(), 8);
}

TEST(PlanTest, ABalancedPlacementStaysWhereItIs) {
  const common::ModelSpec spec = Spec();
  const int64_t one = ExpertBytes(spec.layers[0]);
  std::vector<WorkerState> w = EvenWorkers(spec, 4, 8 * one);
  // Uniform load (or none): the plan is the placement, plus second copies.
  for (const ExpertLoad& load : {ExpertLoad(), ExpertLoad{{{0, 3}, 1.0}}}) {
    ExpertLoad uniform = load;
    if (!uniform.empty()) {
      for (int64_t e = 0; e < 16; ++e) uniform[{0, e}] = 1;
    }
    const Plan plan = MakePlan(spec, uniform, w);
    for (int i = 0; i < 4; ++i) {
      for (const common::ExpertKey& key : w[i].hosted.keys()) {
        EXPECT_TRUE(plan.target[i].Contains(key))
            << "worker " << i << " lost expert " << key.expert;
      }
      EXPECT_EQ(plan.target[i].size(), 8);
    }
    // Applying the plan again changes nothing.
    std::vector<WorkerState> next = w;
    for (int i = 0; i < 4; ++i) next[i].hosted = plan.target[i];
    const Plan again = MakePlan(spec, uniform, next);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(again.target[i], plan.target[i]);
  }
}

TEST(PlanTest, ImbalanceIsEplbsRatio) {
  const common::ModelSpec spec = Spec(4);
  // Expert 0 on both workers (its 6 split 3 + 3), 1 on worker 0, 2 on 1.
  const std::vector<common::ExpertSet> placement = {
      common::ExpertSet({{0, 1}}), common::ExpertSet({{0, 2}})};
  const ExpertLoad load = {{{0, 0}, 6}, {{0, 1}, 3}, {{0, 2}, 1}};
  EXPECT_EQ(WorkerLoads(placement, load, 0), (std::vector<double>{6, 4}));
  EXPECT_DOUBLE_EQ(Imbalance(placement, load, 0, {true, true}), 0.2);
  EXPECT_DOUBLE_EQ(Imbalance(placement, load, 0, {true, false}), 0);
  EXPECT_DOUBLE_EQ(Imbalance(placement, {}, 0, {true, true}), 0);
}

}  // namespace
}  // namespace moe::balancer
