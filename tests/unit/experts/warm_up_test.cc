#include "experts/warm_up.h"

#include <gtest/gtest.h>

#include <vector>

namespace moe::experts {
namespace {

// Records the calls it gets; fails them when told to.
class RecordingShard final : public ExpertShard {
 public:
  explicit RecordingShard(std::vector<common::ExpertKey> keys)
      : keys_(std::move(keys)) {}
  bool Hosts(common::ExpertKey key) const override {
    for (const auto& k : keys_) {
      if (k == key) return true;
    }
    return false;
  }
  common::ExpertSet experts() const override {
    common::ExpertSet out;
    for (const auto& k : keys_) out.Add(k);
    return out;
  }
  int64_t dim() const override { return 3; }
  int64_t weight_bytes() const override { return 0; }
  Device device() const override { return Device::Cpu(); }
  common::DType compute_dtype() const override {
    return common::DType::kFloat32;
  }

  mutable std::vector<std::vector<common::ExpertSegment>> calls;
  absl::Status fail;

 protected:
  absl::Status RunChecked(const TokenRows& tokens,
                          absl::Span<const common::ExpertSegment> segments,
                          float* out, RunStats*) const override {
    calls.emplace_back(segments.begin(), segments.end());
    for (int64_t i = 0; i < tokens.rows * dim(); ++i) out[i] = 1;
    return fail;
  }

 private:
  std::vector<common::ExpertKey> keys_;
};

TEST(WarmUpTest, RunsTheFirstLayersExpertsOnFewRowsThenMany) {
  RecordingShard shard({{0, 1}, {0, 4}, {0, 6}, {1, 0}});
  auto r = WarmUpShard(shard, 131072);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->calls, 2);
  EXPECT_EQ(r->rows, 3 * kWarmUpSmallRows + 3 * kWarmUpLargeRows);
  ASSERT_EQ(shard.calls.size(), 2u);
  for (int c = 0; c < 2; ++c) {
    const int64_t per = c == 0 ? kWarmUpSmallRows : kWarmUpLargeRows;
    ASSERT_EQ(shard.calls[c].size(), 3u);  // layer 1's expert is left out
    for (int64_t e = 0; e < 3; ++e) {
      EXPECT_EQ(shard.calls[c][e].key,
                (common::ExpertKey{0, std::vector<int64_t>{1, 4, 6}[e]}));
      EXPECT_EQ(shard.calls[c][e].offset, e * per);
      EXPECT_EQ(shard.calls[c][e].count, per);
    }
  }
}

TEST(WarmUpTest, StaysWithinMaxRows) {
  RecordingShard shard({{0, 0}, {0, 1}, {0, 2}});
  auto r = WarmUpShard(shard, 2);  // fewer rows than experts
  ASSERT_TRUE(r.ok()) << r.status();
  for (const auto& call : shard.calls) {
    int64_t rows = 0;
    for (const auto& s : call) rows += s.count;
    EXPECT_LE(rows, 2);
    EXPECT_GE(rows, 1);
  }
}

TEST(WarmUpTest, TheShardsErrorIsReturned) {
  RecordingShard shard({{0, 0}});
  shard.fail = absl::InternalError("device lost");
  auto r = WarmUpShard(shard, 100);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "device lost");
}

}  // namespace
}  // namespace moe::experts
