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

// One problem per blockIdx.y. The same order of operations as the CPU
// experts: (gelu(gate) * value) * mult_bias, GELU by erf, in float32.
template <typename T>
__global__ void GegluKernel(const GegluProblem* __restrict__ problems) {
  const GegluProblem p = problems[blockIdx.y];
  const T* u = reinterpret_cast<const T*>(p.u);
  T* v = reinterpret_cast<T*>(p.v);
  const T* b1 = reinterpret_cast<const T*>(p.b1);
  const T* mult = reinterpret_cast<const T*>(p.mult_bias);
  const int64_t h = p.hidden;
  const int64_t n = p.rows * h;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    const int64_t r = i / h;
    const int64_t j = i - r * h;
    const T* row = u + r * 2 * h;
    const float value = ToFloat(row[j]) + ToFloat(b1[j]);
    const float gate = ToFloat(row[h + j]) + ToFloat(b1[h + j]);
    const float gelu = 0.5f * gate * (1.0f + erff(gate * 0.70710678118654752f));
    v[i] = FromFloat<T>(gelu * value * ToFloat(mult[j]));
  }
}

template <typename T>
__global__ void EpilogueKernel(const EpilogueProblem* __restrict__ problems,
                               int64_t dim) {
  const EpilogueProblem p = problems[blockIdx.y];
  const T* z = reinterpret_cast<const T*>(p.z);
  const T* b2 = reinterpret_cast<const T*>(p.b2);
  float* out = reinterpret_cast<float*>(p.out);
  const int64_t n = p.rows * dim;
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    out[i] = ToFloat(z[i]) + ToFloat(b2[i % dim]);
  }
}

dim3 Grid(int64_t max_elements, int problems) {
  const int64_t blocks = std::min<int64_t>(
      kMaxBlocksX,
      std::max<int64_t>(1, (max_elements + kThreads - 1) / kThreads));
  return dim3(static_cast<unsigned>(blocks), static_cast<unsigned>(problems));
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
                        int64_t max_elements, common::DType compute,
                        cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  const dim3 grid = Grid(max_elements, count);
  if (compute == common::DType::kBFloat16) {
    GegluKernel<__nv_bfloat16><<<grid, kThreads, 0, stream>>>(problems);
  } else {
    GegluKernel<float><<<grid, kThreads, 0, stream>>>(problems);
  }
  return cudaGetLastError();
}

cudaError_t LaunchEpilogue(const EpilogueProblem* problems, int count,
                           int64_t dim, int64_t max_elements,
                           common::DType compute, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  const dim3 grid = Grid(max_elements, count);
  if (compute == common::DType::kBFloat16) {
    EpilogueKernel<__nv_bfloat16><<<grid, kThreads, 0, stream>>>(problems, dim);
  } else {
    EpilogueKernel<float><<<grid, kThreads, 0, stream>>>(problems, dim);
  }
  return cudaGetLastError();
}

}  // namespace moe::experts::gpu
