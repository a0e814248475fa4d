// moe-gpu-check: the GPU backend against the plain C++ reference of the
// expert, then its throughput, on one CUDA device. Needs only the CUDA
// runtime and cuBLAS (no LibTorch, gRPC or abseil), so that it runs, or
// builds from experts/cuda/ with CMake and nvcc alone, on a GPU machine
// that has nothing else installed (tests/gpu/device_check.sh).
//
//   moe-gpu-check [--out DIR] [--device N] [--quick] [--no_throughput]
//                 [GOLDEN.safetensors...]
//   moe-gpu-check --probe    (exit 0 and the device's name when one is seen)
//
// Exit status: 0 when every parity check passed, 1 when one failed, 2 when
// no CUDA device is visible or the backend could not start.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "common/float_bits.h"
#include "experts/cuda/gpu_experts.h"
#include "experts/cuda/safetensors_experts.h"

namespace moe::experts::gpu {
namespace {

struct Args {
  std::string out_dir;
  int device = 0;
  bool quick = false;
  bool probe = false;
  bool throughput = true;
  int64_t profile_tokens = 0;  // --profile N
  std::vector<std::string> golden;
};

const char kUsage[] =
    "usage: moe-gpu-check [--out DIR] [--device N] [--quick] [--no_throughput] "
    "[GOLDEN.safetensors...]\n"
    "  Checks the CUDA expert backend against the plain C++ reference of the\n"
    "  GEGLU expert (float32: max abs error <= 1e-5, TF32 off; bfloat16:\n"
    "  relative RMS <= 1e-2) on every expert of the given golden files and\n"
    "  on random shapes, then prints its throughput for the README\n"
    "  configuration (dim 512, 16 experts, hidden 1365) at 32 to 65,536\n"
    "  tokens per call on each path (small-rows kernels, grouped GEMM, one\n"
    "  GEMM per expert), as shares of the bf16 matrix rate and of the copy\n"
    "  bandwidth it measures. --out DIR also writes gpu_check.txt and\n"
    "  gpu_check.json there. Exit 0: all checks passed; 1: a check failed;\n"
    "  2: no CUDA device, or the backend could not start.\n"
    "  --probe only says whether (and which) device is visible: exit 0 or 2.\n"
    "  --profile N runs only a few calls of N tokens of the README\n"
    "  configuration in bfloat16, on the small-rows kernels (N <= 128) and\n"
    "  the grouped GEMM: a short program for a profiler (ncu) to watch.\n";

bool ParseArgs(int argc, char** argv, Args* a) {
  for (int i = 1; i < argc; ++i) {
    const std::string s = argv[i];
    if (s == "--help" || s == "-h") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    } else if (s == "--out" && i + 1 < argc) {
      a->out_dir = argv[++i];
    } else if (s == "--device" && i + 1 < argc) {
      a->device = std::atoi(argv[++i]);
    } else if (s == "--quick") {
      a->quick = true;
    } else if (s == "--probe") {
      a->probe = true;
    } else if (s == "--no_throughput") {
      a->throughput = false;
    } else if (s == "--profile" && i + 1 < argc) {
      a->profile_tokens = std::atoll(argv[++i]);
      if (a->profile_tokens < 1 || a->profile_tokens > 65536) {
        std::fprintf(stderr,
                     "moe-gpu-check: --profile takes 1 to 65536 "
                     "tokens, not %s\n",
                     argv[i]);
        return false;
      }
    } else if (!s.empty() && s[0] == '-') {
      std::fprintf(stderr, "moe-gpu-check: unknown option %s\n%s", s.c_str(),
                   kUsage);
      return false;
    } else {
      a->golden.push_back(s);
    }
  }
  return true;
}

// Everything printed goes to stdout and, with --out, to gpu_check.txt.
class Report {
 public:
  void Line(const std::string& s) {
    std::printf("%s\n", s.c_str());
    std::fflush(stdout);
    text_ += s + "\n";
  }
  void Json(const std::string& entry) { json_.push_back(entry); }
  void Write(const std::string& dir) const {
    if (dir.empty()) return;
    std::ofstream(dir + "/gpu_check.txt") << text_;
    std::ofstream json(dir + "/gpu_check.json");
    json << "[\n";
    for (size_t i = 0; i < json_.size(); ++i) {
      json << "  " << json_[i] << (i + 1 < json_.size() ? ",\n" : "\n");
    }
    json << "]\n";
  }

 private:
  std::string text_;
  std::vector<std::string> json_;
};

std::string Format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string Format(const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  return buf;
}

HostExpert RandomExpert(int64_t dim, int64_t hidden, std::mt19937& rng) {
  HostExpert e;
  e.dim = dim;
  e.hidden = hidden;
  // nn.Linear's default initialisation scale, so activations stay O(1).
  std::uniform_real_distribution<float> in(-1.0f / std::sqrt(float(dim)),
                                           1.0f / std::sqrt(float(dim)));
  std::uniform_real_distribution<float> hid(-1.0f / std::sqrt(float(hidden)),
                                            1.0f / std::sqrt(float(hidden)));
  for (int64_t i = 0; i < 2 * hidden * dim; ++i) e.w1.push_back(in(rng));
  for (int64_t i = 0; i < 2 * hidden; ++i) e.b1.push_back(in(rng));
  e.mult_bias.assign(static_cast<size_t>(hidden), 1.0f);
  for (int64_t i = 0; i < hidden; ++i) e.mult_bias[i] += 0.1f * in(rng);
  for (int64_t i = 0; i < dim * hidden; ++i) e.w2.push_back(hid(rng));
  for (int64_t i = 0; i < dim; ++i) e.b2.push_back(hid(rng));
  return e;
}

std::vector<float> RandomRows(int64_t rows, int64_t dim, std::mt19937& rng) {
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(rows * dim));
  for (float& v : x) v = n(rng);
  return x;
}

// Segments over `rows` rows: expert i % E, uneven counts of at most
// max_count, some empty.
std::vector<PlanSegment> Segments(int64_t rows, int experts, int max_count,
                                  std::mt19937& rng) {
  std::vector<PlanSegment> segs;
  int64_t at = 0;
  for (int i = 0; at < rows; ++i) {
    const int64_t count =
        std::min<int64_t>(rows - at, (i % 5 == 3) ? 0 : 1 + rng() % max_count);
    segs.push_back({static_cast<int32_t>(i % experts), at, count});
    at += count;
  }
  return segs;
}

struct Errors {
  double max_abs = 0;
  double rel_rms = 0;
};

Errors Compare(const std::vector<float>& got, const std::vector<float>& want) {
  double err2 = 0, ref2 = 0;
  Errors e;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = std::fabs(double(got[i]) - want[i]);
    e.max_abs = std::max(e.max_abs, std::isnan(d) ? INFINITY : d);
    err2 += d * d;
    ref2 += double(want[i]) * want[i];
  }
  e.rel_rms = ref2 > 0 ? std::sqrt(err2 / ref2) : std::sqrt(err2);
  return e;
}

// The reference of a call: each segment through its expert, later segments
// winning where they overlap.
std::vector<float> ReferenceCall(const std::vector<HostExpert>& experts,
                                 const std::vector<float>& x, int64_t dim,
                                 const std::vector<PlanSegment>& segs) {
  std::vector<float> y(x.size(), 0.0f);
  for (const PlanSegment& s : segs) {
    ReferenceForward(experts[s.expert], x.data() + s.offset * dim, s.count,
                     y.data() + s.offset * dim);
  }
  return y;
}

std::vector<uint16_t> ToBFloat16(const std::vector<float>& x,
                                 std::vector<float>* rounded) {
  std::vector<uint16_t> b(x.size());
  rounded->resize(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    b[i] = common::FloatToBFloat16(x[i]);
    (*rounded)[i] = common::BFloat16ToFloat(b[i]);
  }
  return b;
}

// Segments of at most this many rows: passes that take the small-rows path
// (GpuOptions::small_rows) where the dim allows it.
constexpr int kDecodeSegments = kMaxSmallRows;

// One parity case: `experts` on the GPU in `compute`, tokens sent as
// `tokens` dtype, against the reference, segments of at most max_count
// rows. Returns false on failure.
bool ParityCase(const std::string& name, const std::vector<HostExpert>& experts,
                int64_t rows, common::DType compute, common::DType tokens,
                const GpuOptions& base, std::mt19937& rng, Report* report,
                bool overlap = false, int max_count = 23) {
  GpuOptions options = base;
  options.compute = compute;
  options.max_rows = std::max<int64_t>(rows, 1);
  std::unique_ptr<GpuExperts> gpu;
  Status st = GpuExperts::Create(experts, options, &gpu);
  if (!st.ok()) {
    report->Line("  FAIL " + name + ": " + st.message());
    return false;
  }
  const int64_t dim = experts[0].dim;
  std::vector<float> x = RandomRows(rows, dim, rng);
  std::vector<PlanSegment> segs =
      Segments(rows, static_cast<int>(experts.size()), max_count, rng);
  if (overlap && rows > 4) {
    // A later segment over rows an earlier one wrote: it must win.
    segs.push_back({static_cast<int32_t>(experts.size() - 1), 1, rows / 2});
  }
  std::vector<float> sent = x;
  std::vector<uint16_t> half;
  const void* data = x.data();
  if (tokens == common::DType::kBFloat16) {
    half = ToBFloat16(x, &sent);
    data = half.data();
  }
  std::vector<float> got(x.size(), 0.0f);
  CallTiming timing;
  st = gpu->Run(tokens, data, rows, segs, got.data(), &timing);
  if (!st.ok()) {
    report->Line("  FAIL " + name + ": " + st.message());
    return false;
  }
  const Errors e = Compare(got, ReferenceCall(experts, sent, dim, segs));
  const bool ok = compute == common::DType::kFloat32 ? e.max_abs <= 1e-5
                                                     : e.rel_rms <= 1e-2;
  report->Line(
      Format("  %s %-52s %-8s tokens %-8s rows %6lld passes %d  "
             "max abs %.3g  rel RMS %.3g",
             ok ? "ok  " : "FAIL", name.c_str(), common::DTypeName(compute),
             common::DTypeName(tokens), static_cast<long long>(rows),
             timing.passes, e.max_abs, e.rel_rms));
  report->Json(
      Format("{\"check\": \"parity\", \"case\": \"%s\", \"compute\": "
             "\"%s\", \"tokens\": \"%s\", \"rows\": %lld, "
             "\"max_abs_err\": %.6g, \"rel_rms_err\": %.6g, "
             "\"ok\": %s}",
             name.c_str(), common::DTypeName(compute),
             common::DTypeName(tokens), static_cast<long long>(rows), e.max_abs,
             e.rel_rms, ok ? "true" : "false"));
  return ok;
}

bool Parity(const Args& args, const GpuOptions& base, Report* report) {
  std::mt19937 rng(20261202);
  bool ok = true;
  report->Line("parity: GPU backend vs the plain C++ reference");
  for (const std::string& path : args.golden) {
    std::vector<NamedExpert> named;
    const Status st = ReadSafetensorsExperts(path, &named);
    if (!st.ok() || named.empty()) {
      report->Line("  FAIL " + path + ": " +
                   (st.ok() ? "no experts in the file" : st.message()));
      ok = false;
      continue;
    }
    std::vector<HostExpert> experts;
    for (NamedExpert& n : named) experts.push_back(std::move(n.expert));
    const std::string base_name = path.substr(path.find_last_of('/') + 1) +
                                  " (" + std::to_string(experts.size()) +
                                  " experts)";
    for (common::DType compute :
         {common::DType::kFloat32, common::DType::kBFloat16}) {
      ok &= ParityCase(base_name, experts, 48, compute, common::DType::kFloat32,
                       base, rng, report);
      ok &= ParityCase(base_name + ", <= 8 rows per expert", experts, 24,
                       compute, common::DType::kFloat32, base, rng, report,
                       false, kDecodeSegments);
    }
  }
  struct Shape {
    const char* name;
    int64_t dim;
    std::vector<int64_t> hidden;
    int64_t rows;
  };
  const std::vector<Shape> shapes = {
      {"random d=64 h=170 x3", 64, {170, 170, 170}, 200},
      {"random d=96 hidden 33/256/100 (layers differ)",
       96,
       {33, 256, 100},
       301},
      {"README d=512 h=1365 x4", 512, {1365, 1365, 1365, 1365}, 517},
      {"one row", 32, {8}, 1},
  };
  for (const Shape& s : shapes) {
    std::vector<HostExpert> experts;
    for (int64_t h : s.hidden) experts.push_back(RandomExpert(s.dim, h, rng));
    for (common::DType compute :
         {common::DType::kFloat32, common::DType::kBFloat16}) {
      ok &= ParityCase(s.name, experts, s.rows, compute,
                       common::DType::kFloat32, base, rng, report);
    }
  }
  // Paths of their own: bfloat16 tokens, overlapping segments, several
  // passes, one GEMM per expert.
  std::vector<HostExpert> experts;
  for (int i = 0; i < 5; ++i) experts.push_back(RandomExpert(64, 128, rng));
  ok &= ParityCase("bfloat16 tokens", experts, 150, common::DType::kFloat32,
                   common::DType::kBFloat16, base, rng, report);
  ok &= ParityCase("overlapping segments (later wins)", experts, 150,
                   common::DType::kFloat32, common::DType::kFloat32, base, rng,
                   report, true);
  GpuOptions few = base;
  few.max_problems = 2;
  ok &=
      ParityCase("two problems per pass", experts, 150, common::DType::kFloat32,
                 common::DType::kFloat32, few, rng, report);
  GpuOptions loop = base;
  loop.grouped = false;
  ok &= ParityCase("one cublasGemmEx per expert", experts, 150,
                   common::DType::kFloat32, common::DType::kFloat32, loop, rng,
                   report);
  // Decode-sized calls (<= 8 rows per expert): the small-rows kernels, and
  // the GEMM path with them turned off; hidden sizes that are not multiples
  // of 8 (padded rows of v and W2, the kernels' tails); a dim that is not a
  // multiple of 8 (the GEMM path whatever the option).
  GpuOptions gemm = base;
  gemm.small_rows = 0;
  std::vector<HostExpert> readme;
  for (int i = 0; i < 16; ++i) readme.push_back(RandomExpert(512, 1365, rng));
  std::vector<HostExpert> mixed;
  for (int64_t h : {33, 256, 100, 8}) mixed.push_back(RandomExpert(96, h, rng));
  std::vector<HostExpert> odd;
  for (int i = 0; i < 3; ++i) odd.push_back(RandomExpert(36, 20, rng));
  for (common::DType compute :
       {common::DType::kFloat32, common::DType::kBFloat16}) {
    for (const GpuOptions* o : {&base, static_cast<const GpuOptions*>(&gemm)}) {
      const std::string path = o == &base ? ", small-rows" : ", GEMMs";
      ok &= ParityCase("README x16, decode (<= 8 rows/expert)" + path, readme,
                       64, compute, common::DType::kFloat32, *o, rng, report,
                       false, kDecodeSegments);
      ok &= ParityCase("d=96 hidden 33/256/100/8, <= 8 rows" + path, mixed, 40,
                       compute, common::DType::kFloat32, *o, rng, report, false,
                       kDecodeSegments);
    }
    ok &= ParityCase("d=36 (GEMM path), <= 8 rows", odd, 20, compute,
                     common::DType::kFloat32, base, rng, report, false,
                     kDecodeSegments);
  }
  ok &= ParityCase("small-rows, bfloat16 tokens, overlapping", mixed, 40,
                   common::DType::kBFloat16, common::DType::kBFloat16, base,
                   rng, report, true, kDecodeSegments);
  ok &= ParityCase("small-rows, overlapping segments", mixed, 40,
                   common::DType::kFloat32, common::DType::kFloat32, base, rng,
                   report, true, kDecodeSegments);
  return ok;
}

// Milliseconds that `times` runs of `work` (queued on the default stream)
// take, from CUDA events.
template <typename Work>
float EventMs(Work work, int times) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  cudaEventRecord(start);
  for (int i = 0; i < times; ++i) work();
  cudaEventRecord(stop);
  cudaEventSynchronize(stop);
  float ms = 0;
  cudaEventElapsedTime(&ms, start, stop);
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return ms;
}

// The bf16 matrix rate of this device: an 8192^3 cublasGemmEx, the mean of
// ten after three warm-ups.
double MeasureBf16Peak(int device) {
  const int n = 8192;
  void *a = nullptr, *b = nullptr, *c = nullptr;
  const size_t bytes = size_t{n} * n * 2;
  if (cudaMalloc(&a, bytes) != cudaSuccess ||
      cudaMalloc(&b, bytes) != cudaSuccess ||
      cudaMalloc(&c, bytes) != cudaSuccess) {
    return 0;
  }
  // Random bits of small magnitude: 0x3c00..0x3fff are bf16 values in
  // [2^-7, 2^0) with random mantissas.
  std::vector<uint16_t> host(size_t{n} * n);
  std::mt19937 rng(device + 1);
  for (uint16_t& v : host) v = static_cast<uint16_t>(0x3c00 | (rng() & 0x3ff));
  cudaMemcpy(a, host.data(), bytes, cudaMemcpyHostToDevice);
  cudaMemcpy(b, host.data(), bytes, cudaMemcpyHostToDevice);
  cublasHandle_t h;
  cublasCreate(&h);
  const float alpha = 1, beta = 0;
  auto gemm = [&] {
    cublasGemmEx(h, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, a, CUDA_R_16BF,
                 n, b, CUDA_R_16BF, n, &beta, c, CUDA_R_16BF, n,
                 CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  };
  for (int i = 0; i < 3; ++i) gemm();
  const float ms = EventMs(gemm, 10);
  cublasDestroy(h);
  cudaFree(a);
  cudaFree(b);
  cudaFree(c);
  return ms > 0 ? 10 * 2.0 * n * double(n) * n / (ms / 1e3) / 1e12 : 0;
}

// The device's copy bandwidth: a 1 GiB device-to-device cudaMemcpy, the
// mean of ten after two warm-ups, counting the bytes read and written (as
// the weights a call streams are counted against it).
double MeasureCopyBandwidth() {
  const size_t bytes = size_t{1} << 30;
  void *a = nullptr, *b = nullptr;
  if (cudaMalloc(&a, bytes) != cudaSuccess ||
      cudaMalloc(&b, bytes) != cudaSuccess) {
    cudaFree(a);
    return 0;
  }
  cudaMemset(a, 1, bytes);
  auto copy = [&] { cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice); };
  for (int i = 0; i < 2; ++i) copy();
  const float ms = EventMs(copy, 10);
  cudaFree(a);
  cudaFree(b);
  return ms > 0 ? 10 * 2.0 * bytes / (ms / 1e3) / 1e9 : 0;
}

// Evicts the device's L2 cache: a write over four times its size (at least
// 256 MiB). The throughput rows flush it before every timed call, so that a
// call reads its weights from device memory, as in a served model whose
// other layers' weights pass through the cache between two calls of one
// layer (the README configuration's 67 MB of bfloat16 weights would
// otherwise partly stay in a 50-60 MB L2 from one call to the next).
class L2Flush {
 public:
  explicit L2Flush(int device) {
    int l2 = 0;
    cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device);
    bytes_ = std::max<size_t>(size_t{256} << 20, 4 * size_t(l2));
    if (cudaMalloc(&buffer_, bytes_) != cudaSuccess) buffer_ = nullptr;
  }
  ~L2Flush() { cudaFree(buffer_); }
  L2Flush(const L2Flush&) = delete;
  L2Flush& operator=(const L2Flush&) = delete;

  bool ok() const { return buffer_ != nullptr; }
  void Flush() {
    if (buffer_ == nullptr) return;
    cudaMemset(buffer_, ++value_ & 0xff, bytes_);
    cudaDeviceSynchronize();
  }

 private:
  void* buffer_ = nullptr;
  size_t bytes_ = 0;
  int value_ = 0;
};

// How a throughput row runs its passes.
enum class Path { kSmallRows, kGrouped, kPerExpert };

const char* PathName(Path p) {
  return p == Path::kSmallRows ? "small-rows"
         : p == Path::kGrouped ? "grouped"
                               : "per-expert";
}

// Whether the table has a row for this path, dtype and call size: the
// small-rows kernels where every expert gets at most kMaxSmallRows rows,
// one GEMM per expert (bfloat16) at a decode size and two large ones, the
// grouped GEMM everywhere.
bool HasRow(Path path, common::DType compute, int64_t tokens, int experts) {
  switch (path) {
    case Path::kSmallRows:
      return tokens <= int64_t{kMaxSmallRows} * experts;
    case Path::kPerExpert:
      return compute == common::DType::kBFloat16 &&
             (tokens == 64 || tokens == 4096 || tokens == 65536);
    case Path::kGrouped:
      return true;
  }
  return false;
}

// The backend's options for a throughput or profile run on `path`: one
// stream, calls of at most `max_rows` rows.
GpuOptions PathOptions(const GpuOptions& base, Path path, common::DType compute,
                       int64_t max_rows) {
  GpuOptions options = base;
  options.compute = compute;
  options.grouped = path != Path::kPerExpert;
  options.small_rows = path == Path::kSmallRows ? kMaxSmallRows : 0;
  options.streams = 1;
  options.max_rows = max_rows;
  return options;
}

// The README configuration (dim 512, hidden 1365), one worker hosting all
// 16 experts of a layer, with random weights.
constexpr int64_t kReadmeDim = 512, kReadmeHidden = 1365;
constexpr int kReadmeExperts = 16;

std::vector<HostExpert> ReadmeExperts(std::mt19937& rng) {
  std::vector<HostExpert> experts;
  for (int i = 0; i < kReadmeExperts; ++i) {
    experts.push_back(RandomExpert(kReadmeDim, kReadmeHidden, rng));
  }
  return experts;
}

// `tokens` rows spread evenly over `experts` experts, in order.
std::vector<PlanSegment> EvenSegments(int64_t tokens, int experts) {
  std::vector<PlanSegment> segs;
  for (int e = 0; e < experts; ++e) {
    segs.push_back({e, tokens * e / experts,
                    tokens * (e + 1) / experts - tokens * e / experts});
  }
  return segs;
}

// README configuration, one worker hosting all 16 experts of a layer,
// tokens spread evenly over them: from decode calls (32 to 128 rows, 2 to
// 8 per expert, bound by reading the weights: the weights' GB/s and their
// share of the copy bandwidth) to 65,536 rows (bound by the GEMMs: TFLOP/s
// and their share of the bf16 matrix rate).
void Throughput(const Args& args, const GpuOptions& base, double peak,
                double copy_gb_s, Report* report) {
  const int64_t dim = kReadmeDim, hidden = kReadmeHidden;
  const int experts_n = kReadmeExperts;
  std::mt19937 rng(7);
  const std::vector<HostExpert> experts = ReadmeExperts(rng);
  std::vector<int64_t> sizes = {32, 64, 128, 256, 1024, 4096, 16384, 65536};
  if (args.quick) sizes = {32, 128, 256, 4096, 65536};
  const double flops_per_token = 2.0 * (dim * 2 * hidden + hidden * dim);
  const double params_per_expert =
      double(2 * hidden * dim + 2 * hidden + hidden + dim * hidden + dim);
  report->Line(Format(
      "throughput: README configuration (dim %lld, %d experts, hidden %lld), "
      "bf16 peak %.0f TFLOP/s, copy %.0f GB/s (read + written) measured",
      static_cast<long long>(dim), experts_n, static_cast<long long>(hidden),
      peak, copy_gb_s));
  L2Flush l2(args.device);
  report->Line(l2.ok() ? "  the L2 cache is flushed before every timed call"
                       : "  the L2 cache could not be flushed (no memory for "
                         "it): weights may come from it");
  report->Line(
      "  compute   path        tokens/call   tokens/s      call ms   copy-in "
      "ms  compute ms  copy-out ms  TFLOP/s  of bf16 peak  weights GB/s  "
      "of copy");
  for (common::DType compute :
       {common::DType::kFloat32, common::DType::kBFloat16}) {
    for (Path path : {Path::kSmallRows, Path::kGrouped, Path::kPerExpert}) {
      if (path == Path::kPerExpert && compute == common::DType::kFloat32) {
        continue;
      }
      const GpuOptions options = PathOptions(base, path, compute, sizes.back());
      std::unique_ptr<GpuExperts> gpu;
      const Status st = GpuExperts::Create(experts, options, &gpu);
      if (!st.ok()) {
        report->Line("  could not start: " + st.message());
        continue;
      }
      const std::vector<float> x = RandomRows(sizes.back(), dim, rng);
      std::vector<float> y(x.size());
      const double weight_bytes =
          experts_n * params_per_expert * double(common::ElementSize(compute));
      for (int64_t tokens : sizes) {
        if (!HasRow(path, compute, tokens, experts_n)) continue;
        const std::vector<PlanSegment> segs = EvenSegments(tokens, experts_n);
        CallTiming sum, t;
        const int warm = 3, timed = tokens >= 16384 ? 10 : 30;
        for (int i = 0; i < warm; ++i) {
          gpu->Run(common::DType::kFloat32, x.data(), tokens, segs, y.data(),
                   &t);
        }
        double wall = 0;
        for (int i = 0; i < timed; ++i) {
          l2.Flush();
          const auto start = std::chrono::steady_clock::now();
          gpu->Run(common::DType::kFloat32, x.data(), tokens, segs, y.data(),
                   &t);
          wall += std::chrono::duration<double>(
                      std::chrono::steady_clock::now() - start)
                      .count();
          sum.copy_in_seconds += t.copy_in_seconds;
          sum.compute_seconds += t.compute_seconds;
          sum.copy_out_seconds += t.copy_out_seconds;
        }
        wall /= timed;
        const double compute_s = sum.compute_seconds / timed;
        const double tflops = flops_per_token * tokens / compute_s / 1e12;
        const double weights_gb_s = weight_bytes / compute_s / 1e9;
        report->Line(Format(
            "  %-9s %-10s %11lld  %10.0f  %10.3f  %10.3f  %10.3f  %11.3f  "
            "%7.1f  %11.1f%%  %12.0f  %6.1f%%",
            common::DTypeName(compute), PathName(path),
            static_cast<long long>(tokens), tokens / wall, wall * 1e3,
            sum.copy_in_seconds / timed * 1e3, compute_s * 1e3,
            sum.copy_out_seconds / timed * 1e3, tflops,
            peak > 0 ? 100 * tflops / peak : 0, weights_gb_s,
            copy_gb_s > 0 ? 100 * weights_gb_s / copy_gb_s : 0));
        report->Json(Format(
            "{\"check\": \"throughput\", \"compute\": \"%s\", \"gemm\": "
            "\"%s\", \"tokens_per_call\": %lld, \"tokens_per_s\": %.1f, "
            "\"call_ms\": %.4f, \"copy_in_ms\": %.4f, \"compute_ms\": %.4f, "
            "\"copy_out_ms\": %.4f, \"tflops\": %.2f, \"bf16_peak_tflops\": "
            "%.1f, \"weights_gb_s\": %.1f, \"copy_gb_s\": %.1f, "
            "\"l2_flushed\": %s}",
            common::DTypeName(compute), PathName(path),
            static_cast<long long>(tokens), tokens / wall, wall * 1e3,
            sum.copy_in_seconds / timed * 1e3, compute_s * 1e3,
            sum.copy_out_seconds / timed * 1e3, tflops, peak, weights_gb_s,
            copy_gb_s, l2.ok() ? "true" : "false"));
      }
    }
  }
}

// --profile N: three calls of N tokens of the README configuration in
// bfloat16 on each path that serves them (the small-rows kernels where
// every expert gets at most kMaxSmallRows rows, the grouped GEMM), and
// nothing else, for a profiler to watch. false when a path failed.
bool Profile(const Args& args, const GpuOptions& base, Report* report) {
  const int64_t tokens = args.profile_tokens;
  std::mt19937 rng(7);
  const std::vector<HostExpert> experts = ReadmeExperts(rng);
  const std::vector<float> x = RandomRows(tokens, kReadmeDim, rng);
  std::vector<float> y(x.size());
  const std::vector<PlanSegment> segs = EvenSegments(tokens, kReadmeExperts);
  bool ok = true;
  for (Path path : {Path::kSmallRows, Path::kGrouped}) {
    if (!HasRow(path, common::DType::kBFloat16, tokens, kReadmeExperts)) {
      continue;
    }
    const GpuOptions options =
        PathOptions(base, path, common::DType::kBFloat16, tokens);
    std::unique_ptr<GpuExperts> gpu;
    Status st = GpuExperts::Create(experts, options, &gpu);
    CallTiming t;
    for (int i = 0; st.ok() && i < 3; ++i) {
      st = gpu->Run(common::DType::kFloat32, x.data(), tokens, segs, y.data(),
                    &t);
    }
    if (!st.ok()) {
      report->Line(
          Format("profile %s: %s", PathName(path), st.message().c_str()));
      ok = false;
      continue;
    }
    report->Line(
        Format("profile: bfloat16 %s, %lld tokens: last call compute %.3f ms, "
               "%d of %d passes on the small-rows kernels",
               PathName(path), static_cast<long long>(tokens),
               t.compute_seconds * 1e3, t.small_rows_passes, t.passes));
  }
  return ok;
}

int Main(int argc, char** argv) {
  Args args;
  if (!ParseArgs(argc, argv, &args)) return 2;
  Report report;
  DeviceInfo info;
  const Status st = QueryDevice(args.device, &info);
  if (!st.ok()) {
    std::fprintf(stderr, "moe-gpu-check: %s\n", st.message().c_str());
    return 2;
  }
  if (args.probe) {
    std::printf("cuda:%d (%s)\n", info.ordinal, info.name.c_str());
    return 0;
  }
  report.Line(
      Format("device cuda:%d: %s, compute capability %d.%d, %d SMs, "
             "%.1f GiB (%.1f GiB free)",
             info.ordinal, info.name.c_str(), info.major, info.minor,
             info.multiprocessors, info.total_bytes / 1073741824.0,
             info.free_bytes / 1073741824.0));
  GpuOptions base;
  base.device = args.device;
  if (args.profile_tokens > 0) return Profile(args, base, &report) ? 0 : 1;
  const bool ok = Parity(args, base, &report);
  report.Line(ok ? "parity: all passed" : "parity: FAILED");
  const double peak = args.throughput ? MeasureBf16Peak(args.device) : 0;
  const double copy = args.throughput ? MeasureCopyBandwidth() : 0;
  if (args.throughput) Throughput(args, base, peak, copy, &report);
  report.Json(
      Format("{\"check\": \"summary\", \"device\": \"%s\", "
             "\"parity_ok\": %s, \"bf16_peak_tflops\": %.1f, "
             "\"copy_gb_s\": %.1f}",
             info.name.c_str(), ok ? "true" : "false", peak, copy));
  report.Write(args.out_dir);
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace moe::experts::gpu

int main(int argc, char** argv) { return moe::experts::gpu::Main(argc, argv); }
