// CublasApi: the cuBLAS functions the GPU backend calls, opened with dlopen
// the first time a GPU shard starts. Linking libcublas instead costs every
// process that has the backend about 160 MB of resident memory at start-up
// (95 MB of anonymous memory and 62 MB of libcublasLt's pages, measured
// with a program that only links it), GPU or not: a CPU worker of the
// README configuration went from 289 to 447 MB. With the loader a process
// that never selects a GPU never maps cuBLAS.
//
// Example:
//   const CublasApi* blas = nullptr;
//   MOE_GPU_RETURN_IF_ERROR(LoadCublas(&blas));
//   blas->create(&handle);
//
// Thread-safety: LoadCublas may be called concurrently; the table is
// filled once and never changes.
#pragma once

#include <cublas_v2.h>

#include "experts/cuda/gpu_status.h"

namespace moe::experts::gpu {

// cublasGemmEx has a C++ overload (cudaDataType compute types); this is the
// exported one.
using CublasGemmEx = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t,
                                        cublasOperation_t, int, int, int,
                                        const void*, const void*, cudaDataType,
                                        int, const void*, cudaDataType, int,
                                        const void*, void*, cudaDataType, int,
                                        cublasComputeType_t, cublasGemmAlgo_t);

struct CublasApi {
  decltype(&cublasCreate) create = nullptr;
  decltype(&cublasDestroy) destroy = nullptr;
  decltype(&cublasSetStream) set_stream = nullptr;
  decltype(&cublasSetWorkspace) set_workspace = nullptr;
  decltype(&cublasSetMathMode) set_math_mode = nullptr;
  decltype(static_cast<CublasGemmEx>(&cublasGemmEx)) gemm_ex = nullptr;
  decltype(&cublasGemmGroupedBatchedEx) gemm_grouped_batched_ex = nullptr;
  decltype(&cublasGetStatusName) status_name = nullptr;
  decltype(&cublasGetStatusString) status_string = nullptr;
};

// Opens libcublas.so.<major of the headers built against> (then
// libcublas.so) once and points *api at the table. FailedPrecondition
// naming the library and dlerror() when it cannot be opened or lacks one
// of the functions (a cuBLAS older than the headers).
Status LoadCublas(const CublasApi** api);

}  // namespace moe::experts::gpu
