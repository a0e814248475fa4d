// Reads every GEGLU expert of a safetensors file (a golden file or a
// checkpoint) as HostExperts, in plain C++: the tensors named
// <prefix>.net.0.weight / .net.0.bias / .net.1.mult_bias / .net.2.weight /
// .net.2.bias (docs/numerics.md, "Parameter names") with "experts" in the
// prefix, float32 or bfloat16. moe-gpu-check uses it where abseil and
// LibTorch are not available.
#pragma once

#include <string>
#include <vector>

#include "experts/cuda/gpu_status.h"
#include "experts/cuda/host_expert.h"

namespace moe::experts::gpu {

struct NamedExpert {
  std::string name;  // the prefix, e.g. "experts.experts.0"
  HostExpert expert;
};

// Appends the file's experts to *out, ordered by name. InvalidArgument
// naming the file (and the tensor) when it is not safetensors, a tensor's
// bytes lie outside the file, or an expert is incomplete or inconsistent.
Status ReadSafetensorsExperts(const std::string& path,
                              std::vector<NamedExpert>* out);

}  // namespace moe::experts::gpu
