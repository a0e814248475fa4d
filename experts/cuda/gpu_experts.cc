#include "experts/cuda/gpu_experts.h"

#include <cuda_runtime.h>
#include <dlfcn.h>

#include <algorithm>
#include <array>
#include <cstring>

#include "common/float_bits.h"
#include "experts/cuda/cublas_api.h"
#include "experts/cuda/geglu_kernels.h"

namespace moe::experts::gpu {
namespace {

std::string DeviceName(int ordinal) {
  return "cuda:" + std::to_string(ordinal);
}

std::string MiB(size_t bytes) {
  return std::to_string((bytes + (size_t{1} << 20) - 1) >> 20) + " MiB";
}

Status CudaFailure(int device, const char* what, cudaError_t e) {
  return Status(Code::kInternal, DeviceName(device) + ": " + what + ": " +
                                     cudaGetErrorName(e) + " (" +
                                     cudaGetErrorString(e) + ")");
}

// cuBLAS, loaded by GpuExperts::Create before anything here calls it.
const CublasApi& Blas() {
  const CublasApi* api = nullptr;
  LoadCublas(&api);
  return *api;
}

Status CublasFailure(int device, const char* what, cublasStatus_t st) {
  return Status(Code::kInternal, DeviceName(device) + ": " + what + ": " +
                                     Blas().status_name(st) + " (" +
                                     Blas().status_string(st) + ")");
}

#define MOE_CUDA_RETURN(device, what, expr)                      \
  do {                                                           \
    const cudaError_t _e = (expr);                               \
    if (_e != cudaSuccess) return CudaFailure(device, what, _e); \
  } while (0)

#define MOE_CUBLAS_RETURN(device, what, expr)                                  \
  do {                                                                         \
    const cublasStatus_t _st = (expr);                                         \
    if (_st != CUBLAS_STATUS_SUCCESS) return CublasFailure(device, what, _st); \
  } while (0)

double Seconds(cudaEvent_t from, cudaEvent_t to) {
  float ms = 0;
  return cudaEventElapsedTime(&ms, from, to) == cudaSuccess ? ms / 1e3 : 0.0;
}

cudaDataType_t CudaType(common::DType d) {
  return d == common::DType::kBFloat16 ? CUDA_R_16BF : CUDA_R_32F;
}

// The expert's arrays in the compute dtype, in the order they are laid out.
std::vector<unsigned char> Converted(const std::vector<float>& v,
                                     common::DType d) {
  std::vector<unsigned char> bytes(v.size() * common::ElementSize(d));
  if (d == common::DType::kFloat32) {
    std::memcpy(bytes.data(), v.data(), bytes.size());
  } else {
    auto* out = reinterpret_cast<uint16_t*>(bytes.data());
    for (size_t i = 0; i < v.size(); ++i)
      out[i] = common::FloatToBFloat16(v[i]);
  }
  return bytes;
}

}  // namespace

struct GpuExperts::Stream {
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  cudaEvent_t start = nullptr, copied_in = nullptr, computed = nullptr,
              done = nullptr;
  void* pinned_in = nullptr;           // [max_rows, dim] float32 at most
  void* pinned_out = nullptr;          // [max_rows, dim] float32
  void* pinned_params = nullptr;       // ParamsBytes(max_problems)
  unsigned char* workspace = nullptr;  // device
};

namespace {

// CUDA's version number (1000 * major + 10 * minor) as "major.minor".
std::string CudaVersion(int v) {
  return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10);
}

// What the runtime's "CUDA driver version is insufficient for CUDA runtime
// version" means here: it says so both where there is no driver at all (a
// machine without a GPU) and where the driver is older than the runtime
// this binary carries.
std::string InsufficientDriver() {
  void* driver = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL);
  if (driver == nullptr) {
    const char* error = dlerror();
    return std::string("no NVIDIA driver (") +
           (error != nullptr ? error : "libcuda.so.1 cannot be loaded") + ")";
  }
  using GetVersion = int (*)(int*);
  const auto get_version =
      reinterpret_cast<GetVersion>(dlsym(driver, "cuDriverGetVersion"));
  int version = 0;
  std::string why;
  if (get_version != nullptr && get_version(&version) == 0 && version > 0) {
    why = "the NVIDIA driver supports CUDA " + CudaVersion(version) +
          " at most, and this binary's CUDA runtime is " +
          CudaVersion(CUDART_VERSION) + ": install a newer driver";
  } else {
    why = std::string(
              "the NVIDIA driver does not support this binary's CUDA "
              "runtime (") +
          CudaVersion(CUDART_VERSION) + ")";
  }
  dlclose(driver);
  return why;
}

}  // namespace

int VisibleDevices(std::string* why) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess) {
    if (why != nullptr) {
      *why =
          std::string("no CUDA device visible: ") +
          (e == cudaErrorInsufficientDriver
               ? InsufficientDriver()
               : std::string("cudaGetDeviceCount: ") + cudaGetErrorString(e));
    }
    return 0;
  }
  if (count == 0 && why != nullptr) *why = "no CUDA device visible";
  return count;
}

Status QueryDevice(int ordinal, DeviceInfo* info) {
  std::string why;
  const int count = VisibleDevices(&why);
  if (count == 0) return Status(Code::kFailedPrecondition, why);
  if (ordinal < 0 || ordinal >= count) {
    return Status(Code::kFailedPrecondition,
                  DeviceName(ordinal) + " asked for, but " +
                      std::to_string(count) + " CUDA device(s) visible");
  }
  cudaDeviceProp prop;
  MOE_CUDA_RETURN(ordinal, "cudaGetDeviceProperties",
                  cudaGetDeviceProperties(&prop, ordinal));
  MOE_CUDA_RETURN(ordinal, "cudaSetDevice", cudaSetDevice(ordinal));
  info->ordinal = ordinal;
  info->name = prop.name;
  info->major = prop.major;
  info->minor = prop.minor;
  info->multiprocessors = prop.multiProcessorCount;
  MOE_CUDA_RETURN(ordinal, "cudaMemGetInfo",
                  cudaMemGetInfo(&info->free_bytes, &info->total_bytes));
  return Status();
}

GpuExperts::GpuExperts(int64_t dim, const GpuOptions& options)
    : dim_(dim), options_(options) {}

GpuExperts::~GpuExperts() {
  if (!streams_.empty() || arena_ != nullptr) cudaSetDevice(options_.device);
  for (auto& s : streams_) {
    if (s->stream != nullptr) cudaStreamSynchronize(s->stream);
    if (s->cublas != nullptr) Blas().destroy(s->cublas);
    for (cudaEvent_t e : {s->start, s->copied_in, s->computed, s->done}) {
      if (e != nullptr) cudaEventDestroy(e);
    }
    if (s->stream != nullptr) cudaStreamDestroy(s->stream);
    for (void* p : {s->pinned_in, s->pinned_out, s->pinned_params}) {
      if (p != nullptr) cudaFreeHost(p);
    }
  }
  if (arena_ != nullptr) cudaFree(arena_);
}

namespace {

Status CheckCreate(const std::vector<HostExpert>& experts,
                   const GpuOptions& options) {
  if (experts.empty()) {
    return Status(Code::kInvalidArgument, "no experts to place on the GPU");
  }
  for (size_t i = 0; i < experts.size(); ++i) {
    if (!WellFormed(experts[i]) || experts[i].dim != experts[0].dim) {
      return Status(Code::kInvalidArgument,
                    "expert " + std::to_string(i) +
                        ": arrays do not match its dim and hidden size, or "
                        "its dim differs from the others'");
    }
  }
  if (options.compute != common::DType::kFloat32 &&
      options.compute != common::DType::kBFloat16) {
    return Status(Code::kInvalidArgument,
                  "GPU compute dtype must be float32 or bfloat16");
  }
  if (options.streams < 1 || options.max_rows < 1 || options.max_problems < 1 ||
      options.max_problems > 65535 || options.small_rows < 0 ||
      options.small_rows > kMaxSmallRows) {
    return Status(Code::kInvalidArgument,
                  "GPU options: streams and max_rows must be >= 1, "
                  "max_problems in [1, 65535], small_rows in [0, " +
                      std::to_string(kMaxSmallRows) + "]");
  }
  return Status();
}

}  // namespace

Status GpuExperts::Create(const std::vector<HostExpert>& experts,
                          const GpuOptions& options,
                          std::unique_ptr<GpuExperts>* out) {
  MOE_GPU_RETURN_IF_ERROR(CheckCreate(experts, options));
  std::unique_ptr<GpuExperts> g(new GpuExperts(experts[0].dim, options));
  MOE_GPU_RETURN_IF_ERROR(QueryDevice(options.device, &g->device_));
  const CublasApi* blas = nullptr;
  MOE_GPU_RETURN_IF_ERROR(LoadCublas(&blas));
  int64_t max_hidden = 0;
  for (const HostExpert& e : experts) {
    max_hidden = std::max(max_hidden, e.hidden);
  }
  g->workspace_ = LayoutWorkspace({options.max_rows, g->dim_, max_hidden,
                                   options.compute, options.max_problems});
  std::vector<size_t> workspaces;
  MOE_GPU_RETURN_IF_ERROR(g->PlaceWeights(experts, &workspaces));
  MOE_GPU_RETURN_IF_ERROR(g->CreateStreams(workspaces, *blas));
  MOE_CUDA_RETURN(options.device, "cudaDeviceSynchronize",
                  cudaDeviceSynchronize());
  *out = std::move(g);
  return Status();
}

std::string GpuExperts::Name() const {
  return DeviceName(options_.device) + " (" + device_.name + ")";
}

Status GpuExperts::PlaceWeights(const std::vector<HostExpert>& experts,
                                std::vector<size_t>* workspaces) {
  // Weights first, then one workspace per stream, in one allocation.
  ArenaLayout arena;
  const size_t c = common::ElementSize(options_.compute);
  std::vector<std::array<size_t, 5>> offsets;
  for (const HostExpert& e : experts) {
    offsets.push_back(
        {arena.Reserve(e.w1.size() * c), arena.Reserve(e.b1.size() * c),
         arena.Reserve(e.mult_bias.size() * c),
         arena.Reserve(static_cast<size_t>(e.dim * HiddenStride(e.hidden)) * c),
         arena.Reserve(e.b2.size() * c)});
  }
  weight_bytes_ = arena.size();
  for (int i = 0; i < options_.streams; ++i) {
    workspaces->push_back(arena.Reserve(workspace_.total));
  }
  arena_bytes_ = arena.size();
  if (arena_bytes_ > device_.free_bytes) {
    return Status(
        Code::kResourceExhausted,
        Name() + ": the experts need " + MiB(arena_bytes_) + " (weights " +
            MiB(weight_bytes_) + " + " + std::to_string(options_.streams) +
            " stream(s) x " + MiB(workspace_.total) + " of workspace for " +
            std::to_string(options_.max_rows) + " rows), but only " +
            MiB(device_.free_bytes) + " of " + MiB(device_.total_bytes) +
            " are free; lower --max_tokens_per_call or --gpu_streams, or "
            "host fewer experts");
  }
  const cudaError_t alloc = cudaMalloc(&arena_, arena_bytes_);
  if (alloc != cudaSuccess) {
    return Status(Code::kResourceExhausted,
                  Name() + ": cudaMalloc of " + MiB(arena_bytes_) +
                      " failed: " + cudaGetErrorString(alloc));
  }
  auto* base = static_cast<unsigned char*>(arena_);
  for (size_t i = 0; i < experts.size(); ++i) {
    ExpertDevicePtrs p;
    p.w1 = reinterpret_cast<uint64_t>(base + offsets[i][0]);
    p.b1 = reinterpret_cast<uint64_t>(base + offsets[i][1]);
    p.mult_bias = reinterpret_cast<uint64_t>(base + offsets[i][2]);
    p.w2 = reinterpret_cast<uint64_t>(base + offsets[i][3]);
    p.b2 = reinterpret_cast<uint64_t>(base + offsets[i][4]);
    p.hidden = experts[i].hidden;
    experts_.push_back(p);
    hidden_.push_back(experts[i].hidden);
  }
  return Upload(experts);
}

Status GpuExperts::CreateStreams(const std::vector<size_t>& workspaces,
                                 const CublasApi& blas) {
  const int dev = options_.device;
  const size_t staging = static_cast<size_t>(options_.max_rows) *
                         static_cast<size_t>(dim_) * sizeof(float);
  const size_t params = ParamsBytes(options_.max_problems);
  auto* base = static_cast<unsigned char*>(arena_);
  for (size_t w : workspaces) {
    auto s = std::make_unique<Stream>();
    s->workspace = base + w;
    MOE_CUDA_RETURN(
        dev, "cudaStreamCreate",
        cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking));
    for (cudaEvent_t* e : {&s->start, &s->copied_in, &s->computed, &s->done}) {
      MOE_CUDA_RETURN(dev, "cudaEventCreate", cudaEventCreate(e));
    }
    for (auto [p, bytes] :
         {std::pair{&s->pinned_in, staging}, std::pair{&s->pinned_out, staging},
          std::pair{&s->pinned_params, params}}) {
      const cudaError_t e = cudaHostAlloc(p, bytes, cudaHostAllocDefault);
      if (e != cudaSuccess) {
        return Status(Code::kResourceExhausted,
                      Name() + ": pinned host staging of " + MiB(bytes) +
                          " failed: " + cudaGetErrorString(e));
      }
      pinned_bytes_ += bytes;
    }
    MOE_CUBLAS_RETURN(dev, "cublasCreate", blas.create(&s->cublas));
    MOE_CUBLAS_RETURN(dev, "cublasSetStream",
                      blas.set_stream(s->cublas, s->stream));
    MOE_CUBLAS_RETURN(
        dev, "cublasSetWorkspace",
        blas.set_workspace(s->cublas, s->workspace + workspace_.cublas,
                           kCublasWorkspaceBytes));
    // No TF32: float32 compute stays float32 (the 1e-5 parity).
    MOE_CUBLAS_RETURN(dev, "cublasSetMathMode",
                      blas.set_math_mode(s->cublas, CUBLAS_DEFAULT_MATH));
    free_.push_back(s.get());
    streams_.push_back(std::move(s));
  }
  return Status();
}

Status GpuExperts::Upload(const std::vector<HostExpert>& experts) {
  const int dev = options_.device;
  for (size_t i = 0; i < experts.size(); ++i) {
    const HostExpert& e = experts[i];
    const ExpertDevicePtrs& p = experts_[i];
    const std::vector<float> w2 =
        PadRows(e.w2, e.dim, e.hidden, HiddenStride(e.hidden));
    for (auto [dst, src] : {std::pair{p.w1, &e.w1}, std::pair{p.b1, &e.b1},
                            std::pair{p.mult_bias, &e.mult_bias},
                            std::pair{p.w2, &w2}, std::pair{p.b2, &e.b2}}) {
      const std::vector<unsigned char> bytes =
          Converted(*src, options_.compute);
      MOE_CUDA_RETURN(dev, "uploading expert weights",
                      cudaMemcpy(reinterpret_cast<void*>(dst), bytes.data(),
                                 bytes.size(), cudaMemcpyHostToDevice));
    }
  }
  return Status();
}

GpuExperts::Stream* GpuExperts::Acquire() const {
  std::unique_lock<std::mutex> lock(mu_);
  free_cv_.wait(lock, [this] { return !free_.empty(); });
  Stream* s = free_.back();
  free_.pop_back();
  return s;
}

void GpuExperts::Release(Stream* s) const {
  {
    std::lock_guard<std::mutex> lock(mu_);
    free_.push_back(s);
  }
  free_cv_.notify_one();
}

Status GpuExperts::Run(common::DType dtype, const void* tokens, int64_t rows,
                       const std::vector<PlanSegment>& segments, float* out,
                       CallTiming* timing) const {
  if (rows > options_.max_rows) {
    return Status(Code::kInvalidArgument,
                  "a call of " + std::to_string(rows) +
                      " rows exceeds the GPU workspace of " +
                      std::to_string(options_.max_rows) +
                      " rows (--max_tokens_per_call)");
  }
  Stream* s = Acquire();
  const Status status = RunOn(*s, dtype, tokens, rows, segments, out, timing);
  // After a failure, work may still be queued on the stream: let it finish
  // before its staging buffers are handed to the next call.
  if (!status.ok()) cudaStreamSynchronize(s->stream);
  Release(s);
  return status;
}

namespace {

// One grouped GEMM (or, for comparison, one cublasGemmEx per problem;
// `host_params` is the host image of the params region at `params`).
Status RunGemm(int dev, cublasHandle_t h, const GroupedGemm& g,
               common::DType compute, bool grouped,
               const unsigned char* host_params, uint64_t params) {
  const cudaDataType_t t = CudaType(compute);
  const int groups = static_cast<int>(g.m.size());
  if (grouped) {
    std::vector<cublasOperation_t> ta(groups, CUBLAS_OP_T);
    std::vector<cublasOperation_t> tb(groups, CUBLAS_OP_N);
    MOE_CUBLAS_RETURN(
        dev, "cublasGemmGroupedBatchedEx",
        Blas().gemm_grouped_batched_ex(
            h, ta.data(), tb.data(), g.m.data(), g.n.data(), g.k.data(),
            g.alpha.data(), reinterpret_cast<const void* const*>(g.a), t,
            g.lda.data(), reinterpret_cast<const void* const*>(g.b), t,
            g.ldb.data(), g.beta.data(), reinterpret_cast<void* const*>(g.c), t,
            g.ldc.data(), groups, g.group_size.data(), CUBLAS_COMPUTE_32F));
    return Status();
  }
  auto host_array = [&](uint64_t at) {
    return reinterpret_cast<const uint64_t*>(host_params + (at - params));
  };
  const uint64_t* a = host_array(g.a);
  const uint64_t* b = host_array(g.b);
  const uint64_t* c = host_array(g.c);
  int j = 0;
  for (int i = 0; i < groups; ++i) {
    for (int n = 0; n < g.group_size[i]; ++n, ++j) {
      MOE_CUBLAS_RETURN(
          dev, "cublasGemmEx",
          Blas().gemm_ex(h, CUBLAS_OP_T, CUBLAS_OP_N, g.m[i], g.n[i], g.k[i],
                         &g.alpha[i], reinterpret_cast<const void*>(a[j]), t,
                         g.lda[i], reinterpret_cast<const void*>(b[j]), t,
                         g.ldb[i], &g.beta[i], reinterpret_cast<void*>(c[j]), t,
                         g.ldc[i], CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    }
  }
  return Status();
}

}  // namespace

bool GpuExperts::UsesSmallRows(const PassLaunch& launch) const {
  return launch.max_rows <= options_.small_rows && dim_ % 8 == 0;
}

Status GpuExperts::RunOn(Stream& s, common::DType dtype, const void* tokens,
                         int64_t rows, const std::vector<PlanSegment>& segments,
                         float* out, CallTiming* timing) const {
  const int dev = options_.device;
  const std::vector<Pass> passes =
      PlanPasses(segments, hidden_, options_.max_problems);
  if (passes.empty() || rows == 0) return Status();
  MOE_CUDA_RETURN(dev, "cudaSetDevice", cudaSetDevice(dev));
  const WorkspaceLayout& w = workspace_;
  const uint64_t ws = reinterpret_cast<uint64_t>(s.workspace);
  WorkspaceAddresses addr;
  addr.tokens = ws + (dtype == options_.compute ? w.raw_tokens : w.tokens);
  addr.u = ws + w.u;
  addr.v = ws + w.v;
  addr.z = ws + w.z;
  addr.out = ws + w.out;
  addr.params = ws + w.params;

  // Tokens in: host -> pinned staging -> device, then to the compute dtype.
  const size_t in_bytes =
      static_cast<size_t>(rows * dim_) * common::ElementSize(dtype);
  std::memcpy(s.pinned_in, tokens, in_bytes);
  MOE_CUDA_RETURN(dev, "cudaEventRecord", cudaEventRecord(s.start, s.stream));
  MOE_CUDA_RETURN(dev, "copying tokens in",
                  cudaMemcpyAsync(s.workspace + w.raw_tokens, s.pinned_in,
                                  in_bytes, cudaMemcpyHostToDevice, s.stream));
  MOE_CUDA_RETURN(dev, "cudaEventRecord",
                  cudaEventRecord(s.copied_in, s.stream));
  if (dtype != options_.compute) {
    MOE_CUDA_RETURN(
        dev, "converting tokens",
        LaunchConvert(s.workspace + w.raw_tokens, dtype, s.workspace + w.tokens,
                      options_.compute, rows * dim_, s.stream));
  }

  std::vector<RowRun> written;
  int small_rows_passes = 0;
  auto* host_params = static_cast<unsigned char*>(s.pinned_params);
  for (size_t i = 0; i < passes.size(); ++i) {
    const Pass& pass = passes[i];
    if (i > 0) {
      // The previous pass's parameters may still be on their way.
      MOE_CUDA_RETURN(dev, "cudaStreamSynchronize",
                      cudaStreamSynchronize(s.stream));
    }
    const PassLaunch launch = BuildPassLaunch(pass, experts_, addr, dim_,
                                              options_.compute, host_params);
    MOE_CUDA_RETURN(dev, "copying pass parameters",
                    cudaMemcpyAsync(reinterpret_cast<void*>(addr.params),
                                    host_params, ParamsBytes(launch.problems),
                                    cudaMemcpyHostToDevice, s.stream));
    const auto* geglu = reinterpret_cast<const GegluProblem*>(launch.geglu);
    const auto* epilogue =
        reinterpret_cast<const EpilogueProblem*>(launch.epilogue);
    if (UsesSmallRows(launch)) {
      ++small_rows_passes;
      MOE_CUDA_RETURN(
          dev, "small-rows up kernel",
          LaunchSmallRowsUp(reinterpret_cast<const uint64_t*>(launch.up.a),
                            reinterpret_cast<const uint64_t*>(launch.up.b),
                            geglu, launch.problems, dim_, launch.max_hidden,
                            options_.compute, s.stream));
      MOE_CUDA_RETURN(
          dev, "small-rows down kernel",
          LaunchSmallRowsDown(reinterpret_cast<const uint64_t*>(launch.down.a),
                              geglu, epilogue, launch.problems, dim_,
                              options_.compute, s.stream));
      written.insert(written.end(), pass.out_runs.begin(), pass.out_runs.end());
      continue;
    }
    MOE_GPU_RETURN_IF_ERROR(RunGemm(dev, s.cublas, launch.up, options_.compute,
                                    options_.grouped, host_params,
                                    addr.params));
    MOE_CUDA_RETURN(dev, "GEGLU kernel",
                    LaunchGeglu(geglu, launch.problems, launch.max_rows,
                                launch.max_hidden, options_.compute, s.stream));
    MOE_GPU_RETURN_IF_ERROR(RunGemm(dev, s.cublas, launch.down,
                                    options_.compute, options_.grouped,
                                    host_params, addr.params));
    MOE_CUDA_RETURN(
        dev, "epilogue kernel",
        LaunchEpilogue(epilogue, launch.problems, dim_, launch.max_rows,
                       options_.compute, s.stream));
    written.insert(written.end(), pass.out_runs.begin(), pass.out_runs.end());
  }
  MOE_CUDA_RETURN(dev, "cudaEventRecord",
                  cudaEventRecord(s.computed, s.stream));

  // Rows out: device -> pinned staging -> the caller's rows.
  written = MergeRuns(std::move(written));
  const size_t row_bytes = static_cast<size_t>(dim_) * sizeof(float);
  auto* pinned_out = static_cast<unsigned char*>(s.pinned_out);
  for (const RowRun& r : written) {
    const size_t at = static_cast<size_t>(r.offset) * row_bytes;
    MOE_CUDA_RETURN(dev, "copying results out",
                    cudaMemcpyAsync(pinned_out + at, s.workspace + w.out + at,
                                    static_cast<size_t>(r.count) * row_bytes,
                                    cudaMemcpyDeviceToHost, s.stream));
  }
  MOE_CUDA_RETURN(dev, "cudaEventRecord", cudaEventRecord(s.done, s.stream));
  MOE_CUDA_RETURN(dev, "running the experts", cudaEventSynchronize(s.done));
  for (const RowRun& r : written) {
    const size_t at = static_cast<size_t>(r.offset) * row_bytes;
    std::memcpy(reinterpret_cast<unsigned char*>(out) + at, pinned_out + at,
                static_cast<size_t>(r.count) * row_bytes);
  }
  if (timing != nullptr) {
    timing->copy_in_seconds = Seconds(s.start, s.copied_in);
    timing->compute_seconds = Seconds(s.copied_in, s.computed);
    timing->copy_out_seconds = Seconds(s.computed, s.done);
    timing->passes = static_cast<int>(passes.size());
    timing->small_rows_passes = small_rows_passes;
  }
  return Status();
}

}  // namespace moe::experts::gpu
