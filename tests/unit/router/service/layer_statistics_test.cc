#include "router/service/layer_statistics.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <thread>
#include <vector>

namespace moe::router {
namespace {

LayerStatistics::Outcome Answered(int64_t batch, int64_t ms) {
  LayerStatistics::Outcome o;
  o.ok = true;
  o.batch_size = batch;
  o.total = absl::Milliseconds(10 * ms);
  o.end = absl::FromUnixMillis(1'700'000'000'000 + ms);
  o.queue = absl::Milliseconds(ms);
  o.input = absl::Milliseconds(2 * ms);
  o.infer = absl::Milliseconds(3 * ms);
  o.output = absl::Milliseconds(4 * ms);
  return o;
}

TEST(LayerStatisticsTest, SumsAnsweredAndFailedCallsPerLayer) {
  LayerStatistics statistics(2);
  statistics.Record(1, Answered(2, 1));
  statistics.Record(1, Answered(3, 2));
  LayerStatistics::Outcome failed;
  failed.batch_size = 5;
  failed.total = absl::Microseconds(7);
  statistics.Record(1, failed);

  inference::ModelStatistics s;
  statistics.Fill(1, &s);
  EXPECT_EQ(s.inference_count(), 5u);
  EXPECT_EQ(s.execution_count(), 2u);
  EXPECT_EQ(s.last_inference(), 1'700'000'000'002u);
  const inference::InferStatistics& i = s.inference_stats();
  EXPECT_EQ(i.success().count(), 2u);
  EXPECT_EQ(i.success().ns(), 30'000'000u);
  EXPECT_EQ(i.fail().count(), 1u);
  EXPECT_EQ(i.fail().ns(), 7'000u);
  EXPECT_EQ(i.queue().ns(), 3'000'000u);
  EXPECT_EQ(i.compute_input().ns(), 6'000'000u);
  EXPECT_EQ(i.compute_infer().ns(), 9'000'000u);
  EXPECT_EQ(i.compute_output().ns(), 12'000'000u);
  EXPECT_EQ(i.compute_output().count(), 2u);
  ASSERT_EQ(s.batch_stats_size(), 2);  // by size, ascending
  EXPECT_EQ(s.batch_stats(0).batch_size(), 2u);
  EXPECT_EQ(s.batch_stats(0).compute_infer().ns(), 3'000'000u);
  EXPECT_EQ(s.batch_stats(1).batch_size(), 3u);
  EXPECT_EQ(s.batch_stats(1).compute_infer().ns(), 6'000'000u);

  inference::ModelStatistics untouched;
  statistics.Fill(0, &untouched);
  EXPECT_EQ(untouched.inference_stats().success().count(), 0u);
  EXPECT_EQ(untouched.batch_stats_size(), 0);
  // A layer out of range is nobody's.
  statistics.Record(2, Answered(1, 1));
  statistics.Record(-1, Answered(1, 1));
  inference::ModelStatistics none;
  statistics.Fill(2, &none);
  EXPECT_EQ(none.ByteSizeLong(), 0u);
}

// Clients choose the batch size: the sizes listed one by one are bounded,
// and the calls past the bound are still counted in the totals.
TEST(LayerStatisticsTest, ListsAtMostKMaxBatchSizesSizes) {
  LayerStatistics statistics(1);
  const int sizes = LayerStatistics::kMaxBatchSizes + 10;
  for (int b = 1; b <= sizes; ++b) statistics.Record(0, Answered(b, 1));
  statistics.Record(0, Answered(1, 1));  // a size listed: listed again
  inference::ModelStatistics s;
  statistics.Fill(0, &s);
  ASSERT_EQ(s.batch_stats_size(), LayerStatistics::kMaxBatchSizes);
  EXPECT_EQ(s.batch_stats(0).compute_infer().count(), 2u);
  EXPECT_EQ(s.batch_stats(LayerStatistics::kMaxBatchSizes - 1).batch_size(),
            static_cast<uint64_t>(LayerStatistics::kMaxBatchSizes));
  EXPECT_EQ(s.execution_count(), static_cast<uint64_t>(sizes + 1));
}

// Forward threads record while the edges read.
TEST(LayerStatisticsTest, RecordsFromManyThreadsWhileRead) {
  LayerStatistics statistics(1);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&statistics, t] {
      for (int i = 0; i < 1000; ++i) statistics.Record(0, Answered(1 + t, 1));
    });
  }
  for (int i = 0; i < 100; ++i) {
    inference::ModelStatistics s;
    statistics.Fill(0, &s);
    EXPECT_LE(s.execution_count(), 4000u);
  }
  for (std::thread& t : threads) t.join();
  inference::ModelStatistics s;
  statistics.Fill(0, &s);
  EXPECT_EQ(s.execution_count(), 4000u);
  EXPECT_EQ(s.inference_count(), 10'000u);  // 1000 x (1 + 2 + 3 + 4)
  EXPECT_EQ(s.batch_stats_size(), 4);
}

}  // namespace
}  // namespace moe::router
