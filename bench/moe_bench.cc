// Google Benchmark micro-benchmarks of the numerics, and the in-process
// forward on the README configuration of st-moe-pytorch next to the dense
// GEMM rate of this machine at the expert shapes.
//
//   build/bin/moe-bench                       everything
//   build/bin/moe-bench --benchmark_filter=Gemm
//
// Counters: tokens_per_s, gflops (dense GEMM or useful expert FLOPs:
// 2 x kept assignments x 3 x dim x hidden).
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <benchmark/benchmark.h>
#include <c10/core/InferenceMode.h>

#include <charconv>
#include <chrono>
#include <map>
#include <memory>
#include <random>
#include <vector>

#include "common/allocator.h"
#include "common/blas_kernels.h"
#include "common/torch/demo_model.h"
#include "experts/cpu_expert_shard.h"
#include "experts/geglu.h"
#include "router/api/open_inference_json.h"
#include "router/combine.h"
#include "router/dispatch_plan.h"
#include "router/engine/layer_engine.h"
#include "router/service/layer_statistics.h"
#include "router/top2_gating.h"

namespace moe {
namespace {

constexpr int64_t kDim = 512;
constexpr int64_t kExperts = 16;
constexpr int64_t kBatch = 4;
constexpr int64_t kSeq = 1024;

// One expert's two GEMMs on `tokens` rows: [T, d] x [d, 2h], [T, h] x [h, d].
void BM_ExpertGemm(benchmark::State& state) {
  c10::InferenceMode guard;
  const int64_t tokens = state.range(0);
  const int64_t h = common::DefaultDemoConfig().expert_hidden();
  at::Tensor x = at::randn({tokens, kDim});
  at::Tensor w1 = at::randn({2 * h, kDim});
  at::Tensor w2 = at::randn({kDim, h});
  at::Tensor u = at::empty({tokens, 2 * h});
  at::Tensor v = at::randn({tokens, h});
  at::Tensor y = at::empty({tokens, kDim});
  for (auto _ : state) {
    at::mm_out(u, x, w1.t());
    at::mm_out(y, v, w2.t());
  }
  const double flops = 2.0 * tokens * kDim * (2 * h) + 2.0 * tokens * h * kDim;
  state.counters["gflops"] = benchmark::Counter(
      flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_ExpertGemm)->Arg(128)->Arg(512)->Unit(benchmark::kMillisecond);

void BM_ExpertGeglu(benchmark::State& state) {
  c10::InferenceMode guard;
  const int64_t tokens = state.range(0), dim = state.range(1);
  common::LayerConfig config = common::DefaultDemoConfig();
  config.dim = dim;
  auto model = common::BuildDemoLayer(config, 0);
  const common::ExpertWeights& w = model->experts.at(0);
  at::Tensor x = at::randn({tokens, dim});
  at::Tensor out = at::empty({tokens, dim});
  at::Tensor hidden;
  for (auto _ : state) experts::GegluForwardInto(w, x, hidden, out);
  const double flops = 6.0 * tokens * dim * w.mult_bias.size(0);
  state.counters["gflops"] = benchmark::Counter(
      flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}
// (tokens, dim): the README expert, and a tiny one (the golden models').
BENCHMARK(BM_ExpertGeglu)
    ->Args({512, 512})
    ->Args({4, 512})
    ->Args({8, 16})
    ->Unit(benchmark::kMicrosecond);

// The README configuration's 16 experts (134 MB of float32 weights, past
// the last-level cache) each run on `rows` rows, through the skinny kernel
// (path 1) or LibTorch's GEMMs (path 0): the per-expert time and the rate
// at which the weights stream (weight bytes / time). A 1 x 32 request sends
// about 4 rows to each expert.
void BM_ExpertStream(benchmark::State& state) {
  c10::InferenceMode guard;
  const int64_t rows = state.range(0);
  const auto path = state.range(1) == 1 ? experts::GegluPath::kSkinny
                                        : experts::GegluPath::kGemm;
  auto model = common::BuildDemoLayer(common::DefaultDemoConfig(), 0);
  at::Tensor x = at::randn({rows, kDim});
  at::Tensor out = at::empty({rows, kDim});
  at::Tensor hidden;
  int64_t bytes = 0;
  for (const auto& [id, w] : model->experts) {
    for (const at::Tensor* t : {&w.w1, &w.b1, &w.mult_bias, &w.w2, &w.b2}) {
      bytes += static_cast<int64_t>(t->nbytes());
    }
  }
  for (auto _ : state) {
    for (const auto& [id, w] : model->experts) {
      experts::GegluForwardInto(w, x, hidden, out, path);
    }
  }
  state.counters["expert_seconds"] =
      benchmark::Counter(static_cast<double>(model->experts.size()),
                         benchmark::Counter::kIsIterationInvariantRate |
                             benchmark::Counter::kInvert);
  state.counters["weight_gbps"] = benchmark::Counter(
      bytes * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_ExpertStream)
    ->ArgsProduct({{1, 2, 4, 8, 16, 24, 28, 32, 64, 128, 512, 2048}, {0, 1}})
    ->UseRealTime()
    ->Unit(benchmark::kMicrosecond);

// One core reading memory: the sum of a 256 MB buffer (past every cache),
// the rate the weight-streaming bound of a small request divides by. With
// two threads each reads its own buffer at the same time (the rate shown is
// per thread): what each of two workers streaming at once gets.
void BM_MemoryRead(benchmark::State& state) {
  const size_t n = size_t{256} << 20 >> 3;
  std::vector<uint64_t> buffer(n);
  for (size_t i = 0; i < n; ++i) buffer[i] = i;
  // This thread's own wall time (the library's rates mix the threads').
  const auto start = std::chrono::steady_clock::now();
  for (auto _ : state) {
    uint64_t sum = 0;
    for (size_t i = 0; i < n; ++i) sum += buffer[i];
    benchmark::DoNotOptimize(sum);
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  state.counters["gbps"] = benchmark::Counter(
      static_cast<double>(state.iterations()) * n * 8 * 1e-9 / seconds,
      benchmark::Counter::kAvgThreads);
}
BENCHMARK(BM_MemoryRead)
    ->Threads(1)
    ->Threads(2)
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond)
    ->MinTime(1.0);

std::vector<float> RandomProbs(int64_t tokens, int64_t experts) {
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  std::vector<float> p(tokens * experts);
  for (int64_t t = 0; t < tokens; ++t) {
    float sum = 0;
    for (int64_t e = 0; e < experts; ++e)
      sum += p[t * experts + e] = std::exp(normal(rng));
    for (int64_t e = 0; e < experts; ++e) p[t * experts + e] /= sum;
  }
  return p;
}

void BM_Top2Gating(benchmark::State& state) {
  const std::vector<float> probs = RandomProbs(kBatch * kSeq, kExperts);
  std::vector<float> uniforms(kBatch * kSeq, 0.5f);
  router::GateParams params;
  params.num_experts = kExperts;
  for (auto _ : state) {
    auto r = router::RouteTop2(probs, kBatch, kSeq, params, {}, uniforms);
    benchmark::DoNotOptimize(r);
  }
  state.counters["tokens_per_s"] = benchmark::Counter(
      kBatch * kSeq, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_Top2Gating)->Unit(benchmark::kMicrosecond);

void BM_PlanGatherScatter(benchmark::State& state) {
  c10::InferenceMode guard;
  const std::vector<float> probs = RandomProbs(kBatch * kSeq, kExperts);
  std::vector<float> uniforms(kBatch * kSeq, 0.5f);
  router::GateParams params;
  params.num_experts = kExperts;
  auto r = router::RouteTop2(probs, kBatch, kSeq, params, {}, uniforms);
  at::Tensor h = at::randn({kBatch * kSeq, kDim});
  // Argument 1: y uninitialised, the combine's first write to a row sets
  // it and the rows nobody wrote are zeroed after (the engine's way);
  // 0: y zeroed first.
  const bool lazy = state.range(0) == 1;
  for (auto _ : state) {
    router::DispatchPlan plan = router::BuildDispatchPlan(*r, 0);
    at::Tensor rows = at::from_blob(plan.row.data(), {plan.size()}, at::kLong);
    at::Tensor gathered = h.index_select(0, rows);
    at::Tensor y = lazy ? at::empty_like(h) : at::zeros_like(h);
    std::vector<uint8_t> written(lazy ? h.size(0) : 0, 0);
    router::CombineRows(gathered.data_ptr<float>(), plan.size(),
                        plan.row.data(), plan.weight.data(), kDim,
                        y.data_ptr<float>(), lazy ? written.data() : nullptr);
    for (size_t t = 0; t < written.size(); ++t) {
      if (written[t] == 0)
        std::fill_n(y.data_ptr<float>() + t * kDim, kDim, 0.0f);
    }
    benchmark::DoNotOptimize(y.data_ptr());
  }
}
BENCHMARK(BM_PlanGatherScatter)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond);

// The in-process engine on x [B, n, 512] (README configuration: 4 x 1024),
// eval, random policy; the third argument 1 computes the experts in
// bfloat16 (and reports its error against float32 on the same input).
void BM_EngineForward(benchmark::State& state) {
  const int64_t batch = state.range(0), seq = state.range(1);
  const bool bf16 = state.range(2) == 1;
  const common::LayerConfig config = common::DefaultDemoConfig();
  auto model = common::BuildDemoLayer(config, 0);
  std::map<common::ExpertKey, common::ExpertWeights> weights;
  for (auto& [id, w] : model->experts) weights[{0, id}] = w;
  experts::CpuShardOptions compute;
  if (bf16) compute.compute = common::DType::kBFloat16;
  auto shard = experts::CpuExpertShard::Create(weights, compute);
  router::LocalExpertBackend backend(shard->get());
  auto engine = router::LayerEngine::Create(0, common::LayerSpec{"", config},
                                            model->router);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(1);
  at::Tensor x = at::randn({batch, seq, kDim}, gen);
  router::RoutingOptions options;
  options.seed = 1;
  if (bf16) {
    auto exact_shard = experts::CpuExpertShard::Create(std::move(weights));
    router::LocalExpertBackend exact(exact_shard->get());
    auto want = (*engine)->Forward(x, options, exact);
    auto got = (*engine)->Forward(x, options, backend);
    if (!want.ok() || !got.ok()) {
      state.SkipWithError("forward failed");
      return;
    }
    const at::Tensor diff = (got->y - want->y).to(at::kDouble);
    state.counters["max_abs_err"] = diff.abs().max().item<double>();
    state.counters["rel_rms_err"] =
        diff.pow(2).mean().sqrt().item<double>() /
        want->y.to(at::kDouble).pow(2).mean().sqrt().item<double>();
  }
  int64_t kept = 0;
  router::ForwardTimings sum;
  for (auto _ : state) {
    auto r = (*engine)->Forward(x, options, backend);
    if (!r.ok()) {
      state.SkipWithError(std::string(r.status().message()).c_str());
      return;
    }
    kept = r->plan.size();
    sum.pre += r->timings.pre;
    sum.gate += r->timings.gate;
    sum.plan += r->timings.plan;
    sum.experts += r->timings.experts;
    sum.combine += r->timings.combine;
  }
  // Mean stage times in ms.
  const double n = static_cast<double>(state.iterations());
  state.counters["pre_ms"] = absl::ToDoubleMilliseconds(sum.pre) / n;
  state.counters["gate_ms"] = absl::ToDoubleMilliseconds(sum.gate) / n;
  state.counters["plan_ms"] = absl::ToDoubleMilliseconds(sum.plan) / n;
  state.counters["experts_ms"] = absl::ToDoubleMilliseconds(sum.experts) / n;
  state.counters["combine_ms"] = absl::ToDoubleMilliseconds(sum.combine) / n;
  const double useful = 2.0 * kept * 3.0 * kDim * config.expert_hidden();
  state.counters["tokens_per_s"] = benchmark::Counter(
      batch * seq, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["gflops"] = benchmark::Counter(
      useful * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["kept_assignments"] = kept;
}
BENCHMARK(BM_EngineForward)
    ->Args({4, 1024, 0})
    ->Args({1, 32, 0})
    ->Args({4, 1024, 1})
    ->Args({1, 32, 1})
    ->Unit(benchmark::kMillisecond)
    ->MinTime(3.0);

// The REST edge's JSON codec on one layer's x / y of [1, tokens, 512]
// (the README configuration): the body a Python client sends (each
// float32 as Python's json.dumps writes the double it widens to) read
// into a ModelInferRequest, and the answer's y written as JSON numbers.
std::string RestJsonBody(int64_t tokens) {
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  std::string body =
      "{\"parameters\": {\"seed\": 1}, \"inputs\": [{\"name\": \"x\", "
      "\"shape\": [1, " +
      std::to_string(tokens) + ", 512], \"datatype\": \"FP32\", \"data\": [";
  char number[32];
  for (int64_t i = 0; i < tokens * kDim; ++i) {
    if (i > 0) body += ", ";
    const double v = normal(rng);
    body.append(number, std::to_chars(number, number + sizeof(number), v).ptr);
  }
  body += "]}], \"outputs\": [{\"name\": \"y\"}]}";
  return body;
}

void BM_RestJsonRequest(benchmark::State& state) {
  const std::string body = RestJsonBody(state.range(0));
  for (auto _ : state) {
    auto r = router::ModelInferFromJson(body, "", "layers.0.ff", "");
    if (!r.ok()) {
      state.SkipWithError(std::string(r.status().message()).c_str());
      return;
    }
    benchmark::DoNotOptimize(r->request.raw_input_contents_size());
  }
  state.counters["body_mb_per_s"] = benchmark::Counter(
      body.size() * 1e-6, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_RestJsonRequest)->Arg(32)->Arg(256)->Unit(benchmark::kMillisecond);

void BM_RestJsonAnswer(benchmark::State& state) {
  const int64_t n = state.range(0) * kDim;
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  std::vector<float> y(n);
  for (float& v : y) v = normal(rng);
  inference::ModelInferResponse response;
  response.set_model_name("layers.0.ff");
  auto* out = response.add_outputs();
  out->set_name("y");
  out->set_datatype("FP32");
  for (int64_t d : {int64_t{1}, state.range(0), kDim}) out->add_shape(d);
  response.add_raw_output_contents(
      std::string(reinterpret_cast<const char*>(y.data()), n * sizeof(float)));
  size_t bytes = 0;
  for (auto _ : state) {
    router::RestInferAnswer a = router::ModelInferToJson(response);
    bytes = a.body.size();
    benchmark::DoNotOptimize(a.body.data());
  }
  state.counters["body_mb_per_s"] = benchmark::Counter(
      bytes * 1e-6, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["body_bytes"] = static_cast<double>(bytes);
}
BENCHMARK(BM_RestJsonAnswer)->Arg(32)->Arg(256)->Unit(benchmark::kMillisecond);

// What the statistics extension adds to each answered call: one Record
// of a layer (its mutex, the sums, the batch size's entry), alone and with
// a second thread recording the same layer (two forward threads answering
// one layer's calls), and one statistics request of 4 layers filled.
void BM_LayerStatisticsRecord(benchmark::State& state) {
  // Made by the first thread before the loop, whose start is a barrier.
  static std::unique_ptr<router::LayerStatistics> statistics;
  if (state.thread_index() == 0) {
    statistics = std::make_unique<router::LayerStatistics>(4);
  }
  router::LayerStatistics::Outcome outcome;
  outcome.ok = true;
  outcome.total = absl::Microseconds(800);
  outcome.queue = absl::Microseconds(20);
  outcome.input = absl::Microseconds(100);
  outcome.infer = absl::Microseconds(600);
  outcome.output = absl::Microseconds(80);
  int64_t i = 0;
  for (auto _ : state) {
    outcome.batch_size = 1 + (i++ & 7);
    outcome.end = absl::Now();
    statistics->Record(0, outcome);
  }
  if (state.thread_index() == 0) {
    inference::ModelStatistics stats;
    statistics->Fill(0, &stats);
    benchmark::DoNotOptimize(stats.execution_count());
  }
}
BENCHMARK(BM_LayerStatisticsRecord)->Threads(1)->Threads(2)->UseRealTime();

void BM_LayerStatisticsFill(benchmark::State& state) {
  router::LayerStatistics statistics(4);
  router::LayerStatistics::Outcome outcome;
  outcome.ok = true;
  for (int layer = 0; layer < 4; ++layer) {
    for (int64_t b = 1; b <= 8; ++b) {
      outcome.batch_size = b;
      statistics.Record(layer, outcome);
    }
  }
  for (auto _ : state) {
    inference::ModelStatisticsResponse response;
    for (int layer = 0; layer < 4; ++layer) {
      statistics.Fill(layer, response.add_model_stats());
    }
    benchmark::DoNotOptimize(response.model_stats_size());
  }
}
BENCHMARK(BM_LayerStatisticsFill)->Unit(benchmark::kMicrosecond);

}  // namespace
}  // namespace moe

int main(int argc, char** argv) {
  moe::common::UseOpenBlasKernelsForThisCpu(argv);
  moe::common::TuneAllocatorForReuse();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
