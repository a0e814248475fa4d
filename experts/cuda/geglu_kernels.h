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
// u, v and the parameters; max_rows and max_hidden: the largest over the
// problems.
cudaError_t LaunchGeglu(const GegluProblem* problems, int count,
                        int64_t max_rows, int64_t max_hidden,
                        common::DType compute, cudaStream_t stream);

// The epilogue of every problem (EpilogueProblem): out = z + b2, float32;
// max_rows: the largest over the problems.
cudaError_t LaunchEpilogue(const EpilogueProblem* problems, int count,
                           int64_t dim, int64_t max_rows, common::DType compute,
                           cudaStream_t stream);

// The small-rows path of a pass whose problems have at most kMaxSmallRows
// rows each and whose dim is a multiple of 8: a decode call is bound by
// reading the weights, so each warp streams one weight row once, in 16-byte
// loads, for every row of its problem, and the projections come fused with
// what follows them. The same values as the GEMM path: u and z rounded to
// the compute dtype as the GEMMs store them, the GEGLU and epilogue in the
// same order of operations; only the order of the float32 sums differs.
//
// Up: v = GEGLU(x·W1ᵀ) for every problem i, x at xs[i] (the up GEMM's B
// array), W1 at w1s[i] (its A array), b1, mult_bias, v and the sizes from
// geglu[i]; u is not written. max_hidden: the largest h.
cudaError_t LaunchSmallRowsUp(const uint64_t* w1s, const uint64_t* xs,
                              const GegluProblem* geglu, int count, int64_t dim,
                              int64_t max_hidden, common::DType compute,
                              cudaStream_t stream);

// Down: out = float(v·W2ᵀ) + b2 for every problem i, W2 at w2s[i] (the
// down GEMM's A array, rows HiddenStride(h) apart), v and h from geglu[i],
// out and b2 from epilogue[i]; z is not written.
cudaError_t LaunchSmallRowsDown(const uint64_t* w2s, const GegluProblem* geglu,
                                const EpilogueProblem* epilogue, int count,
                                int64_t dim, common::DType compute,
                                cudaStream_t stream);

}  // namespace moe::experts::gpu
