// The GPU backend's own kernels, each one launch per pass on `stream`
// (geglu_kernels.cu). Descriptor arrays are in device memory (the params
// region, gpu_plan.h). Each returns the launch's error (cudaSuccess when
// it was queued).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "experts/cuda/gpu_types.h"

namespace moe::experts::gpu {

// out[i] = in[i] converted from `from` to `to` (float32, bfloat16 or
// float16 to float32 or bfloat16), for i < n.
cudaError_t LaunchConvert(const void* in, common::DType from, void* out,
                          common::DType to, int64_t n, cudaStream_t stream);

// The GEGLU of every problem (GegluProblem), `compute` being the dtype of
// u, v and the parameters. max_elements: the largest rows * hidden.
cudaError_t LaunchGeglu(const GegluProblem* problems, int count,
                        int64_t max_elements, common::DType compute,
                        cudaStream_t stream);

// The epilogue of every problem (EpilogueProblem): out = z + b2, float32.
cudaError_t LaunchEpilogue(const EpilogueProblem* problems, int count,
                           int64_t dim, int64_t max_elements,
                           common::DType compute, cudaStream_t stream);

}  // namespace moe::experts::gpu
