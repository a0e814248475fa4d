#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "experts/cuda/geglu_kernels.h"

namespace moe::experts::gpu {
namespace {

constexpr int kThreads = 256;
// Blocks per problem at most; each thread loops over the rest.
constexpr int64_t kMaxBlocksX = 4096;

__device__ __forceinline__ float ToFloat(float x) { return x; }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
__device__ __forceinline__ float ToFloat(__half x) { return __half2float(x); }

template <typename T>
__device__ __forceinline__ T FromFloat(float x);
template <>
__device__ __forceinline__ float FromFloat<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

template <typename In, typename Out>
__global__ void ConvertKernel(const In* __restrict__ in, Out* __restrict__ out,
                              int64_t n) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    out[i] = FromFloat<Out>(ToFloat(in[i]));
  }
}

// The same order of operations as the CPU experts: (gelu(gate) * value) *
// mult_bias, GELU by erf, in float32.
__device__ __forceinline__ float Geglu(float value, float gate, float mult) {
  const float gelu = 0.5f * gate * (1.0f + erff(gate * 0.70710678118654752f));
  return gelu * value * mult;
}

// Columns of one row a block of the row-wise kernels takes at a time.
constexpr int64_t kBlockColumns = 4 * kThreads;

// Calls f(r, j) for every row r < rows and column j < cols of a problem,
// spread over the blocks of blockIdx.x: a block takes a piece of one row
// (kBlockColumns columns) at a time, its threads the columns, so that no
// thread divides per element (64-bit division is dozens of instructions).
template <typename F>
__device__ __forceinline__ void ForEachRowColumn(int64_t rows, int64_t cols,
                                                 F f) {
  const int64_t pieces = (cols + kBlockColumns - 1) / kBlockColumns;
  for (int64_t b = blockIdx.x; b < rows * pieces; b += gridDim.x) {
    const int64_t r = b / pieces;
    const int64_t first = (b - r * pieces) * kBlockColumns;
    const int64_t end = min(cols, first + kBlockColumns);
    for (int64_t j = first + threadIdx.x; j < end; j += blockDim.x) f(r, j);
  }
}

// One problem per blockIdx.y.
template <typename T>
__global__ void GegluKernel(const GegluProblem* __restrict__ problems) {
  const GegluProblem p = problems[blockIdx.y];
  const T* u = reinterpret_cast<const T*>(p.u);
  T* v = reinterpret_cast<T*>(p.v);
  const T* b1 = reinterpret_cast<const T*>(p.b1);
  const T* mult = reinterpret_cast<const T*>(p.mult_bias);
  const int64_t h = p.hidden;
  ForEachRowColumn(p.rows, h, [&](int64_t r, int64_t j) {
    const T* row = u + r * 2 * p.stride;
    v[r * p.stride + j] = FromFloat<T>(
        Geglu(ToFloat(row[j]) + ToFloat(b1[j]),
              ToFloat(row[h + j]) + ToFloat(b1[h + j]), ToFloat(mult[j])));
  });
}

// --- The small-rows path ---------------------------------------------------

// Warps per block of the small-rows kernels, one output column each.
constexpr int kWarps = 8;

// 16 bytes of T, loaded at once.
template <typename T>
struct alignas(16) Pack {
  static constexpr int kN = 16 / sizeof(T);
  T v[kN];
};

// One 16-byte load through the read-only cache (the weights and
// activations do not change during a launch).
template <typename T>
__device__ __forceinline__ Pack<T> LoadPack(const T* p) {
  const uint4 bits = __ldg(reinterpret_cast<const uint4*>(p));
  Pack<T> out;
  memcpy(&out, &bits, sizeof(out));
  return out;
}

// For every weight row w[q] (q < Q) and every activation row r < rows (rows
// `lda` elements apart from a): acc[q][r] = sum over k < n of w[q][k] *
// a[r * lda + k], in float32, summed over the warp (every lane ends with
// the totals). The lanes split k into 16-byte packs, so a warp reads 512
// contiguous bytes of each weight row per step; the activations (a few
// rows, read by every warp) come from the cache. REQUIRES: the w rows and
// the a rows start on 16 bytes.
template <typename T, int Q>
__device__ __forceinline__ void WarpDot(const T* const (&w)[Q],
                                        const T* __restrict__ a, int64_t lda,
                                        int64_t n, int rows,
                                        float (&acc)[Q][kMaxSmallRows]) {
  constexpr int kN = Pack<T>::kN;
  const int lane = threadIdx.x & 31;
  const int64_t packed = n / kN * kN;
  for (int64_t k = int64_t{lane} * kN; k < packed; k += 32 * kN) {
    Pack<T> wp[Q];
#pragma unroll
    for (int q = 0; q < Q; ++q) {
      wp[q] = LoadPack(w[q] + k);
    }
#pragma unroll
    for (int r = 0; r < kMaxSmallRows; ++r) {
      if (r >= rows) break;
      const Pack<T> ap = LoadPack(a + r * lda + k);
#pragma unroll
      for (int i = 0; i < kN; ++i) {
        const float x = ToFloat(ap.v[i]);
#pragma unroll
        for (int q = 0; q < Q; ++q) acc[q][r] += ToFloat(wp[q].v[i]) * x;
      }
    }
  }
  for (int64_t k = packed + lane; k < n; k += 32) {
#pragma unroll
    for (int r = 0; r < kMaxSmallRows; ++r) {
      if (r >= rows) break;
      const float x = ToFloat(a[r * lda + k]);
#pragma unroll
      for (int q = 0; q < Q; ++q) acc[q][r] += ToFloat(w[q][k]) * x;
    }
  }
#pragma unroll
  for (int q = 0; q < Q; ++q) {
#pragma unroll
    for (int r = 0; r < kMaxSmallRows; ++r) {
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) {
        acc[q][r] += __shfl_xor_sync(0xffffffffu, acc[q][r], offset);
      }
    }
  }
}

// Rounds a GEMM's float32 sum to T as cuBLAS stores it.
template <typename T>
__device__ __forceinline__ float Stored(float x) {
  return ToFloat(FromFloat<T>(x));
}

// One problem per blockIdx.y, one hidden column j per warp: the value and
// gate rows of W1 (j and h + j) against every token row, then the GEGLU.
template <typename T>
__global__ void __launch_bounds__(kWarps * 32)
    SmallRowsUpKernel(const uint64_t* __restrict__ w1s,
                      const uint64_t* __restrict__ xs,
                      const GegluProblem* __restrict__ problems, int64_t dim) {
  const GegluProblem p = problems[blockIdx.y];
  const int64_t j = int64_t{blockIdx.x} * kWarps + threadIdx.x / 32;
  if (j >= p.hidden) return;  // the whole warp: no block-wide sync follows
  const T* w1 = reinterpret_cast<const T*>(w1s[blockIdx.y]);
  const T* x = reinterpret_cast<const T*>(xs[blockIdx.y]);
  const T* b1 = reinterpret_cast<const T*>(p.b1);
  const T* mult = reinterpret_cast<const T*>(p.mult_bias);
  T* v = reinterpret_cast<T*>(p.v);
  const int rows = static_cast<int>(p.rows);
  const T* const w[2] = {w1 + j * dim, w1 + (p.hidden + j) * dim};
  float acc[2][kMaxSmallRows] = {};
  WarpDot<T, 2>(w, x, dim, dim, rows, acc);
  const int lane = threadIdx.x & 31;
  const float bv = ToFloat(b1[j]), bg = ToFloat(b1[p.hidden + j]);
  const float m = ToFloat(mult[j]);
#pragma unroll
  for (int r = 0; r < kMaxSmallRows; ++r) {
    if (r < rows && lane == r) {
      v[r * p.stride + j] = FromFloat<T>(
          Geglu(Stored<T>(acc[0][r]) + bv, Stored<T>(acc[1][r]) + bg, m));
    }
  }
}

// One problem per blockIdx.y, one output column c per warp: row c of W2
// against every row of v, then the epilogue.
template <typename T>
__global__ void __launch_bounds__(kWarps * 32)
    SmallRowsDownKernel(const uint64_t* __restrict__ w2s,
                        const GegluProblem* __restrict__ geglu,
                        const EpilogueProblem* __restrict__ epilogue,
                        int64_t dim) {
  const int64_t c = int64_t{blockIdx.x} * kWarps + threadIdx.x / 32;
  if (c >= dim) return;
  const GegluProblem g = geglu[blockIdx.y];
  const EpilogueProblem e = epilogue[blockIdx.y];
  const T* const w[1] = {reinterpret_cast<const T*>(w2s[blockIdx.y]) +
                         c * g.stride};
  const int rows = static_cast<int>(g.rows);
  float acc[1][kMaxSmallRows] = {};
  WarpDot<T, 1>(w, reinterpret_cast<const T*>(g.v), g.stride, g.hidden, rows,
                acc);
  const int lane = threadIdx.x & 31;
  const float b = ToFloat(reinterpret_cast<const T*>(e.b2)[c]);
  float* out = reinterpret_cast<float*>(e.out);
#pragma unroll
  for (int r = 0; r < kMaxSmallRows; ++r) {
    if (r < rows && lane == r) out[r * dim + c] = Stored<T>(acc[0][r]) + b;
  }
}

template <typename T>
__global__ void EpilogueKernel(const EpilogueProblem* __restrict__ problems,
                               int64_t dim) {
  const EpilogueProblem p = problems[blockIdx.y];
  const T* z = reinterpret_cast<const T*>(p.z);
  const T* b2 = reinterpret_cast<const T*>(p.b2);
  float* out = reinterpret_cast<float*>(p.out);
  ForEachRowColumn(p.rows, dim, [&](int64_t r, int64_t c) {
    out[r * dim + c] = ToFloat(z[r * dim + c]) + ToFloat(b2[c]);
  });
}

dim3 Grid(int64_t max_elements, int problems) {
  const int64_t blocks = std::min<int64_t>(
      kMaxBlocksX,
      std::max<int64_t>(1, (max_elements + kThreads - 1) / kThreads));
  return dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(problems));
}

// The grid of a row-wise kernel (ForEachRowColumn) over `problems`
// problems of at most max_rows rows of at most max_cols columns.
dim3 RowGrid(int64_t max_rows, int64_t max_cols, int problems) {
  const int64_t pieces = (max_cols + kBlockColumns - 1) / kBlockColumns;
  const int64_t blocks =
      std::min<int64_t>(kMaxBlocksX, std::max<int64_t>(1, max_rows * pieces));
  return dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(problems));
}

// Calls launch(T{}), T being the element type of `compute` (bfloat16 or
// float32), and returns the launch's error.
template <typename Launch>
cudaError_t LaunchFor(common::DType compute, Launch launch) {
  if (compute == common::DType::kBFloat16) {
    launch(__nv_bfloat16{});
  } else {
    launch(float{});
  }
  return cudaGetLastError();
}

template <typename In>
cudaError_t ConvertFrom(const In* in, void* out, common::DType to, int64_t n,
                        cudaStream_t stream) {
  const dim3 grid = Grid(n, 1);
  if (to == common::DType::kBFloat16) {
    ConvertKernel<<<grid, kThreads, 0, stream>>>(
        in, static_cast<__nv_bfloat16*>(out), n);
  } else {
    ConvertKernel<<<grid, kThreads, 0, stream>>>(in, static_cast<float*>(out),
                                                 n);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchConvert(const void* in, common::DType from, void* out,
                          common::DType to, int64_t n, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  switch (from) {
    case common::DType::kFloat32:
      return ConvertFrom(static_cast<const float*>(in), out, to, n, stream);
    case common::DType::kBFloat16:
      return ConvertFrom(static_cast<const __nv_bfloat16*>(in), out, to, n,
                         stream);
    case common::DType::kFloat16:
      return ConvertFrom(static_cast<const __half*>(in), out, to, n, stream);
    default:
      break;
  }
  return cudaErrorInvalidValue;
}

cudaError_t LaunchGeglu(const GegluProblem* problems, int count,
                        int64_t max_rows, int64_t max_hidden,
                        common::DType compute, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  const dim3 grid = RowGrid(max_rows, max_hidden, count);
  return LaunchFor(compute, [&](auto t) {
    GegluKernel<decltype(t)><<<grid, kThreads, 0, stream>>>(problems);
  });
}

cudaError_t LaunchEpilogue(const EpilogueProblem* problems, int count,
                           int64_t dim, int64_t max_rows, common::DType compute,
                           cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  const dim3 grid = RowGrid(max_rows, dim, count);
  return LaunchFor(compute, [&](auto t) {
    EpilogueKernel<decltype(t)><<<grid, kThreads, 0, stream>>>(problems, dim);
  });
}

cudaError_t LaunchSmallRowsUp(const uint64_t* w1s, const uint64_t* xs,
                              const GegluProblem* geglu, int count, int64_t dim,
                              int64_t max_hidden, common::DType compute,
                              cudaStream_t stream) {
  if (count == 0 || max_hidden == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>((max_hidden + kWarps - 1) / kWarps),
                  static_cast<unsigned>(count));
  return LaunchFor(compute, [&](auto t) {
    SmallRowsUpKernel<decltype(t)>
        <<<grid, kWarps * 32, 0, stream>>>(w1s, xs, geglu, dim);
  });
}

cudaError_t LaunchSmallRowsDown(const uint64_t* w2s, const GegluProblem* geglu,
                                const EpilogueProblem* epilogue, int count,
                                int64_t dim, common::DType compute,
                                cudaStream_t stream) {
  if (count == 0 || dim == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>((dim + kWarps - 1) / kWarps),
                  static_cast<unsigned>(count));
  return LaunchFor(compute, [&](auto t) {
    SmallRowsDownKernel<decltype(t)>
        <<<grid, kWarps * 32, 0, stream>>>(w2s, geglu, epilogue, dim);
  });
}

}  // namespace moe::experts::gpu
